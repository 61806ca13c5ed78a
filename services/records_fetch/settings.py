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
