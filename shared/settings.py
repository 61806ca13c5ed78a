"""Settings helpers: one pydantic-settings class per service, read once at start-up.

Every service shares the connection settings below; each adds its own fields in
`services/<name>/settings.py`. Defaults point at the embedded local stack of
deploy/local so that `python -m services.<name>` works without configuration.
Environment variables use the service's prefix (e.g. ``INTAKE_HTTP_PORT``) and
fall back to the shared, unprefixed names (``KAFKA_BOOTSTRAP``, ``MONGO_URI``).
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent
# The public development keys of the local stack (their plaintext is in the README).
DEV_CREDENTIALS = REPO_ROOT / "deploy" / "local" / "dev-credentials.json"


class InsecureSettings(ValueError):
    """Settings that are only safe for development, refused in production."""


def shared_field(default: Any, name: str) -> Any:
    """A field read from the unprefixed environment variable `name`."""
    return Field(default, validation_alias=AliasChoices(name, name.lower()))


class ServiceSettings(BaseSettings):
    """Connection and runtime settings every service has."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    service_name: str = "service"
    kafka_bootstrap: str = shared_field("127.0.0.1:9092", "KAFKA_BOOTSTRAP")
    # How the service authenticates to the broker (docs/security.md, "Kafka"):
    # production uses SASL_SSL with SCRAM-SHA-512, one user per service whose ACLs
    # allow producing only the topics it owns (deploy/k8s/base/kafka-users.yaml).
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = (
        shared_field("PLAINTEXT", "KAFKA_SECURITY_PROTOCOL")
    )
    kafka_sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] = shared_field(
        "SCRAM-SHA-512", "KAFKA_SASL_MECHANISM"
    )
    kafka_sasl_username: str = shared_field("", "KAFKA_SASL_USERNAME")
    kafka_sasl_password: SecretStr = shared_field(SecretStr(""), "KAFKA_SASL_PASSWORD")
    kafka_ssl_cafile: Path | None = shared_field(None, "KAFKA_SSL_CAFILE")
    # An unauthenticated broker outside development must be asked for explicitly.
    kafka_allow_plaintext: bool = shared_field(False, "KAFKA_ALLOW_PLAINTEXT")
    # Tansu and aiokafka's idempotent producer disagree (infra.md); on for real Kafka.
    kafka_idempotent_producer: bool = shared_field(False, "KAFKA_IDEMPOTENT_PRODUCER")
    kafka_session_timeout_ms: int = shared_field(6000, "KAFKA_SESSION_TIMEOUT_MS")
    kafka_heartbeat_interval_ms: int = shared_field(1000, "KAFKA_HEARTBEAT_INTERVAL_MS")
    # How long a fetch may wait for data. Kafka answers a waiting fetch as soon as data
    # arrives; Tansu (the local broker) answers when the wait runs out (a hop's latency
    # is about half this value) and does all the work of a fetch within it: it lists
    # every stored batch of the partition and then reads from the fetch offset on. A
    # short wait on a deep partition therefore returns one record per fetch, or none:
    # at 20 ms a consumer stalled for good from about 2,000 batches, at 500 ms a
    # consumer 2,400 batches behind read them all in 8 s (docs/performance.md, "The
    # local broker's partition depth"). The stack's reaper keeps partitions shallow
    # (deploy/local/reaper.py); these waits are what lets a consumer that fell behind
    # catch up. The p99 goal that once asked for 20 ms is retired: a second opinion
    # takes days and a quarter of a second per hop costs nothing anyone sees. The
    # followers (status and notification consumers, off a case's path:
    # EventConsumer.on(follower=True)) wait longer: each waiting consumer costs the
    # broker one fetch per wait.
    kafka_fetch_max_wait_ms: int = shared_field(500, "KAFKA_FETCH_MAX_WAIT_MS")
    kafka_follower_fetch_max_wait_ms: int = shared_field(1000, "KAFKA_FOLLOWER_FETCH_MAX_WAIT_MS")
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
    # The API keys (hashed). No default outside development: a production service
    # without CREDENTIALS_FILE refuses to start rather than accept the public
    # development keys of deploy/local.
    credentials_file: Path | None = shared_field(None, "CREDENTIALS_FILE")
    # Development (DEV_MODE=true, set by deploy/local and the tests) allows http://
    # and loopback endpoints, the development keys and an unauthenticated broker;
    # anything else is production, which refuses them.
    dev_mode: bool = shared_field(False, "DEV_MODE")
    outbox_sweep_seconds: float = 2.0
    # Consumer progress (shared/progress.py): sampled every few seconds; a consumer
    # that has not advanced for CONSUMER_STALL_SECONDS with more to read is stalled.
    consumer_progress_seconds: float = shared_field(5.0, "CONSUMER_PROGRESS_SECONDS")
    consumer_stall_seconds: float = shared_field(120.0, "CONSUMER_STALL_SECONDS")
    # The most any request body may be (shared.http.RequestGate), and the smaller
    # cap of the routes anyone may call without a key.
    max_body_bytes: int = 1_048_576
    public_max_body_bytes: int = 262_144
    # /metrics without a key (development always): production scrapes with an
    # operations key unless the metrics port is reachable only by Prometheus.
    metrics_public: bool = shared_field(False, "METRICS_PUBLIC")
    # How long audit records are kept (shared.audit): six years, as HIPAA asks of
    # documentation.
    audit_retention_days: int = shared_field(2190, "AUDIT_RETENTION_DAYS")

    def credentials_path(self) -> Path:
        """The credentials file to load; raises `InsecureSettings` in production
        when none is configured."""
        if self.credentials_file is not None:
            return self.credentials_file
        if self.dev_mode:
            return DEV_CREDENTIALS
        raise InsecureSettings("CREDENTIALS_FILE is not set (DEV_MODE is off)")

    def check_production(self) -> None:
        """Fail closed: refuse settings that are only safe for development."""
        if self.dev_mode:
            return
        self.credentials_path()
        if self.credentials_file == DEV_CREDENTIALS:
            raise InsecureSettings("the development credentials are refused outside DEV_MODE")
        if self.kafka_security_protocol == "PLAINTEXT" and not self.kafka_allow_plaintext:
            raise InsecureSettings(
                "KAFKA_SECURITY_PROTOCOL=PLAINTEXT outside DEV_MODE "
                "(use SASL_SSL, or set KAFKA_ALLOW_PLAINTEXT=true to accept it)"
            )
        if self.kafka_security_protocol.startswith("SASL") and not self.kafka_sasl_username:
            raise InsecureSettings("KAFKA_SASL_USERNAME is not set")

    def kafka_security(self) -> Any:
        """The faststream security object for the broker (None: PLAINTEXT)."""
        from faststream.security import (
            BaseSecurity,
            SASLPlaintext,
            SASLScram256,
            SASLScram512,
        )

        protocol = self.kafka_security_protocol
        if protocol == "PLAINTEXT":
            return None
        context = self.kafka_ssl_context() if protocol.endswith("SSL") else None
        if protocol == "SSL":
            return BaseSecurity(ssl_context=context, use_ssl=True)
        kind = {
            "SCRAM-SHA-512": SASLScram512,
            "SCRAM-SHA-256": SASLScram256,
            "PLAIN": SASLPlaintext,
        }[self.kafka_sasl_mechanism]
        return kind(
            self.kafka_sasl_username,
            self.kafka_sasl_password.get_secret_value(),
            ssl_context=context,
            use_ssl=context is not None,
        )

    def kafka_client_options(self) -> dict[str, Any]:
        """The same security as keyword arguments of plain aiokafka clients (admin)."""
        protocol = self.kafka_security_protocol
        options: dict[str, Any] = {"security_protocol": protocol}
        if protocol.endswith("SSL"):
            options["ssl_context"] = self.kafka_ssl_context()
        if protocol.startswith("SASL"):
            options.update(
                sasl_mechanism=self.kafka_sasl_mechanism,
                sasl_plain_username=self.kafka_sasl_username,
                sasl_plain_password=self.kafka_sasl_password.get_secret_value(),
            )
        return options

    def kafka_ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(
            cafile=str(self.kafka_ssl_cafile) if self.kafka_ssl_cafile else None
        )
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context

    @property
    def consumer_group(self) -> str:
        return f"router.{self.service_name}"
