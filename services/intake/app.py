"""Intake's wiring: the HTTP API for integrators, the `case.submitted` subscriber
and the subscribers that follow a case downstream for the status view."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from fastapi import Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.intake import handlers
from services.intake.settings import IntakeSettings
from services.intake.store import IntakeStore
from shared.auth import Principal, require
from shared.envelope import EventMeta
from shared.errors import NotFound, PermanentError
from shared.events import (
    CaseAssigned,
    CaseSubmission,
    NotificationDelivered,
    RecordsComplete,
    ReportReady,
    ReportSubmitted,
)
from shared.http import problem
from shared.runtime import Service

settings = IntakeSettings()
service = Service(
    settings,
    title="Second-opinion intake",
    description="Front door for health-system integrators: submit a case, follow its status.",
)
store = IntakeStore(
    service.collection("cases", outbox=True), service.collection("rejections", outbox=True)
)
service.on_startup(store.create_indexes)
integrator = require(service.credentials, "integrator")
api = service.api
app = service.asyncapi


class CaseStatus(BaseModel):
    case_id: str
    external_id: str
    stage: str
    subspecialties: list[dict[str, str]] = []
    waiting_on_authorization: list[str] = []
    history: list[dict[str, Any]] = []


class SubmitResponse(BaseModel):
    case_id: str
    stage: str
    created: bool


@api.middleware("http")
async def limit_body_size(request: Request, call_next: Any) -> Response:
    """Refuse oversize bodies before reading them (a case is JSON, not a DICOM upload)."""
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > settings.max_body_bytes:
        return problem(413, "Payload too large", f"body exceeds {settings.max_body_bytes} bytes")
    response: Response = await call_next(request)
    return response


@api.post("/v1/cases", response_model=SubmitResponse, status_code=201, tags=["cases"])
async def submit_case(
    submission: CaseSubmission,
    response: Response,
    principal: Annotated[Principal, Depends(integrator)],
) -> SubmitResponse:
    """Submit a case. Resubmitting the same `external_id` returns the same case (200)."""
    result = await handlers.submit_case(store, principal.tenant_id, submission)
    service.emitted(result.outbox)
    if not result.created:
        response.status_code = 200
    return SubmitResponse(case_id=result.case_id, stage=result.stage, created=result.created)


@api.get("/v1/cases/{case_id}", response_model=CaseStatus, tags=["cases"])
async def case_status(
    case_id: str, principal: Annotated[Principal, Depends(integrator)]
) -> CaseStatus:
    doc = await store.get(case_id)
    # Another tenant's case is reported as absent, not forbidden: no existence leak.
    if doc is None or doc["tenant_id"] != principal.tenant_id:
        raise NotFound(f"no case {case_id}")
    return CaseStatus(case_id=doc["_id"], **doc)


@api.get("/v1/cases", response_model=list[CaseStatus], tags=["cases"])
async def list_cases(
    principal: Annotated[Principal, Depends(integrator)],
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[CaseStatus]:
    docs = await store.list_for_tenant(principal.tenant_id, limit)
    return [CaseStatus(case_id=d["_id"], **d) for d in docs]


class CaseSubmittedEnvelope(BaseModel):
    """`case.submitted` as received: the submission is validated by the handler so
    that a bad case becomes a `case.rejected` with field errors, not only a dead letter."""

    model_config = ConfigDict(extra="forbid")
    topic: ClassVar[str] = "case.submitted"
    tenant_id: str = Field(min_length=1, max_length=64)
    submission: dict[str, Any]

    @classmethod
    def ce_type(cls) -> str:
        return "org.secondopinion.case.submitted.v1"


@service.consumer.on(CaseSubmittedEnvelope)
async def on_case_submitted(event: CaseSubmittedEnvelope, meta: EventMeta) -> None:
    if not service.credentials.has_tenant(event.tenant_id):
        raise PermanentError(f"unknown tenant {event.tenant_id!r}")
    external_id = str(event.submission.get("external_id", ""))[:128]
    try:
        submission = CaseSubmission.model_validate(event.submission)
    except ValidationError as exc:
        errors = handlers.field_errors(exc, prefix="submission.")
        outbox = await handlers.reject_submission(
            store, meta.event_id, event.tenant_id, external_id, errors
        )
        service.emitted(outbox)
        return
    result = await handlers.submit_case(store, event.tenant_id, submission)
    service.emitted(result.outbox)


STAGE_EVENTS: dict[type[BaseModel], str] = {
    RecordsComplete: "records_complete",
    CaseAssigned: "assigned",
    ReportSubmitted: "report_submitted",
    ReportReady: "report_ready",
    NotificationDelivered: "delivered",
}


def _follow(model: type[BaseModel], stage: str) -> None:
    async def on_stage(event: Any, meta: EventMeta) -> None:
        await handlers.record_stage(store, event.case_id, meta.event_id, stage)

    on_stage.__name__ = f"on_{stage}"
    service.consumer.on(model)(on_stage)


for _model, _stage in STAGE_EVENTS.items():
    _follow(_model, _stage)
