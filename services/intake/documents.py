"""The documents intake stores, as models: what `store.py` loads and saves.

`cases` holds one `CaseDocument` per (tenant, external id): the submission as
validated, what intake decided about it (with the reasons), what it waits for
and every stage it reached. `rejections` holds one `RejectionDocument` per
refused submission: where and why, never the submitted values. Instants are
`datetime` (UTC, as the database returns them), never strings.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from services.intake.progress import Progress
from services.intake.progress import Stage as Stage
from services.intake.progress import StageRecord as StageRecord
from shared.events import CaseSubmission, FieldError, Urgency
from shared.vocabulary import Subspecialty

SecondOpinionValue = Literal["high", "standard", "low"]


class Stored(BaseModel):
    """A stored document: `_id` in the database, unknown fields (the outbox
    bookkeeping, left out by the store's projection) ignored."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")


class FindingRecord(BaseModel):
    """A triage signal, with the phrase that triggered it."""

    name: str
    reason: str


class SubspecialtyRecord(BaseModel):
    """A subspecialty the case needs, with the words that chose it."""

    name: Subspecialty
    reason: str


class MentionRecord(BaseModel):
    """A concept read in the case: the words (or code), where, and their context."""

    concept: str
    words: str
    source: str
    context: str = "current"
    cue: str = ""


class RerouteRecord(BaseModel):
    """The routing re-checked with the images (records.complete) and changed: the
    reviewers added and removed, each with its reason, and what the images were."""

    at: datetime
    images: str
    added: list[SubspecialtyRecord] = []
    removed: list[SubspecialtyRecord] = []


class AuthorizationRecord(BaseModel):
    """The patient's release for one provider, as recorded."""

    provider_id: str
    reference: str = ""
    at: datetime


class ReviewRecord(BaseModel):
    """Operations' decision on a case held for human review."""

    by: str
    release: bool
    note: str = ""
    at: datetime


class CaseDocument(Stored):
    id: str = Field(alias="_id")
    tenant_id: str
    external_id: str
    fingerprint: str
    submission: CaseSubmission
    subspecialties: list[SubspecialtyRecord]
    findings: list[MentionRecord] = []
    beyond_tier: list[SubspecialtyRecord] = []
    # Each change of the reviewers once the images were known (docs/clinical-rules.md).
    reroutes: list[RerouteRecord] = []
    triage: list[FindingRecord] = []
    second_opinion_value: SecondOpinionValue = "standard"
    urgency: Urgency
    urgency_reason: str = ""
    earlier_case_ids: list[str] = []
    hold_reason: str = ""
    waiting_on_authorization: list[str] = []
    authorized_providers: list[str] = []
    authorizations: list[AuthorizationRecord] = []
    review: ReviewRecord | None = None
    stage: Stage
    stage_rank: int
    history: list[StageRecord] = []
    # What intake knows downstream (services/intake/progress.py); the stage is derived
    # from it and `progress_version` guards its read-modify-write.
    progress: Progress = Progress()
    progress_version: int = 0
    created_at: datetime
    updated_at: datetime

    @property
    def waiting(self) -> bool:
        return self.stage in ("held_for_review", "awaiting_authorization")


class RejectionDocument(Stored):
    """A refused submission: tenant, channel, the external id it claimed (if a
    readable one), the answer and the field errors; no submitted value."""

    id: str = Field(alias="_id")
    tenant_id: str
    channel: Literal["http", "http-fhir", "kafka"]
    external_id: str = Field(default="", max_length=128)
    case_id: str | None = None
    status: int
    errors: list[FieldError]
    at: datetime
