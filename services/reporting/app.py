"""reporting's wiring: the reviewer API, the report API and the case.assigned subscriber."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends
from pydantic import BaseModel

from services.reporting import handlers
from services.reporting.domain import Opinion
from services.reporting.settings import ReportingSettings
from services.reporting.store import ReportingStore
from shared.auth import Principal, require
from shared.envelope import EventMeta
from shared.errors import NotFound
from shared.events import CaseAssigned
from shared.runtime import Service

settings = ReportingSettings()
service = Service(
    settings,
    title="Second-opinion reporting",
    description="Reviewers submit structured opinions; partners fetch signed reports.",
)
store = ReportingStore(
    service.collection("assignments"), service.collection("reports", outbox=True)
)
service.on_startup(store.create_indexes)
reviewer = require(service.credentials, "reviewer")
reader = require(service.credentials, "partner", "reviewer")
api = service.api
app = service.asyncapi
BASE_URL = f"http://{settings.http_host}:{settings.http_port}"


class OpenAssignment(BaseModel):
    case_id: str
    assignment_id: str
    subspecialty: str
    due_at: Any


class Submitted(BaseModel):
    report_id: str


@api.get("/v1/reviewer/assignments", response_model=list[OpenAssignment], tags=["reviewer"])
async def my_assignments(
    principal: Annotated[Principal, Depends(reviewer)],
) -> list[OpenAssignment]:
    docs = await store.open_assignments(principal.subject)
    return [OpenAssignment(case_id=d["_id"], **d) for d in docs]


@api.post(
    "/v1/cases/{case_id}/opinion", response_model=Submitted, status_code=201, tags=["reviewer"]
)
async def submit_opinion(
    case_id: str, opinion: Opinion, principal: Annotated[Principal, Depends(reviewer)]
) -> Submitted:
    report_id, outbox = await handlers.submit_opinion(
        store, case_id, principal.subject, opinion, BASE_URL
    )
    service.emitted(outbox)
    return Submitted(report_id=report_id)


@api.get("/v1/reports/{report_id}", tags=["reports"])
async def get_report(
    report_id: str, principal: Annotated[Principal, Depends(reader)]
) -> dict[str, Any]:
    doc = await store.report(report_id)
    allowed = doc is not None and (
        doc["document"]["tenant_id"] == principal.tenant_id
        or doc["document"]["reviewer_id"] == principal.subject
    )
    if not allowed or doc is None:
        raise NotFound(f"no report {report_id}")
    return {"report": doc["document"], "content_sha256": doc["content_sha256"]}


@service.consumer.on(CaseAssigned)
async def on_case_assigned(event: CaseAssigned, meta: EventMeta) -> None:
    await handlers.record_assignment(store, event, meta)
