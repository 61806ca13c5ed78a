"""notify's stored documents, typed: a subscription (one destination of a
tenant) and a delivery (one event for one subscriber, with every attempt).
The store loads and saves these; handlers never see a raw document."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from services.notify.domain import Breaker
from shared.store import Doc
from shared.vocabulary import PartnerEventType

Channel = Literal["webhook", "email"]
Audience = Literal["partner", "treating_clinician", "patient_portal", "technical_contact"]
DeliveryState = Literal["pending", "delivered", "dead_letter"]
# An event for a destination, or the e-mail telling a partner's technical
# contact that one of its deliveries was dead-lettered.
DeliveryKind = Literal["event", "dead_letter_alert"]
# A dead letter's alert: "pending" (set in the dead-lettering write), "raised"
# (the alert e-mail is queued), "no_contact" (metric and log only).
AlertState = Literal["", "pending", "raised", "no_contact"]


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
    # Who hears about a dead letter (e-mail), e.g. the partner's integration team.
    technical_contact_email: str = ""
    # The endpoint's circuit breaker (domain.breaker_after).
    breaker: Breaker = Breaker()
    # The last sequence number given to a delivery of this subscription, and
    # which delivery got it (a fan-out retried after a crash reuses it).
    sequence: int = 0
    last_sequenced: str = ""
    # Why the subscription stopped by itself (e.g. the endpoint answered 410 Gone).
    disabled_reason: str = ""
    disabled_at: datetime | None = None
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
    subscription_id: str  # "" for a treating clinician's e-mail (no subscription)
    kind: DeliveryKind = "event"
    # The address of a delivery without a subscription (the treating clinician's,
    # from case.accepted) or of an alert (the technical contact's).
    recipient: str = ""
    # Per subscription, 1, 2, 3, ... in the order events were fanned out; in the payload.
    sequence: int | None = None
    # Which dispatcher worker sends it: all of one subscription's deliveries go
    # through the same worker, one at a time, in sequence order.
    shard: int = 0
    channel: Channel = "webhook"
    audience: Audience = "partner"
    event_id: str
    event_type: PartnerEventType
    payload: dict[str, Any] = {}
    traceparent: str = ""
    state: DeliveryState = "pending"
    attempts: list[Attempt] = []
    cycle_attempts: int = 0
    # Start of the current retry window (creation, or the last resend).
    cycle_started: datetime | None = None
    next_attempt_at: datetime
    alert: AlertState = ""
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
        shown = self.model_dump(
            mode="json", exclude={"id", "traceparent", "lease_until", "shard", "recipient"}
        )
        return {"delivery_id": self.id, **shown}
