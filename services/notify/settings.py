"""notify's settings (env prefix NOTIFY_)."""

from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class NotifySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="NOTIFY_", extra="ignore", populate_by_name=True)
    service_name: str = "notify"
    mongo_database: str = "notify"
    http_port: int = 8005
    # Local development posts to receivers on 127.0.0.1 over http; never in production.
    allow_loopback_webhooks: bool = True
    webhook_timeout_seconds: float = 10.0
    max_attempts: int = 8
    base_backoff_seconds: float = 1.0
    max_backoff_seconds: float = 300.0
    dispatch_interval_seconds: float = 1.0
