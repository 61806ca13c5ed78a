"""reporting's settings (env prefix REPORTING_)."""

from pathlib import Path

from pydantic_settings import SettingsConfigDict

from shared.settings import REPO_ROOT, ServiceSettings


class ReportingSettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="REPORTING_", extra="ignore", populate_by_name=True
    )
    service_name: str = "reporting"
    mongo_database: str = "reporting"
    http_port: int = 8004
    # Private signing keys (one file per reviewer, mode 0600); a mounted secret in production.
    key_dir: Path = REPO_ROOT / ".run" / "keys"
    # Where partners reach this API (the links in report.ready); default: host and port.
    public_base_url: str = ""

    @property
    def base_url(self) -> str:
        return self.public_base_url.rstrip("/") or f"http://{self.http_host}:{self.http_port}"
