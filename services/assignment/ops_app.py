"""The operations view's wiring (docs/operations.md): the followers that feed
`ops_cases`, its JSON API, its pages, the Prometheus gauges and the operations
actions proxied to the services that own them.

Every route needs an operations key. The actions (release a held case, resend a
dead-lettered delivery) are calls to the owning service's own API with the
operator's own key, so intake and notify authorise and audit the operator
themselves; assignment only forwards to the configured service URLs. Reassign
is assignment's own (`domain.reassign_by_operator`).
"""

# No `from __future__ import annotations`: FastAPI resolves the routes' dependency
# annotations at definition time.

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import httpx
from fastapi import Depends, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pydantic import BaseModel, Field

from services.assignment import domain, handlers, operations
from services.assignment.domain import Assignment, SlaPolicy, slot_id_for
from services.assignment.metrics import count_emitted
from services.assignment.operations import (
    Capacity,
    Filters,
    LiveSlot,
    OpsCase,
    OpsRow,
    Trends,
)
from services.assignment.ops_store import OpsStore
from services.assignment.settings import AssignmentSettings
from services.assignment.store import AssignmentStore
from services.assignment.traces import FileTraces, SpanRow, TempoTraces, TraceSource, trace_id_of
from shared.auth import Principal
from shared.envelope import EventMeta
from shared.errors import NotFound
from shared.events import (
    CaseAccepted,
    CaseAssigned,
    CaseReassigned,
    CaseRejected,
    CaseStatusChanged,
    CaseUnassignable,
    NotificationDelivered,
    RecordsProgress,
    RecordsRequested,
    ReportReady,
    SlaBreached,
    SlaWarning,
)
from shared.http import PROBLEM, errors
from shared.runtime import Service
from shared.telemetry import current_traceparent, quiet
from shared.vocabulary import Subspecialty

WEB = Path(__file__).parent / "web"
STATIC = Path(__file__).parent / "static"
# Topics only the operations view follows; records.complete / records.incomplete /
# report.submitted are folded in by the subscribers assignment already has.
FOLLOWED = (
    CaseStatusChanged,
    CaseAccepted,
    CaseRejected,
    RecordsRequested,
    RecordsProgress,
    CaseAssigned,
    CaseReassigned,
    CaseUnassignable,
    SlaWarning,
    SlaBreached,
    ReportReady,
    NotificationDelivered,
)


class Board(BaseModel):
    generated_at: datetime
    timezone: str
    counts: dict[str, int]
    cases: list[OpsRow]
    capacity: list[Capacity]


class Journey(BaseModel):
    case: OpsCase
    row: OpsRow
    assignments: list[LiveSlot]
    trace_id: str
    spans: list[SpanRow]
    links: dict[str, str]


class OpsReassign(BaseModel):
    subspecialty: Subspecialty = Field(description="Which open assignment of the case")
    reason: str = Field(min_length=1, max_length=500, description="No patient details, please")
    reviewer_id: str | None = Field(
        default=None,
        max_length=128,
        description="Hand it to this reviewer (who must be eligible, else 409); "
        "none: the next eligible reviewer",
    )


class Release(BaseModel):
    note: str = Field(default="", max_length=1000, description="No patient details, please")


@dataclass
class OpsView:
    service: Service
    settings: AssignmentSettings
    policy: SlaPolicy
    store: AssignmentStore
    ops: OpsStore
    traces: TraceSource
    http: httpx.AsyncClient

    @property
    def stall_after(self) -> timedelta:
        return timedelta(hours=self.settings.ops_stall_hours)

    async def record(self, event: Any, meta: EventMeta) -> None:
        """Fold a consumed event into its case (once per event id)."""
        trace = trace_id_of(current_traceparent())
        await self.ops.record(event, meta.event_id, self.service.clock.now(), trace)

    def live(self, a: Assignment, now: datetime) -> LiveSlot:
        return LiveSlot(
            subspecialty=a.subspecialty,
            state=a.state,
            sla=domain.sla_status(a, self.policy, now),
            reviewer_id=a.reviewer_id,
            due_at=a.due_at,
            reason=a.reason,
        )

    async def board(self, filters: Filters, open_: list[Assignment] | None = None) -> Board:
        """The board; `open_`: the open assignments when the caller has just read them."""
        now = self.service.clock.now()
        with quiet():
            cases = await self.ops.open_cases()
            if open_ is None:
                open_ = await self.store.open_assignments()
            roster, load = await self.store.roster(), await self.store.active_load()
        by_case: dict[str, list[LiveSlot]] = defaultdict(list)
        for a in open_:
            by_case[a.case_id].append(self.live(a, now))
        tz = self.settings.ops_timezone
        rows = [operations.row(c, by_case[c.case_id], now, self.stall_after, tz) for c in cases]
        rows = sorted((r for r in rows if r.state != "done"), key=operations.priority)
        cap = operations.capacity(rows, roster, load)
        OPS_COLLECTOR.rows, OPS_COLLECTOR.capacity = rows, cap
        shown = [r for r in rows if operations.matches(r, filters)]
        return Board(
            generated_at=now,
            timezone=tz,
            counts=dict(Counter(r.state for r in shown)),
            cases=shown,
            capacity=cap,
        )

    async def journey(self, case_id: str) -> Journey:
        now = self.service.clock.now()
        case = await self.ops.get(case_id)
        if case is None:
            raise NotFound(f"no case {case_id} in the operations view")
        found = await self.store.find({"case_id": case_id})
        live = [self.live(a, now) for a in found if a.state in domain.OPEN_STATES]
        row = operations.row(case, live, now, self.stall_after, self.settings.ops_timezone)
        spans = await self.traces.spans(case.trace_id) if case.trace_id else []
        links = {
            "records_manifest": f"{self.settings.records_fetch_url}/v1/cases/{case_id}/manifest",
            "case_status": f"{self.settings.intake_url}/v1/cases/{case_id}",
        }
        if case.report_links.get("report"):
            links["report"] = self.settings.reporting_url + case.report_links["report"]
        return Journey(
            case=case,
            row=row,
            assignments=live,
            trace_id=case.trace_id,
            spans=spans,
            links=links,
        )

    async def reassign(self, case_id: str, body: OpsReassign, by: str) -> LiveSlot:
        """assignment's own action: a thin call of the domain transition."""
        now = self.service.clock.now()
        a, outbox = await handlers.reassign_by_operations(
            self.store,
            self.policy,
            now,
            slot_id_for(case_id, body.subspecialty),
            body.reason,
            by,
            to=body.reviewer_id,
            reoffer_batch=self.settings.reoffer_batch,
        )
        count_emitted(outbox)
        self.service.emitted(outbox)
        return self.live(a, now)

    async def forward(self, url: str, request: Request, body: dict[str, Any]) -> JSONResponse:
        """Call the owning service with the operator's own key; pass its answer on
        (a refusal stays problem+json, as the owning service wrote it)."""
        auth = request.headers.get("authorization", "")
        try:
            resp = await self.http.post(url, json=body, headers={"Authorization": auth})
        except httpx.HTTPError as exc:
            return JSONResponse(
                {
                    "type": "about:blank",
                    "title": "The owning service could not be reached",
                    "status": 502,
                    "detail": type(exc).__name__,
                },
                status_code=502,
                media_type=PROBLEM,
            )
        try:
            content = resp.json()
        except ValueError:
            content = {"detail": resp.text[:500]}
        media_type = PROBLEM if resp.status_code >= 400 else "application/json"
        return JSONResponse(content, status_code=resp.status_code, media_type=media_type)


def wire_operations(
    service: Service, settings: AssignmentSettings, policy: SlaPolicy, store: AssignmentStore
) -> OpsView:
    http = httpx.AsyncClient(timeout=10, follow_redirects=False)
    traces: TraceSource = (
        TempoTraces(settings.trace_query_url, http)
        if settings.trace_query_url
        else FileTraces(settings.trace_dir)
    )
    view = OpsView(
        service, settings, policy, store, OpsStore(service.collection("ops_cases")), traces, http
    )
    service.on_startup(view.ops.create_indexes)
    # chart.js from npm (services/assignment/web, `make install`), served from here.
    vendor = WEB / "node_modules" / "chart.js" / "dist"
    if vendor.exists():
        service.api.mount("/dashboard/vendor", StaticFiles(directory=vendor), name="ops-vendor")
    for model in FOLLOWED:
        _follow(view, model)
    _routes(view)
    return view


def _follow(view: OpsView, model: type[BaseModel]) -> None:
    async def on_event(event: Any, meta: EventMeta) -> None:
        await view.record(event, meta)

    on_event.__name__ = f"ops_on_{model.topic.replace('.', '_')}"  # type: ignore[attr-defined]
    view.service.consumer.on(model, follower=True)(on_event)


def _routes(view: OpsView) -> None:
    api, settings = view.service.api, view.settings
    Ops = Annotated[Principal, Depends(view.service.require("operations"))]

    @api.get("/v1/ops/cases", response_model=Board, tags=["operations view"])
    async def ops_cases(
        _: Ops,
        tenant: str = "",
        stage: str = "",
        state: str = "",
        specialty: str = "",
        urgency: str = "",
        q: Annotated[str, Query(max_length=128)] = "",
    ) -> Board:
        """Every open case whatever its stage, what needs a person first; filters."""
        f = Filters(
            tenant=tenant, stage=stage, state=state, specialty=specialty, urgency=urgency, q=q
        )
        return await view.board(f)

    @api.get("/v1/ops/trends", response_model=Trends, tags=["operations view"])
    async def ops_trends(_: Ops, days: Annotated[int, Query(ge=1, le=366)] = 0) -> Trends:
        """Volumes, breaches and median turnaround per day, subspecialty and tier."""
        now = view.service.clock.now()
        days = days or settings.ops_trend_days
        with quiet():
            cases = await view.ops.since(now - timedelta(days=days))
        return operations.trends(cases, now, days)

    @api.get("/v1/ops/cases/{case_id}", response_model=Journey, tags=["operations view"])
    async def ops_case(case_id: str, _: Ops) -> Journey:
        """One case's journey: its timeline across the services and its trace's spans."""
        return await view.journey(case_id)

    @api.post(
        "/v1/ops/cases/{case_id}/release", tags=["operations view"], responses=errors(409, 502)
    )
    async def ops_release(
        case_id: Annotated[str, PathParam(pattern=FORWARDED_ID)],
        body: Release,
        request: Request,
        _: Ops,
    ) -> JSONResponse:
        """Release a case held for human review (intake's POST /v1/cases/{id}/review)."""
        url = f"{settings.intake_url}/v1/cases/{case_id}/review"
        return await view.forward(url, request, {"release": True, "note": body.note})

    @api.post(
        "/v1/ops/cases/{case_id}/reassign",
        response_model=LiveSlot,
        tags=["operations view"],
        responses=errors(409),
    )
    async def ops_reassign(case_id: str, body: OpsReassign, principal: Ops) -> LiveSlot:
        """Hand an open assignment of the case to another reviewer, with a reason
        (recorded in the assignment's history and the audit trail)."""
        return await view.reassign(case_id, body, f"operations:{principal.subject}")

    @api.post(
        "/v1/ops/cases/{case_id}/deliveries/{delivery_id}/resend",
        tags=["operations view"],
        responses=errors(409, 502),
    )
    async def ops_resend(
        case_id: Annotated[str, PathParam(pattern=FORWARDED_ID)],
        delivery_id: Annotated[str, PathParam(pattern=FORWARDED_ID)],
        request: Request,
        _: Ops,
    ) -> JSONResponse:
        """Resend a dead-lettered delivery (notify's operations resend)."""
        case = await view.ops.get(case_id)
        if case is None or delivery_id not in case.delivery_failed:
            raise NotFound(f"no dead-lettered delivery {delivery_id} of case {case_id}")
        url = f"{settings.notify_url}/v1/operations/deliveries/{delivery_id}/resend"
        return await view.forward(f"{url}?tenant_id={case.tenant_id}", request, {})

    @api.get("/dashboard/ops", include_in_schema=False)
    async def ops_page() -> FileResponse:
        return FileResponse(STATIC / "ops.html")

    @api.get("/dashboard/case", include_in_schema=False)
    async def case_page() -> FileResponse:
        return FileResponse(STATIC / "case.html")


# An id forwarded into another service's URL path: one plain path segment.
FORWARDED_ID = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"


# ---------------------------------------------------------------- Prometheus


class OpsCollector(Collector):
    """The operations view's states and capacity as gauges (aggregate labels only:
    state, stage, tenant, subspecialty, jurisdiction; never a case id)."""

    def __init__(self) -> None:
        self.rows: list[OpsRow] | None = None
        self.capacity: list[Capacity] = []

    def collect(self) -> Iterable[Metric]:
        if self.rows is None:
            return
        cases = GaugeMetricFamily(
            "assignment_ops_cases",
            "Open cases by operations state (as on the dashboard), stage and tenant",
            labels=["state", "stage", "tenant"],
        )
        for (state, stage, tenant), n in sorted(
            Counter((r.state, r.stage, r.tenant_id) for r in self.rows).items()
        ):
            cases.add_metric([state, stage, tenant], n)
        yield cases
        labels = ["subspecialty", "jurisdiction"]
        demand = GaugeMetricFamily(
            "assignment_specialty_demand", "Open cases not yet reported", labels=labels
        )
        eligible = GaugeMetricFamily(
            "assignment_specialty_eligible_reviewers",
            "Active reviewers of the subspecialty licensed in the jurisdiction",
            labels=labels,
        )
        free = GaugeMetricFamily(
            "assignment_specialty_free_capacity", "Free places of those reviewers", labels=labels
        )
        for c in self.capacity:
            demand.add_metric([c.subspecialty, c.jurisdiction], c.demand)
            eligible.add_metric([c.subspecialty, c.jurisdiction], c.eligible_reviewers)
            free.add_metric([c.subspecialty, c.jurisdiction], c.free_capacity)
        yield demand
        yield eligible
        yield free


OPS_COLLECTOR = OpsCollector()
REGISTRY.register(OPS_COLLECTOR)
