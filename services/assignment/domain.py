"""assignment's domain, free of I/O: who may review a case and who should.

Order of the rules (design.md §3): subspecialty, independence from the first
opinion, licensure for the patient's jurisdiction, then workload. Every
decision carries its reasons, for the chosen reviewer and for each excluded one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from pydantic import BaseModel, ConfigDict, Field

from shared.events import RoutingContext, Urgency


class Reviewer(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    reviewer_id: str
    name: str
    credentials: str = ""
    subspecialties: list[str]
    board_certifications: list[str] = []
    licensed_jurisdictions: list[str]
    affiliations: list[str] = []
    capacity: int = Field(default=5, ge=0)
    timezone: str = "UTC"
    active: bool = True


@dataclass
class Decision:
    subspecialty: str
    reviewer: Reviewer | None
    reason: str
    excluded: dict[str, str] = field(default_factory=dict)


def _exclusion(r: Reviewer, subspecialty: str, ctx: RoutingContext, load: int) -> str | None:
    """Why `r` may not take this case, or None if eligible."""
    if not r.active:
        return "inactive"
    if subspecialty not in r.subspecialties:
        return f"not a {subspecialty} reviewer"
    conflicts = {a.lower() for a in r.affiliations} & {
        a.lower() for a in [ctx.first_opinion.institution, *ctx.first_opinion.affiliations] if a
    }
    if conflicts or (
        ctx.first_opinion.clinician_id and r.reviewer_id == ctx.first_opinion.clinician_id
    ):
        shared = ", ".join(sorted(conflicts)) or "identity"
        return f"not independent of the first opinion (shares {shared})"
    if ctx.jurisdiction not in r.licensed_jurisdictions:
        return f"not licensed in {ctx.jurisdiction}"
    if load >= r.capacity:
        return f"at capacity ({load}/{r.capacity})"
    return None


def choose_reviewer(
    subspecialty: str, ctx: RoutingContext, roster: list[Reviewer], load: dict[str, int]
) -> Decision:
    """The least-loaded eligible reviewer for one subspecialty of the case."""
    excluded: dict[str, str] = {}
    eligible: list[Reviewer] = []
    for r in roster:
        why = _exclusion(r, subspecialty, ctx, load.get(r.reviewer_id, 0))
        if why:
            excluded[r.reviewer_id] = why
        else:
            eligible.append(r)
    if not eligible:
        return Decision(subspecialty, None, f"no eligible {subspecialty} reviewer", excluded)
    best = min(
        eligible, key=lambda r: (load.get(r.reviewer_id, 0) / max(r.capacity, 1), r.reviewer_id)
    )
    reason = (
        f"{subspecialty}; independent of {ctx.first_opinion.institution or 'first opinion'}; "
        f"licensed in {ctx.jurisdiction}; load {load.get(best.reviewer_id, 0)}/{best.capacity}"
    )
    return Decision(subspecialty, best, reason, excluded)


def review_deadline(
    start: datetime, tier_hours: float, urgency: Urgency, urgent_factor: float
) -> datetime:
    """Wall-clock deadline (issue #5 replaces this with the business calendar)."""
    hours = tier_hours * (urgent_factor if urgency is Urgency.URGENT else 1.0)
    return start + timedelta(hours=hours)
