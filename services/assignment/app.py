"""assignment's wiring: roster loading, the subscribers (records complete and
incomplete, report submitted), the roster / reviewer / operations APIs, the
timer loop and the SLA dashboard (page, JSON, Prometheus)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Literal

from fastapi import Depends
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import Counter
from pydantic import BaseModel, Field, TypeAdapter

from services.assignment import handlers
from services.assignment.dashboard import Dashboard, ReportedSummary, summarize
from services.assignment.domain import Assignment, Reviewer, slot_id_for
from services.assignment.metrics import COLLECTOR, count_emitted
from services.assignment.settings import AssignmentSettings
from services.assignment.store import AssignmentStore
from shared.auth import Principal
from shared.clock import clock_from
from shared.envelope import EventMeta, OutboxEntry
from shared.errors import InvalidInput, NotFound
from shared.events import RecordsComplete, RecordsIncomplete, ReportSubmitted
from shared.runtime import Service
from shared.telemetry import quiet

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
TICKS = Counter("assignment_timer_ticks", "Passes of the timer loop")

settings = AssignmentSettings()
policy = settings.policy()
clock = clock_from(settings.clock_file)
service = Service(
    settings,
    title="Second-opinion assignment",
    description="Matches cases to independent subspecialists and keeps the review SLA.",
)
store = AssignmentStore(
    service.collection("reviewers"), service.collection("assignments", outbox=True)
)
operations = service.require("operations")
reviewer = service.require("reviewer")
Ops = Annotated[Principal, Depends(operations)]
Rev = Annotated[Principal, Depends(reviewer)]
api = service.api
app = service.asyncapi
api.mount("/dashboard/static", StaticFiles(directory=STATIC), name="dashboard-static")


def emit(outbox: list[OutboxEntry]) -> None:
    count_emitted(outbox)
    service.emitted(outbox)


@service.on_startup
async def load_roster() -> None:
    await store.create_indexes()
    if settings.roster_file.exists():
        roster = TypeAdapter(list[Reviewer]).validate_python(
            json.loads(settings.roster_file.read_text())
        )
        await store.upsert_reviewers(roster)
    await roster_changed()


async def roster_changed() -> None:
    """A reviewer was added, changed or taken off: waiting assignments may now fit."""
    emit(await handlers.reoffer_waiting(store, policy, clock.now(), settings.reoffer_batch))


# ---------------------------------------------------------------- subscribers


@service.consumer.on(RecordsComplete)
async def on_records_complete(event: RecordsComplete, meta: EventMeta) -> None:
    emit(await handlers.assign_case(store, policy, clock.now(), event, meta))


@service.consumer.on(RecordsIncomplete, follower=True)  # pauses a clock: not urgent
async def on_records_incomplete(event: RecordsIncomplete, meta: EventMeta) -> None:
    await handlers.records_incomplete(store, policy, clock.now(), event, meta)


@service.consumer.on(ReportSubmitted)
async def on_report_submitted(event: ReportSubmitted, meta: EventMeta) -> None:
    emit(
        await handlers.close_assignment(
            store, policy, clock.now(), event, meta, reoffer_batch=settings.reoffer_batch
        )
    )


# ---------------------------------------------------------------- roster (operations)


@api.get("/v1/reviewers", response_model=list[Reviewer], tags=["roster"])
async def list_reviewers(_: Ops, include_inactive: bool = False) -> list[Reviewer]:
    return await store.roster(include_inactive=include_inactive)


@api.put("/v1/reviewers/{reviewer_id}", response_model=Reviewer, tags=["roster"])
async def put_reviewer(reviewer_id: str, body: Reviewer, _: Ops) -> Reviewer:
    if body.reviewer_id != reviewer_id:
        raise InvalidInput("reviewer_id in the body differs from the path")
    await store.upsert_reviewers([body])
    await roster_changed()
    return body


@api.post("/v1/reviewers/import", response_model=list[Reviewer], tags=["roster"])
async def import_roster(body: list[Reviewer], _: Ops) -> list[Reviewer]:
    """Load a roster file's content (the same JSON list as deploy/local/roster.json)."""
    await store.upsert_reviewers(body)
    await roster_changed()
    return await store.roster()


@api.delete("/v1/reviewers/{reviewer_id}", response_model=Reviewer, tags=["roster"])
async def deactivate_reviewer(reviewer_id: str, _: Ops) -> Reviewer:
    """Take a reviewer off new assignments (their history stays)."""
    current = await store.reviewer(reviewer_id)
    if current is None:
        raise NotFound(f"no reviewer {reviewer_id}")
    updated = current.model_copy(update={"active": False})
    await store.upsert_reviewers([updated])
    await roster_changed()
    return updated


# ---------------------------------------------------------------- reviewers


class Decline(BaseModel):
    reason: str = Field(default="", max_length=500, description="No patient details, please")


@api.get("/v1/reviewer/assignments", response_model=list[Assignment], tags=["reviewer"])
async def my_assignments(principal: Rev) -> list[Assignment]:
    return await store.for_reviewer(principal.subject)


@api.post(
    "/v1/reviewer/assignments/{assignment_id}/accept", response_model=Assignment, tags=["reviewer"]
)
async def accept_assignment(assignment_id: str, principal: Rev) -> Assignment:
    a, outbox = await handlers.respond(
        store, policy, clock.now(), assignment_id, principal.subject, "accept"
    )
    emit(outbox)
    return a


@api.post(
    "/v1/reviewer/assignments/{assignment_id}/decline", response_model=Assignment, tags=["reviewer"]
)
async def decline_assignment(assignment_id: str, body: Decline, principal: Rev) -> Assignment:
    """Decline: the assignment goes to the next eligible reviewer at once."""
    a, outbox = await handlers.respond(
        store,
        policy,
        clock.now(),
        assignment_id,
        principal.subject,
        "decline",
        body.reason,
        reoffer_batch=settings.reoffer_batch,
    )
    emit(outbox)
    return a


# ---------------------------------------------------------------- operations


class ClockChange(BaseModel):
    kind: Literal["consent", "records", "other"] = "consent"
    reason: str = Field(default="", max_length=500)


class Reassign(BaseModel):
    reason: str = Field(min_length=1, max_length=500)


@api.get("/v1/cases/{case_id}/assignments", response_model=list[Assignment], tags=["operations"])
async def case_assignments(case_id: str, _: Ops) -> list[Assignment]:
    """Who reviews each part of the case, why, who was excluded and why, the clock."""
    found = await store.find({"case_id": case_id})
    if not found:
        raise NotFound(f"no assignment for case {case_id}")
    return found


@api.post(
    "/v1/cases/{case_id}/clock/{action}", response_model=list[Assignment], tags=["operations"]
)
async def change_clock(
    case_id: str,
    action: Literal["pause", "resume"],
    body: ClockChange,
    principal: Ops,
) -> list[Assignment]:
    """Pause the review clock with a recorded reason (e.g. waiting on consent), or resume it."""
    by = f"operations:{principal.subject}"
    return await handlers.pause_case(
        store, policy, clock.now(), case_id, body.kind, body.reason, by, resume=action == "resume"
    )


@api.post(
    "/v1/cases/{case_id}/assignments/{subspecialty}/reassign",
    response_model=Assignment,
    tags=["operations"],
)
async def reassign(case_id: str, subspecialty: str, body: Reassign, principal: Ops) -> Assignment:
    a, outbox = await handlers.reassign_by_operations(
        store,
        policy,
        clock.now(),
        slot_id_for(case_id, subspecialty),
        body.reason,
        f"operations:{principal.subject}",
        reoffer_batch=settings.reoffer_batch,
    )
    emit(outbox)
    return a


# ---------------------------------------------------------------- dashboard


class ReportedCache:
    """The reported-work summary, recomputed at most every `max_age` seconds by the
    timer loop: it reads every assignment reported in the turnaround window, so at
    the loop's pace it would grow to the largest read the service makes, for figures
    (90-day percentiles) that move slowly. An operator's request is always fresh."""

    def __init__(self, max_age: float) -> None:
        self.max_age = max_age
        self.value: ReportedSummary | None = None
        self.taken_at = 0.0

    async def get(self, now: datetime, *, fresh: bool) -> ReportedSummary:
        age = time.monotonic() - self.taken_at
        if fresh or self.value is None or age >= self.max_age:
            since = now - timedelta(days=settings.turnaround_window_days)
            self.value = await store.reported_summary(since)
            self.taken_at = time.monotonic()
        return self.value


reported_cache = ReportedCache(settings.reported_refresh_seconds)


async def snapshot(*, fresh: bool = True) -> Dashboard:
    now = clock.now()
    with quiet():
        open_, reported = await store.open_assignments(), await reported_cache.get(now, fresh=fresh)
        roster, load = await store.roster(), await store.active_load()
    COLLECTOR.snapshot = summarize(open_, reported, roster, load, policy, now)
    return COLLECTOR.snapshot


@api.get("/v1/dashboard", response_model=Dashboard, tags=["dashboard"])
async def dashboard_json(_: Ops) -> Dashboard:
    return await snapshot(fresh=True)


@api.get("/dashboard", include_in_schema=False)
async def dashboard_page() -> FileResponse:
    """The page holds no data: its script asks /v1/dashboard with the operator's key."""
    return FileResponse(STATIC / "index.html")


@service.background
async def timer_loop() -> None:
    """Fire due timers and refresh the metrics snapshot, forever."""
    while True:
        try:
            with quiet():
                emit(
                    await handlers.fire_timers(
                        store, policy, clock.now(), reoffer_batch=settings.reoffer_batch
                    )
                )
            await snapshot(fresh=False)
        except Exception as exc:  # database or broker down: next pass retries
            log.warning("timer pass failed: %s", type(exc).__name__)
        TICKS.inc()
        await asyncio.sleep(settings.timer_poll_seconds)
