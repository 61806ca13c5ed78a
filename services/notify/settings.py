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
    # A claimed delivery is leased for the send timeout plus this margin; a
    # dispatcher that dies mid-send leaves it to be re-sent once the lease ends.
    lease_margin_seconds: float = 5.0
    max_attempts: int = 8
    base_backoff_seconds: float = 1.0
    max_backoff_seconds: float = 300.0
    dispatch_interval_seconds: float = 1.0
    # After a secret rotation the old secret keeps signing (a second signature) this long.
    secret_grace_seconds: float = 24 * 3600.0
    # The e-mail channel: the organisation's own relay (tenants give addresses only).
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 25
    smtp_starttls: bool = False
    smtp_username: str = ""
    smtp_password: str = ""
    smtp_timeout_seconds: float = 10.0
    email_from: str = "second-opinion@localhost"
    # Report links in events are API paths; e-mails make them absolute with this.
    public_reporting_url: str = "http://127.0.0.1:8004"
