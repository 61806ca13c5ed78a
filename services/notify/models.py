"""notify's stored documents, typed: a subscription (one destination of a
tenant) and a delivery (one event for one subscriber, with every attempt).
The store loads and saves these; handlers never see a raw document."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.store import Doc
from shared.vocabulary import PartnerEventType

Channel = Literal["webhook", "email"]
Audience = Literal["partner", "treating_clinician", "patient_portal"]
DeliveryState = Literal["pending", "delivered", "dead_letter"]


class Stored(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")
    id: str = Field(alias="_id")

    @classmethod
    def load(cls, doc: Doc) -> Any:
        return cls.model_validate(doc)

    def doc(self) -> Doc:
        return self.model_dump(by_alias=True, mode="python")


class PreviousSecret(BaseModel):
    secret: str
    expires_at: datetime


class Subscription(Stored):
    tenant_id: str
    channel: Channel = "webhook"
    audience: Audience = "partner"
    event_types: list[PartnerEventType]
    # Paused (False) or sending (True); a deleted subscription is kept for audit.
    active: bool = True
    state: Literal["live", "deleted"] = "live"
    url: str = ""
    email: str = ""
    secret: str = ""
    previous_secrets: list[PreviousSecret] = []
    created_at: datetime
    updated_at: datetime | None = None
    deleted_at: datetime | None = None

    def doc(self) -> Doc:
        doc = super().doc()
        doc["event_types"] = [str(e) for e in self.event_types]
        return doc

    @property
    def sends(self) -> bool:
        return self.active and self.state == "live"

    def signing_secrets(self, now: datetime) -> list[str]:
        """The current secret, plus rotated-out ones still in their grace period: the
        partner verifies if any one signature matches, so a rotation breaks nobody."""
        return [self.secret, *(p.secret for p in self.previous_secrets if p.expires_at > now)]


class Attempt(BaseModel):
    n: int
    at: datetime
    status: int | None
    error: str
    latency_ms: float | None


class Delivery(Stored):
    tenant_id: str
    case_id: str
    subscription_id: str
    channel: Channel = "webhook"
    audience: Audience = "partner"
    event_id: str
    event_type: PartnerEventType
    payload: dict[str, Any] = {}
    traceparent: str = ""
    state: DeliveryState = "pending"
    attempts: list[Attempt] = []
    cycle_attempts: int = 0
    next_attempt_at: datetime
    lease_until: datetime | None = None  # left out of listings
    created_at: datetime
    updated_at: datetime | None = None
    in_flight: datetime | None = None
    resends: int = 0

    def doc(self) -> Doc:
        doc = super().doc()
        doc["event_type"] = str(self.event_type)
        return doc

    def view(self) -> dict[str, Any]:
        """What the tenant sees in the delivery log."""
        shown = self.model_dump(mode="json", exclude={"id", "traceparent", "lease_until"})
        return {"delivery_id": self.id, **shown}
