"""Intake's settings (env prefix INTAKE_)."""

from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class IntakeSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="INTAKE_", extra="ignore", populate_by_name=True)
    service_name: str = "intake"
    mongo_database: str = "intake"
    http_port: int = 8001
    max_body_bytes: int = 1_000_000
