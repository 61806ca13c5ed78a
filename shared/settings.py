"""Settings helpers: one pydantic-settings class per service, read once at start-up.

Every service shares the connection settings below; each adds its own fields in
`services/<name>/settings.py`. Defaults point at the embedded local stack of
deploy/local so that `python -m services.<name>` works without configuration.
Environment variables use the service's prefix (e.g. ``INTAKE_HTTP_PORT``) and
fall back to the shared, unprefixed names (``KAFKA_BOOTSTRAP``, ``MONGO_URI``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


def shared_field(default: Any, name: str) -> Any:
    """A field read from the unprefixed environment variable `name`."""
    return Field(default, validation_alias=AliasChoices(name, name.lower()))


class ServiceSettings(BaseSettings):
    """Connection and runtime settings every service has."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    service_name: str = "service"
    kafka_bootstrap: str = shared_field("127.0.0.1:9092", "KAFKA_BOOTSTRAP")
    # Tansu and aiokafka's idempotent producer disagree (infra.md); on for real Kafka.
    kafka_idempotent_producer: bool = shared_field(False, "KAFKA_IDEMPOTENT_PRODUCER")
    kafka_session_timeout_ms: int = shared_field(6000, "KAFKA_SESSION_TIMEOUT_MS")
    kafka_heartbeat_interval_ms: int = shared_field(1000, "KAFKA_HEARTBEAT_INTERVAL_MS")
    # How long a fetch may wait for data. Kafka answers a waiting fetch as soon as data
    # arrives, so 500 ms costs nothing there; Tansu answers only when the wait runs out
    # (measured: a hop's latency is about half this value), so the local default is short
    # for the consumers on a case's path. Each waiting consumer costs the broker one
    # fetch per wait, so the followers (status and notification consumers, off that
    # path: EventConsumer.on(follower=True)) wait longer. See docs/performance.md.
    kafka_fetch_max_wait_ms: int = shared_field(20, "KAFKA_FETCH_MAX_WAIT_MS")
    kafka_follower_fetch_max_wait_ms: int = shared_field(500, "KAFKA_FOLLOWER_FETCH_MAX_WAIT_MS")
    topic_partitions: int = shared_field(3, "TOPIC_PARTITIONS")
    # retryWrites=false: see deploy/local/infra.py MONGO_OPTIONS (production sets its own).
    mongo_uri: str = shared_field(
        "mongodb://127.0.0.1:27017/?directConnection=true&retryWrites=false&maxIdleTimeMS=240000",
        "MONGO_URI",
    )
    mongo_database: str = "router"
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    trace_dir: Path = shared_field(REPO_ROOT / ".run" / "traces", "TRACE_DIR")
    credentials_file: Path = shared_field(
        REPO_ROOT / "deploy" / "local" / "dev-credentials.json", "CREDENTIALS_FILE"
    )
    # Local development allows http:// and loopback endpoints; production refuses them.
    dev_mode: bool = shared_field(True, "DEV_MODE")
    outbox_sweep_seconds: float = 2.0

    @property
    def consumer_group(self) -> str:
        return f"router.{self.service_name}"
