"""notify's settings (env prefix NOTIFY_)."""

from pathlib import Path

from pydantic_settings import SettingsConfigDict

from services.notify.domain import ClinicianPolicy
from shared.settings import InsecureSettings, ServiceSettings


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
    # Retries (domain.RetryPolicy): exponential with full jitter from the base,
    # each interval capped, until the window from the delivery's creation is spent
    # (three days); max_attempts (0 = none) bounds the count as well.
    max_attempts: int = 0
    base_backoff_seconds: float = 10.0
    max_backoff_seconds: float = 3600.0
    retry_window_seconds: float = 3 * 24 * 3600.0
    # Per-endpoint circuit breaker (domain.BreakerPolicy).
    breaker_failure_threshold: int = 5
    breaker_base_seconds: float = 30.0
    breaker_cap_seconds: float = 3600.0
    # Dispatcher workers; one subscription's deliveries always go through one of them.
    dispatch_workers: int = 4
    dispatch_interval_seconds: float = 1.0
    # After a secret rotation the old secret keeps signing (a second signature) this long.
    secret_grace_seconds: float = 24 * 3600.0
    # The e-mail channel: the organisation's own relay (tenants give addresses only).
    # STARTTLS is required outside DEV_MODE (start-up fails closed without it);
    # smtp_ca_file verifies a relay with a private CA (the local stack's).
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 25
    smtp_starttls: bool = False
    smtp_ca_file: Path | None = None
    smtp_username: str = ""
    smtp_password: str = ""
    smtp_timeout_seconds: float = 10.0
    email_from: str = "second-opinion@localhost"
    # Report links in events are API paths; e-mails make them absolute with this.
    public_reporting_url: str = "http://127.0.0.1:8004"
    # The treating clinician's e-mail: "link" or "attachment" (the PDF), per tenant
    # (JSON object tenant -> policy), else the default.
    clinician_report_policy: dict[str, ClinicianPolicy] = {}
    clinician_report_default: ClinicianPolicy = "link"
    # Where notify fetches a report's PDF (reporting's API, inside the cluster) and
    # its own service credential there (role "service", subject "notify").
    reporting_url: str = "http://127.0.0.1:8004"
    reporting_api_key: str = ""

    def clinician_policy(self, tenant_id: str) -> ClinicianPolicy:
        return self.clinician_report_policy.get(tenant_id, self.clinician_report_default)

    def check_production(self) -> None:
        super().check_production()
        if self.dev_mode:
            return
        if not self.smtp_starttls:
            raise InsecureSettings("NOTIFY_SMTP_STARTTLS must be true outside DEV_MODE")
        attaching = "attachment" in {
            self.clinician_report_default,
            *self.clinician_report_policy.values(),
        }
        if attaching and not self.reporting_api_key:
            raise InsecureSettings("a clinician attachment policy needs NOTIFY_REPORTING_API_KEY")
