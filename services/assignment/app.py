"""assignment's wiring: roster loading, the subscribers (records complete and
incomplete, report submitted), the roster / reviewer / operations APIs, the
timer loop and the SLA dashboard (page, JSON, Prometheus).

`create_service(settings, clock)` builds one assignment process; `python -m
services.assignment` runs it. The module names `service`, `api` and `app` (the
AsyncAPI app for `faststream docs gen services.assignment.app:app`) are built on
first use, so tests can build their own service with their own settings and an
in-process clock (shared.clock.ManualClock).
"""

# No `from __future__ import annotations`: FastAPI resolves the routes' dependency
# annotations at definition time, and they name closures of create_service.

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import Counter
from pydantic import BaseModel, Field, TypeAdapter

from services.assignment import handlers
from services.assignment.dashboard import Dashboard, ReportedSummary, summarize
from services.assignment.domain import Assignment, Reviewer, SlaPolicy, slot_id_for
from services.assignment.metrics import COLLECTOR, count_emitted
from services.assignment.operations import Filters
from services.assignment.ops_app import OpsView, wire_operations
from services.assignment.settings import AssignmentSettings
from services.assignment.store import AssignmentStore
from shared.auth import Principal
from shared.clock import Clock, clock_from
from shared.envelope import EventMeta, OutboxEntry
from shared.errors import InvalidInput, NotFound
from shared.events import CaseRerouted, RecordsComplete, RecordsIncomplete, ReportSubmitted
from shared.http import errors
from shared.runtime import ProcessService, Service
from shared.telemetry import quiet
from shared.vocabulary import Subspecialty

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
TICKS = Counter("assignment_timer_ticks", "Passes of the timer loop")


class Decline(BaseModel):
    reason: str = Field(default="", max_length=500, description="No patient details, please")


class ClockChange(BaseModel):
    kind: Literal["consent", "records", "other"] = "consent"
    reason: str = Field(default="", max_length=500)


class Reassign(BaseModel):
    reason: str = Field(min_length=1, max_length=500)


@dataclass
class Wiring:
    """What every route, subscriber and loop of one assignment process uses."""

    service: Service
    settings: AssignmentSettings
    policy: SlaPolicy
    store: AssignmentStore
    ops: OpsView

    @property
    def clock(self) -> Clock:
        return self.service.clock

    def emit(self, outbox: list[OutboxEntry]) -> None:
        count_emitted(outbox)
        self.service.emitted(outbox)

    async def roster_changed(self, changed: list[Reviewer] | None = None) -> None:
        """Reviewers were added, changed or taken off (None: the whole roster was
        loaded): waiting assignments of their subspecialties may now fit."""
        subspecialties = None if changed is None else {s for r in changed for s in r.subspecialties}
        self.emit(
            await handlers.reoffer_waiting(
                self.store,
                self.policy,
                self.clock.now(),
                self.settings.reoffer_batch,
                subspecialties,
            )
        )


def create_service(
    settings: AssignmentSettings | None = None, clock: Clock | None = None
) -> Service:
    """One assignment process: store, subscribers, routes and timer loop on a new
    Service. The clock defaults to the system clock, or the settings' clock file."""
    settings = settings or AssignmentSettings()
    service = Service(
        settings,
        title="Second-opinion assignment",
        description="Matches cases to independent subspecialists and keeps the review SLA.",
        clock=clock or clock_from(settings.clock_file),
    )
    store = AssignmentStore(
        service.collection("reviewers"), service.collection("assignments", outbox=True)
    )
    policy = settings.policy()
    ops = wire_operations(service, settings, policy, store)
    wiring = Wiring(service, settings, policy, store, ops)
    service.api.mount("/dashboard/static", StaticFiles(directory=STATIC), name="dashboard-static")
    # The page and its script hold no data; /v1/dashboard needs an operations key.
    service.public("/dashboard")
    service.on_startup(_roster_loader(wiring))
    _subscribers(wiring)
    _roster_routes(wiring)
    _reviewer_routes(wiring)
    _operations_routes(wiring)
    _dashboard(wiring)
    return service


def _roster_loader(w: Wiring) -> Any:
    async def load_roster() -> None:
        await w.store.create_indexes()
        if w.settings.roster_file.exists():
            roster = TypeAdapter(list[Reviewer]).validate_python(
                json.loads(w.settings.roster_file.read_text())
            )
            await w.store.upsert_reviewers(roster)
        await w.roster_changed()

    return load_roster


# ---------------------------------------------------------------- subscribers


def _subscribers(w: Wiring) -> None:
    store, policy, consumer = w.store, w.policy, w.service.consumer

    @consumer.on(RecordsComplete)
    async def on_records_complete(event: RecordsComplete, meta: EventMeta) -> None:
        w.emit(await handlers.assign_case(store, policy, w.clock.now(), event, meta))
        await w.ops.record(event, meta)

    @consumer.on(CaseRerouted)
    async def on_case_rerouted(event: CaseRerouted, meta: EventMeta) -> None:
        w.emit(await handlers.reroute_case(store, policy, w.clock.now(), event, meta))
        await w.ops.record(event, meta)

    @consumer.on(RecordsIncomplete, follower=True)  # pauses a clock: not urgent
    async def on_records_incomplete(event: RecordsIncomplete, meta: EventMeta) -> None:
        await handlers.records_incomplete(store, policy, w.clock.now(), event, meta)
        await w.ops.record(event, meta)

    @consumer.on(ReportSubmitted)
    async def on_report_submitted(event: ReportSubmitted, meta: EventMeta) -> None:
        w.emit(
            await handlers.close_assignment(
                store, policy, w.clock.now(), event, meta, reoffer_batch=w.settings.reoffer_batch
            )
        )
        await w.ops.record(event, meta)


# ---------------------------------------------------------------- roster (operations)


def _roster_routes(w: Wiring) -> None:
    api, store = w.service.api, w.store
    Ops = Annotated[Principal, Depends(w.service.require("operations"))]

    @api.get("/v1/reviewers", response_model=list[Reviewer], tags=["roster"])
    async def list_reviewers(_: Ops, include_inactive: bool = False) -> list[Reviewer]:
        return await store.roster(include_inactive=include_inactive)

    @api.put("/v1/reviewers/{reviewer_id}", response_model=Reviewer, tags=["roster"])
    async def put_reviewer(reviewer_id: str, body: Reviewer, _: Ops) -> Reviewer:
        if body.reviewer_id != reviewer_id:
            raise InvalidInput("reviewer_id in the body differs from the path")
        await store.upsert_reviewers([body])
        await w.roster_changed([body])
        return body

    @api.post("/v1/reviewers/import", response_model=list[Reviewer], tags=["roster"])
    async def import_roster(body: list[Reviewer], _: Ops) -> list[Reviewer]:
        """Load a roster file's content (the same JSON list as deploy/local/roster.json)."""
        await store.upsert_reviewers(body)
        await w.roster_changed(body)
        return await store.roster()

    @api.delete("/v1/reviewers/{reviewer_id}", response_model=Reviewer, tags=["roster"])
    async def deactivate_reviewer(reviewer_id: str, _: Ops) -> Reviewer:
        """Take a reviewer off new assignments (their history stays)."""
        current = await store.reviewer(reviewer_id)
        if current is None:
            raise NotFound(f"no reviewer {reviewer_id}")
        updated = current.model_copy(update={"active": False})
        await store.upsert_reviewers([updated])
        await w.roster_changed([updated])
        return updated


# ---------------------------------------------------------------- reviewers


def _reviewer_routes(w: Wiring) -> None:
    api, store, policy = w.service.api, w.store, w.policy
    Rev = Annotated[Principal, Depends(w.service.require("reviewer"))]

    @api.get("/v1/reviewer/assignments", response_model=list[Assignment], tags=["reviewer"])
    async def my_assignments(principal: Rev) -> list[Assignment]:
        return await store.for_reviewer(principal.subject)

    @api.post(
        "/v1/reviewer/assignments/{assignment_id}/accept",
        response_model=Assignment,
        tags=["reviewer"],
        responses=errors(409),
    )
    async def accept_assignment(assignment_id: str, principal: Rev) -> Assignment:
        a, outbox = await handlers.respond(
            store, policy, w.clock.now(), assignment_id, principal.subject, "accept"
        )
        w.emit(outbox)
        return a

    @api.post(
        "/v1/reviewer/assignments/{assignment_id}/decline",
        response_model=Assignment,
        tags=["reviewer"],
        responses=errors(409),
    )
    async def decline_assignment(assignment_id: str, body: Decline, principal: Rev) -> Assignment:
        """Decline: the assignment goes to the next eligible reviewer at once."""
        a, outbox = await handlers.respond(
            store,
            policy,
            w.clock.now(),
            assignment_id,
            principal.subject,
            "decline",
            body.reason,
            reoffer_batch=w.settings.reoffer_batch,
        )
        w.emit(outbox)
        return a


# ---------------------------------------------------------------- operations


def _operations_routes(w: Wiring) -> None:
    api, store, policy = w.service.api, w.store, w.policy
    Ops = Annotated[Principal, Depends(w.service.require("operations"))]

    @api.get(
        "/v1/cases/{case_id}/assignments", response_model=list[Assignment], tags=["operations"]
    )
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
            store,
            policy,
            w.clock.now(),
            case_id,
            body.kind,
            body.reason,
            by,
            resume=action == "resume",
        )

    @api.post(
        "/v1/cases/{case_id}/assignments/{subspecialty}/reassign",
        response_model=Assignment,
        tags=["operations"],
        responses=errors(409),
    )
    async def reassign(
        case_id: str, subspecialty: Subspecialty, body: Reassign, principal: Ops
    ) -> Assignment:
        a, outbox = await handlers.reassign_by_operations(
            store,
            policy,
            w.clock.now(),
            slot_id_for(case_id, subspecialty),
            body.reason,
            f"operations:{principal.subject}",
            reoffer_batch=w.settings.reoffer_batch,
        )
        w.emit(outbox)
        return a


# ---------------------------------------------------------------- dashboard


class ReportedCache:
    """The reported-work summary, recomputed at most every `max_age` seconds by the
    timer loop: it reads every assignment reported in the turnaround window, so at
    the loop's pace it would grow to the largest read the service makes, for figures
    (90-day percentiles) that move slowly. An operator's request is always fresh.
    (The age is measured on the monotonic clock: it paces work, it is not domain time.)"""

    def __init__(self, store: AssignmentStore, window: timedelta, max_age: float) -> None:
        self.store = store
        self.window = window
        self.max_age = max_age
        self.value: ReportedSummary | None = None
        self.taken_at = 0.0

    async def get(self, now: datetime, *, fresh: bool) -> ReportedSummary:
        age = time.monotonic() - self.taken_at
        if fresh or self.value is None or age >= self.max_age:
            self.value = await self.store.reported_summary(now - self.window)
            self.taken_at = time.monotonic()
        return self.value


def _dashboard(w: Wiring) -> None:
    api, store, policy, settings = w.service.api, w.store, w.policy, w.settings
    Ops = Annotated[Principal, Depends(w.service.require("operations"))]
    reported_cache = ReportedCache(
        store, timedelta(days=settings.turnaround_window_days), settings.reported_refresh_seconds
    )

    async def snapshot(*, fresh: bool = True, open_: list[Assignment] | None = None) -> Dashboard:
        now = w.clock.now()
        with quiet():
            if open_ is None:
                open_ = await store.open_assignments()
            reported = await reported_cache.get(now, fresh=fresh)
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

    @w.service.background
    async def timer_loop() -> None:
        """Fire due timers, re-offer waiting assignments and refresh the metrics
        snapshot, forever."""
        while True:
            try:
                with quiet():
                    w.emit(
                        await handlers.fire_timers(
                            store, policy, w.clock.now(), reoffer_batch=settings.reoffer_batch
                        )
                    )
                # One read of the open assignments for both (the pass's largest read).
                with quiet():
                    open_ = await store.open_assignments()
                await snapshot(fresh=False, open_=open_)
                await w.ops.board(Filters(), open_)  # the operations gauges
            except Exception as exc:  # database or broker down: next pass retries
                log.warning("timer pass failed: %s", type(exc).__name__)
            TICKS.inc()
            await asyncio.sleep(settings.timer_poll_seconds)


default_service = ProcessService(create_service)
__getattr__ = default_service.module_attribute
