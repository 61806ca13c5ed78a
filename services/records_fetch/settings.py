"""records_fetch's settings (env prefix RECORDS_FETCH_)."""

from pathlib import Path

from pydantic_settings import SettingsConfigDict

from shared.settings import REPO_ROOT, ServiceSettings


class RecordsFetchSettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="RECORDS_FETCH_", extra="ignore", populate_by_name=True
    )
    service_name: str = "records_fetch"
    mongo_database: str = "records_fetch"
    http_port: int = 8002
    # The provider endpoints registered per tenant: the only URLs this service calls.
    providers_file: Path = REPO_ROOT / ".run" / "providers.json"
    provider_timeout_seconds: float = 10.0
    # Where retrieved files are kept for the reviewer (content-addressed by sha256).
    records_dir: Path = REPO_ROOT / ".run" / "records"
    # Re-requests of missing items: base * 2^(attempt-1), capped, then a human decides.
    retry_base_seconds: float = 30.0
    retry_max_delay_seconds: float = 3600.0
    retry_max_attempts: int = 8
    # Cases retrieved at once by this process (each worker claims its own case by lease).
    # Retrieval waits on the providers and the database, not on this process's CPU.
    retrieval_workers: int = 4
    # How often the retrieval loop looks for due cases when not woken by a new one.
    poll_seconds: float = 2.0
    # A worker holds a case this long; a crashed worker's case is taken up after it.
    # Renewed every third of itself while a retrieval runs (handlers._keep_lease).
    lease_seconds: float = 30.0
