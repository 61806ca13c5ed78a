"""Intake's settings (env prefix INTAKE_)."""

from pathlib import Path

from pydantic_settings import SettingsConfigDict

from services.intake.progress import Audience, DeliveryPolicy
from shared.settings import InsecureSettings, ServiceSettings


class IntakeSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="INTAKE_", extra="ignore", populate_by_name=True)
    service_name: str = "intake"
    mongo_database: str = "intake"
    http_port: int = 8001
    max_body_bytes: int = 1_000_000
    # The provider registry records_fetch calls (shared/providers.py): the same file
    # as RECORDS_FETCH_PROVIDERS_FILE. A case naming a provider not registered for its
    # tenant is refused at the door. Unset: not checked (development only; production
    # refuses to start without it).
    providers_file: Path | None = None
    # Whom a report must reach before a case is `delivered`, per tenant
    # (INTAKE_DELIVERY_POLICY='{"tenant": ["partner", "treating_clinician"]}'), else
    # INTAKE_DELIVERY_AUDIENCES (the partner). docs/intake.md, "Delivery policy".
    delivery_policy: dict[str, list[Audience]] = {}
    delivery_audiences: list[Audience] = ["partner"]

    def delivery_policy_for(self, tenant_id: str) -> DeliveryPolicy:
        audiences = self.delivery_policy.get(tenant_id, self.delivery_audiences)
        return DeliveryPolicy(audiences=tuple(audiences))

    def check_production(self) -> None:
        super().check_production()
        if not self.dev_mode and self.providers_file is None:
            raise InsecureSettings(
                "INTAKE_PROVIDERS_FILE is not set (the provider registry cases are checked against)"
            )
