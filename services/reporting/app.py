"""reporting's wiring: the reviewer API (assignments, drafts, opinions, addenda),
the partner API (signed report as JSON, FHIR and PDF), the published keys and
verification, and the case.assigned / case.reassigned subscribers.

`create_service(settings, clock)` builds one reporting process; `python -m
services.reporting` runs it. The module names `service`, `api` and `app` (the
AsyncAPI app) are built on first use, so tests build their own service with
their own settings and clock, and importing this module builds nothing.
"""

# No `from __future__ import annotations`: FastAPI resolves the routes' dependency
# annotations at definition time, and they name closures of create_service.

from datetime import datetime
from typing import Annotated, Any

from fastapi import Body, Depends
from fastapi.responses import Response
from pydantic import BaseModel

from services.reporting import fhir, handlers, render, signing
from services.reporting.domain import Addendum, OpinionDraft
from services.reporting.handlers import Reporting, Signer
from services.reporting.keys import KeyRing
from services.reporting.settings import ReportingSettings
from services.reporting.store import ReportingStore, StoredAddendum, StoredReport
from shared.auth import Principal
from shared.clock import SYSTEM_CLOCK, Clock
from shared.envelope import EventMeta
from shared.events import (
    PARTNER_TOPICS,
    CaseAccepted,
    CaseAssigned,
    CaseReassigned,
    ImageLink,
    RecordsComplete,
    partner_topic,
)
from shared.http import FhirJSONResponse, binary_response, errors, fhir_response
from shared.runtime import ProcessService, Service

JWKS_PATH = "/.well-known/jwks.json"


class OpenAssignment(BaseModel):
    case_id: str
    assignment_id: str
    subspecialty: str
    due_at: datetime
    # The case's studies, each a link to the review PACS viewer.
    images: list[ImageLink] = []


class Submitted(BaseModel):
    report_id: str


class AddendumCreated(BaseModel):
    addendum_id: str


class DraftSaved(BaseModel):
    missing: list[dict[str, str]]


class Verification(BaseModel):
    document: dict[str, Any]
    signature: signing.Signature


class VerificationResult(BaseModel):
    valid: bool
    problems: list[str]


def create_service(
    settings: ReportingSettings | None = None, clock: Clock | None = None
) -> Service:
    """One reporting process: store, signer, routes and subscribers on a new Service."""
    settings = settings or ReportingSettings()
    service = Service(
        settings,
        title="Second-opinion reporting",
        description="Reviewers submit structured, signed opinions; partners fetch and verify them.",
        clock=clock or SYSTEM_CLOCK,
    )
    store = ReportingStore(
        service.collection("assignments"),
        service.collection("reports", outbox=True),
        service.collection("addenda", outbox=True),
        service.collection("cases"),
    )
    service.on_startup(store.create_indexes)
    # report.ready is also published on each tenant's partner channel (shared.events).
    service.extra_topics.extend(
        partner_topic(tenant, topic)
        for tenant in service.credentials.tenants("integrator", "partner")
        for topic in PARTNER_TOPICS
    )
    # Verification is for anyone holding a report (a partner, a clinician, an auditor).
    # So is the CodeSystem the FHIR reports' conclusion codes come from.
    service.public("/v1/verify", "/v1/keys", "/.well-known", "/fhir/CodeSystem")
    ctx = Reporting(store, Signer(KeyRing(settings.key_dir), settings.base_url), service.clock)
    _reviewer_routes(service, ctx)
    _partner_routes(service, ctx)
    _verification_routes(service, ctx)
    _subscribers(service, ctx)
    return service


# ---------------------------------------------------------------- reviewers


def _reviewer_routes(service: Service, ctx: Reporting) -> None:
    api = service.api
    reviewer = service.require("reviewer")

    @api.get("/v1/reviewer/assignments", response_model=list[OpenAssignment], tags=["reviewer"])
    async def my_assignments(
        principal: Annotated[Principal, Depends(reviewer)],
    ) -> list[OpenAssignment]:
        copies = await handlers.open_assignments(ctx, principal.subject)
        return [
            OpenAssignment(
                case_id=c.case_id,
                assignment_id=c.assignment_id,
                subspecialty=c.subspecialty,
                due_at=c.due_at,
                images=c.images,
            )
            for c in copies
        ]

    @api.put(
        "/v1/assignments/{assignment_id}/draft",
        response_model=DraftSaved,
        tags=["reviewer"],
        responses=errors(409),
    )
    async def save_draft(
        assignment_id: str,
        draft: OpinionDraft,
        principal: Annotated[Principal, Depends(reviewer)],
    ) -> DraftSaved:
        """Save an unfinished opinion; the answer lists the parts still missing."""
        gaps = await handlers.save_draft(ctx, assignment_id, principal.subject, draft)
        return DraftSaved(missing=[{"loc": f"body.{f}", "msg": m} for f, m in gaps])

    @api.post(
        "/v1/assignments/{assignment_id}/opinion",
        response_model=Submitted,
        status_code=201,
        tags=["reviewer"],
        responses=errors(409),
    )
    async def submit_opinion(
        assignment_id: str,
        principal: Annotated[Principal, Depends(reviewer)],
        opinion: Annotated[OpinionDraft | None, Body()] = None,
    ) -> Submitted:
        """Sign and submit the opinion (the body, or the saved draft when there is none).
        Refused with 422 naming every missing part."""
        report_id, outbox = await handlers.submit_opinion(
            ctx, assignment_id, principal.subject, opinion
        )
        service.emitted(outbox)
        return Submitted(report_id=report_id)

    @api.post(
        "/v1/cases/{case_id}/opinion",
        response_model=Submitted,
        status_code=201,
        tags=["reviewer"],
        responses=errors(409),
    )
    async def submit_case_opinion(
        case_id: str, opinion: OpinionDraft, principal: Annotated[Principal, Depends(reviewer)]
    ) -> Submitted:
        """The same, addressed by case when the reviewer holds one assignment on it."""
        assignment_id = await handlers.assignment_for_case(ctx, case_id, principal.subject)
        report_id, outbox = await handlers.submit_opinion(
            ctx, assignment_id, principal.subject, opinion
        )
        service.emitted(outbox)
        return Submitted(report_id=report_id)

    @api.post(
        "/v1/reports/{report_id}/addenda",
        response_model=AddendumCreated,
        status_code=201,
        tags=["reviewer"],
        responses=errors(409),
    )
    async def add_addendum(
        report_id: str, addendum: Addendum, principal: Annotated[Principal, Depends(reviewer)]
    ) -> AddendumCreated:
        """Answer a follow-up question: a new signed addendum; the report is never edited."""
        addendum_id, outbox = await handlers.add_addendum(
            ctx, report_id, principal.subject, addendum
        )
        service.emitted(outbox)
        return AddendumCreated(addendum_id=addendum_id)


# ---------------------------------------------------------------- partners


def _signed(record: StoredReport | StoredAddendum) -> tuple[dict[str, Any], signing.Signature]:
    return record.document, record.signature


def _partner_routes(service: Service, ctx: Reporting) -> None:
    api = service.api
    reader = service.require("partner", "reviewer", "service")
    base_url = ctx.signer.base_url

    def pdf_url(report_id: str) -> str:
        return ctx.signer.links(report_id).pdf

    async def readable(report_id: str, p: Principal) -> tuple[StoredReport, list[StoredAddendum]]:
        return await handlers.readable_report(ctx, report_id, p.role, p.tenant_id, p.subject)

    @api.get("/v1/reports/{report_id}", tags=["reports"])
    async def get_report(
        report_id: str, principal: Annotated[Principal, Depends(reader)]
    ) -> dict[str, Any]:
        """The signed canonical report, its signature, its signed addenda and links."""
        report, addenda = await readable(report_id, principal)
        return {
            "report": report.document,
            "signature": report.signature.model_dump(mode="json"),
            "addenda": [
                {"addendum": a.document, "signature": a.signature.model_dump(mode="json")}
                for a in addenda
            ],
            "links": ctx.signer.links(report_id).model_dump(),
        }

    @api.get("/v1/reports/{report_id}/signature", tags=["reports"])
    async def get_signature(
        report_id: str, principal: Annotated[Principal, Depends(reader)]
    ) -> dict[str, Any]:
        """The detached signatures and where the verification keys are published."""
        report, addenda = await readable(report_id, principal)
        return {
            "report": report.signature.model_dump(mode="json"),
            "addenda": {a.addendum_id: a.signature.model_dump(mode="json") for a in addenda},
            "keys": f"{base_url}{JWKS_PATH}",
        }

    @api.get(
        "/v1/reports/{report_id}/fhir",
        tags=["reports"],
        response_class=FhirJSONResponse,
        responses=fhir_response("A FHIR R4 DiagnosticReport"),
    )
    async def get_fhir(
        report_id: str, principal: Annotated[Principal, Depends(reader)]
    ) -> Response:
        """The report as a FHIR R4 DiagnosticReport (signature as an extension)."""
        report, addenda = await readable(report_id, principal)
        out = render.render(*_signed(report), [_signed(a) for a in addenda], pdf_url(report_id))
        return FhirJSONResponse(out.fhir)

    @api.get(
        "/v1/reports/{report_id}/pdf",
        tags=["reports"],
        response_class=Response,
        responses=binary_response("application/pdf", "The signed report as a PDF"),
    )
    async def get_pdf(report_id: str, principal: Annotated[Principal, Depends(reader)]) -> Response:
        """The report as a PDF/A-3 for the treating physician (the FHIR report attached)."""
        report, addenda = await readable(report_id, principal)
        out = render.render(*_signed(report), [_signed(a) for a in addenda], pdf_url(report_id))
        return Response(out.pdf, media_type="application/pdf")


# ---------------------------------------------------------------- verification


def _verification_routes(service: Service, ctx: Reporting) -> None:
    api = service.api
    keys = ctx.signer.keys

    @api.get(JWKS_PATH, tags=["verification"])
    async def jwks() -> dict[str, Any]:
        """The reviewers' public Ed25519 verification keys as a JWK set (RFC 7517):
        each one's current key and rotated-out keys until they are retired. Public."""
        return {"keys": keys.public_jwks()}

    @api.get("/v1/keys", tags=["verification"])
    async def published_keys() -> dict[str, Any]:
        """The same JWK set as /.well-known/jwks.json (kept for existing partners)."""
        return {"keys": keys.public_jwks()}

    @api.get(
        "/fhir/CodeSystem/concordance",
        tags=["verification"],
        response_class=FhirJSONResponse,
        responses=fhir_response("The FHIR R4 CodeSystem of the concordance codes"),
    )
    async def concordance_codesystem() -> Response:
        """The FHIR CodeSystem of DiagnosticReport.conclusionCode (docs/fhir). Public."""
        return FhirJSONResponse(fhir.concordance_codesystem())

    @api.post("/v1/verify", response_model=VerificationResult, tags=["verification"])
    async def verify(body: Verification) -> VerificationResult:
        """Check a document against its signature and the published keys."""
        problems = signing.verification_problems(body.document, body.signature, keys.public_jwks())
        return VerificationResult(valid=not problems, problems=problems)


# ---------------------------------------------------------------- subscribers


def _subscribers(service: Service, ctx: Reporting) -> None:
    # What the report names about the case; both arrive long before a reviewer submits.
    @service.consumer.on(CaseAccepted, follower=True)
    async def on_case_accepted(event: CaseAccepted, meta: EventMeta) -> None:
        await handlers.record_case_accepted(ctx, event, meta)

    @service.consumer.on(RecordsComplete, follower=True)
    async def on_records_complete(event: RecordsComplete, meta: EventMeta) -> None:
        await handlers.record_records_complete(ctx, event, meta)

    @service.consumer.on(CaseAssigned)
    async def on_case_assigned(event: CaseAssigned, meta: EventMeta) -> None:
        await handlers.record_assignment(ctx, event, meta)

    @service.consumer.on(CaseReassigned, follower=True)  # withdraws the previous offer
    async def on_case_reassigned(event: CaseReassigned, meta: EventMeta) -> None:
        await handlers.record_reassignment(ctx, event)


default_service = ProcessService(create_service)
__getattr__ = default_service.module_attribute
