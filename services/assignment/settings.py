"""assignment's settings (env prefix ASSIGNMENT_)."""

from pathlib import Path

from pydantic_settings import SettingsConfigDict

from shared.settings import REPO_ROOT, ServiceSettings


class AssignmentSettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="ASSIGNMENT_", extra="ignore", populate_by_name=True
    )
    service_name: str = "assignment"
    mongo_database: str = "assignment"
    http_port: int = 8003
    roster_file: Path = REPO_ROOT / "deploy" / "local" / "roster.json"
    # Review deadline per service tier, in hours (business calendar: issue #5).
    tier_hours: dict[str, float] = {
        "imaging_reread": 48,
        "pathology_rereview": 72,
        "specialist_opinion": 120,
        "multi_specialist": 336,
    }
    urgent_factor: float = 0.25
