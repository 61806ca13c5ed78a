"""records_fetch's settings (env prefix RECORDS_FETCH_)."""

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from services.records_fetch.checker import CHECK_TIMEOUT_SECONDS
from shared.settings import REPO_ROOT, InsecureSettings, ServiceSettings


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
    # Where retrieved files are kept for the reviewer (content-addressed by sha256):
    # "s3" (a bucket every replica shares; the local stack's SeaweedFS) or "local"
    # (records_dir on this node's disk: single-node use). Unset: "local" in
    # development, a refusal to start otherwise (archive.py).
    archive: Literal["s3", "local"] | None = None
    records_dir: Path = REPO_ROOT / ".run" / "records"
    # The S3 archive: endpoint (empty: AWS's own), bucket, key prefix, credentials
    # (empty: boto3's default chain, e.g. a workload identity), and the local spool
    # files stream into and are checked in before upload.
    s3_endpoint: str = ""
    s3_bucket: str = "records"
    s3_prefix: str = ""
    s3_region: str = "us-east-1"
    s3_access_key_id: str = ""
    s3_secret_access_key: SecretStr = SecretStr("")
    spool_dir: Path = REPO_ROOT / ".run" / "records-spool"
    # The review organisation's PACS: a complete case's images are imported there
    # (STOW-RS, reconciled as IHE IRWF.b does) and the reviewer's assignment links
    # to its viewer. review_pacs_url is its REST root (DICOMweb under /dicom-web);
    # review_viewer_url the root the reviewer's browser reaches (default: the same);
    # review_issuer the review organisation's Issuer of Patient ID. Empty: no import.
    review_pacs_url: str = ""
    review_viewer_url: str = ""
    review_issuer: str = "SECOND-OPINION-REVIEW"
    # Re-requests of missing items: base * 2^(attempt-1), capped, then a human decides.
    retry_base_seconds: float = 30.0
    retry_max_delay_seconds: float = 3600.0
    retry_max_attempts: int = 8
    # Cases retrieved at once by this process (each worker claims its own case by lease).
    # Retrieval waits on the providers and the database, not on this process's CPU.
    retrieval_workers: int = 4
    # Worker processes that check retrieved instances (pydicom, the codecs): a
    # crashing decoder ends one of them, not the service (checker.py). 0: threads.
    check_processes: int = Field(default=1, ge=0, le=16)
    # A check running longer has its worker killed; the file is reported corrupt.
    check_timeout_seconds: float = Field(default=CHECK_TIMEOUT_SECONDS, gt=0, le=3600)
    # How often the retrieval loop looks for due cases when not woken by a new one.
    poll_seconds: float = 2.0
    # A worker holds a case this long; a crashed worker's case is taken up after it.
    # Renewed every third of itself while a retrieval runs (handlers._keep_lease).
    lease_seconds: float = 30.0

    def check_production(self) -> None:
        super().check_production()
        if self.dev_mode:
            return
        if self.archive is None:
            raise InsecureSettings(
                "RECORDS_FETCH_ARCHIVE is not set (DEV_MODE is off): "
                "set it to s3 (a shared bucket) or local (single node)"
            )
        if self.archive == "s3" and self.s3_endpoint.startswith("http://"):
            raise InsecureSettings("RECORDS_FETCH_S3_ENDPOINT over http:// outside DEV_MODE")
        for name in ("review_pacs_url", "review_viewer_url"):
            if getattr(self, name).startswith("http://"):
                raise InsecureSettings(
                    f"RECORDS_FETCH_{name.upper()} over http:// outside DEV_MODE"
                )
