"""reporting's domain, free of I/O: the structured second opinion and its
canonical form (the bytes a signature covers)."""

from __future__ import annotations

import hashlib
import json
import uuid
from enum import StrEnum
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.events import Concordance


class OriginalReportReference(StrEnum):
    CONFIRMED = "confirmed"
    REFINED = "refined"
    REVISED = "revised"


class ImagingReview(BaseModel):
    """For imaging: the reviewer's own findings, against the original report's wording."""

    model_config = ConfigDict(extra="forbid")
    findings: str = Field(min_length=10, max_length=20000)
    original_wording: str = Field(
        min_length=1, max_length=4000, description="Quoted from the original report"
    )
    reference: OriginalReportReference
    assessment: str = Field(
        min_length=5,
        max_length=500,
        description="One line: does diagnosis, severity or staging change?",
    )


class Opinion(BaseModel):
    """The structured written second opinion (design.md §3 reporting)."""

    model_config = ConfigDict(extra="forbid")
    agrees_with_diagnosis: bool
    diagnosis: str = Field(default="", max_length=2000, description="Required when disagreeing")
    diagnosis_rationale: str = Field(
        default="", max_length=8000, description="Required when disagreeing"
    )
    agrees_with_treatment_plan: bool
    would_do_differently: str = Field(default="", max_length=8000)
    information_that_would_change_opinion: str = Field(min_length=1, max_length=8000)
    recommended_next_steps: list[str] = Field(min_length=1)
    concordance: Concordance
    imaging: ImagingReview | None = None

    @model_validator(mode="after")
    def _disagreement_needs_reasons(self) -> Self:
        if not self.agrees_with_diagnosis and not (self.diagnosis and self.diagnosis_rationale):
            raise ValueError("diagnosis and diagnosis_rationale are required when disagreeing")
        if not self.agrees_with_treatment_plan and not self.would_do_differently:
            raise ValueError("would_do_differently is required when disagreeing with the plan")
        return self


def report_id_for(case_id: str, assignment_id: str) -> str:
    return "rpt-" + uuid.uuid5(uuid.NAMESPACE_URL, f"{case_id}/{assignment_id}").hex[:20]


def canonical_bytes(document: dict[str, Any]) -> bytes:
    """Deterministic JSON (sorted keys, no whitespace, UTF-8): what is hashed and signed."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def content_sha256(document: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_bytes(document)).hexdigest()
