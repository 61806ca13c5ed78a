"""reporting's settings (env prefix REPORTING_)."""

from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class ReportingSettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="REPORTING_", extra="ignore", populate_by_name=True
    )
    service_name: str = "reporting"
    mongo_database: str = "reporting"
    http_port: int = 8004
