"""Intake's wiring: the HTTP API for integrators (native JSON and FHIR R4 cases,
release authorizations, status), the `case.submitted` subscriber, and the
subscribers that follow a case downstream for the status view.

`create_service(settings)` builds one intake process; `python -m services.intake`
runs it. The module names `service`, `api` and `app` (the AsyncAPI app for
`faststream docs gen services.intake.app:app`) are built on first use, so tests
can build their own service with their own settings.
"""

# No `from __future__ import annotations`: FastAPI resolves the routes' dependency
# annotations at definition time, and they name closures of create_service.

import asyncio
from typing import Annotated, Any, ClassVar, TypeVar

from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.intake import fhir, fhir_out, handlers, progress
from services.intake.clinical import nlp
from services.intake.documents import CaseDocument
from services.intake.settings import IntakeSettings
from services.intake.store import IntakeStore
from services.intake.telemetry import IntegratorKeyRedaction
from shared.auth import Principal
from shared.clock import SYSTEM_CLOCK, Clock
from shared.envelope import EventMeta
from shared.errors import InvalidInput, PermanentError
from shared.events import CaseSubmission
from shared.http import FhirJSONResponse, errors, fhir_response
from shared.providers import ProviderRegistry, load_registry
from shared.runtime import ProcessService, Service

JSON_TYPES = ("application/json", "application/fhir+json")
# Cases decoded and validated at once, each in a worker thread: enough to use the
# cores, few enough that the event loop (health checks, status reads, consumers)
# keeps its share of the interpreter while large Bundles are parsed.
PARSE_CONCURRENCY = 2
Body = TypeVar("Body", bound=BaseModel)


class PayloadTooLarge(PermanentError):
    status_code = 413
    title = "Payload too large"


class UnsupportedMediaType(PermanentError):
    status_code = 415
    title = "Unsupported media type"


class CaseStatus(BaseModel):
    """What an integrator sees of its case: the stage reached, what it waits for and why
    (records still missing, the assignment's state, the report's delivery), and how
    intake triaged and routed it: no other service's API is needed to follow a case."""

    case_id: str
    external_id: str
    stage: str
    waiting_reasons: list[str] = Field(
        default=[], description="What the case waits for, in plain words"
    )
    waiting_on_authorization: list[str] = []
    hold_reason: str = ""
    records: progress.RecordsView = progress.RecordsView()
    assignment: progress.AssignmentView = progress.AssignmentView()
    report_id: str = ""
    delivery: dict[str, progress.AudienceDelivery] = Field(
        default={},
        description="Per audience (partner, treating_clinician): the report's delivery "
        "(not_sent, pending, delivered, failed = dead letter) and its time, and the latest "
        "notifications sent to it",
    )
    delivery_audiences: list[str] = Field(
        default=[], description="The audiences the report must reach before `delivered`"
    )
    urgency: str = "routine"
    urgency_reason: str = ""
    subspecialties: list[dict[str, str]] = []
    # What the routing was read from: concept, words (or code), source, context, cue.
    findings: list[dict[str, str]] = []
    # Needed reviewers the service tier does not cover, routed all the same.
    beyond_tier: list[dict[str, str]] = []
    # Each change of the reviewers once the images were known: when, what the images
    # were, the reviewers added and removed, each with its reason.
    reroutes: list[dict[str, Any]] = []
    triage: list[dict[str, str]] = []
    second_opinion_value: str = "standard"
    earlier_case_ids: list[str] = []
    history: list[dict[str, Any]] = []


class SubmitResponse(BaseModel):
    case_id: str
    stage: str
    created: bool


class ReleaseAuthorization(BaseModel):
    """The patient's authorization to obtain records from one listed provider."""

    model_config = ConfigDict(extra="forbid")
    provider_id: str = Field(min_length=1, max_length=64)
    reference: str = Field(
        default="", max_length=200, description="Where the signed authorization is kept"
    )


class HoldDecision(BaseModel):
    """Operations' decision on a case held for human review."""

    model_config = ConfigDict(extra="forbid")
    release: bool
    note: str = Field(default="", max_length=1000)


class CaseSubmittedEnvelope(BaseModel):
    """`case.submitted` as received: `submission` (native JSON) or `fhir` (a FHIR R4
    Bundle or ServiceRequest). The case is validated by the handler so that a bad
    case becomes a `case.rejected` with field errors, not only a dead letter."""

    model_config = ConfigDict(extra="forbid")
    topic: ClassVar[str] = "case.submitted"
    tenant_id: str = Field(min_length=1, max_length=64)
    submission: dict[str, Any] | None = None
    fhir: dict[str, Any] | None = None

    @classmethod
    def ce_type(cls) -> str:
        return "org.secondopinion.case.submitted.v1"


def status_of(case: CaseDocument, settings: IntakeSettings) -> CaseStatus:
    policy = settings.delivery_policy_for(case.tenant_id)
    required = policy.required(bool(case.submission.treating_clinician_email))
    p = case.progress
    return CaseStatus(
        case_id=case.id,
        external_id=case.external_id,
        stage=case.stage,
        waiting_reasons=handlers.waiting_for(case, case.stage, required),
        waiting_on_authorization=case.waiting_on_authorization,
        hold_reason=case.hold_reason,
        records=p.records,
        assignment=p.assignment,
        report_id=p.report_id,
        delivery=p.delivery,
        delivery_audiences=list(required),
        urgency=case.urgency.value,
        urgency_reason=case.urgency_reason,
        subspecialties=[{"name": s.name.value, "reason": s.reason} for s in case.subspecialties],
        findings=[f.model_dump() for f in case.findings],
        beyond_tier=[{"name": s.name.value, "reason": s.reason} for s in case.beyond_tier],
        reroutes=[r.model_dump(mode="json") for r in case.reroutes],
        triage=[t.model_dump() for t in case.triage],
        second_opinion_value=case.second_opinion_value,
        earlier_case_ids=case.earlier_case_ids,
        history=[h.model_dump(exclude_none=True) for h in case.history],
    )


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused as soon as it passes `limit` (chunked bodies have no length)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_model(request: Request, model: type[Body], limit: int) -> Body:
    """A small JSON body read by the route itself, after the caller is authenticated
    (FastAPI decodes declared bodies before the dependencies run: bad JSON without a
    key was a 422, not a 401)."""
    payload = handlers.decode_json(await read_body(request, limit))
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        errors = [e.model_dump() for e in handlers.field_errors(exc)]
        raise InvalidInput("the request failed validation", errors=errors) from None


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI for a body the route reads itself (`read_model`)."""
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


class FhirRefusal(Exception):
    """A refusal to a FHIR client: answered as an OperationOutcome, not problem+json."""

    def __init__(self, error: PermanentError) -> None:
        super().__init__(error.detail)
        self.error = error


def wants_fhir(request: Request, fhir_only: bool) -> bool:
    """A FHIR client: it sent or asks for `application/fhir+json`, or used the FHIR route."""
    ctype = request.headers.get("content-type", "").lower()
    accept = request.headers.get("accept", "").lower()
    return fhir_only or "application/fhir+json" in ctype or "application/fhir+json" in accept


def media_type(request: Request, fhir_only: bool) -> str:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    allowed = ("application/fhir+json", "application/json") if fhir_only else JSON_TYPES
    if ctype not in allowed:
        raise UnsupportedMediaType(f"content-type must be one of {', '.join(allowed)}")
    return ctype


def _document_bodies(api: FastAPI) -> None:
    """The routes read their body themselves (size cap, authentication first, one
    validation path for native and FHIR); this puts the body schemas back into the
    OpenAPI document."""
    original = api.openapi

    def openapi() -> dict[str, Any]:
        if api.openapi_schema:
            return api.openapi_schema
        schema = original()
        comps = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (CaseSubmission, ReleaseAuthorization, HoldDecision):
            defs = model.model_json_schema(ref_template="#/components/schemas/{model}")
            comps.update(defs.pop("$defs", {}))
            comps[model.__name__] = defs
        return schema

    api.openapi = openapi  # type: ignore[method-assign]


NATIVE_OR_FHIR_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/CaseSubmission"}},
            "application/fhir+json": {
                "schema": {"type": "object", "description": "FHIR R4 Bundle or ServiceRequest"}
            },
        },
    }
}
FHIR_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/fhir+json": {
                "schema": {"type": "object", "description": "FHIR R4 Bundle or ServiceRequest"}
            }
        },
    }
}


# A submission answers 201 (created) or 200 (the same case again, by external_id);
# it reads its body itself: malformed JSON is 400, invalid values 422.
SUBMIT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": SubmitResponse, "description": "The same case was submitted before"},
    **errors(400, 409, 415, fhir=True),
}


def create_service(
    settings: IntakeSettings | None = None,
    clock: Clock = SYSTEM_CLOCK,
    *,
    store: IntakeStore | None = None,
) -> Service:
    """One intake process: routes, subscribers and store on a new Service.

    `clock` is the one source of "now"; `store` replaces the Mongo-backed store
    (in-process tests of the HTTP layer)."""
    settings = settings or IntakeSettings()
    service = Service(
        settings,
        title="Second-opinion intake",
        description="Front door for health-system integrators: submit a case, follow its status.",
        clock=clock,
    )
    service.tracer_provider.add_span_processor(IntegratorKeyRedaction())
    store = store or IntakeStore(
        service.collection("cases", outbox=True), service.collection("rejections", outbox=True)
    )
    service.on_startup(store.create_indexes)
    service.on_startup(_clinical_pipeline)
    registry = load_registry(settings.providers_file) if settings.providers_file else None
    _http_routes(service, store, settings, registry)
    _case_routes(service, store, settings)
    _subscribers(service, store, settings, registry)
    _document_bodies(service.api)
    return service


async def _clinical_pipeline() -> None:
    """Build the clinical NLP pipeline (a few seconds) before the first case, off the
    event loop (services/intake/clinical/nlp.py)."""
    await asyncio.to_thread(nlp.pipeline)


def _http_routes(
    service: Service,
    store: IntakeStore,
    settings: IntakeSettings,
    registry: ProviderRegistry | None,
) -> None:
    api = service.api
    integrator = service.require("integrator")
    parsing = asyncio.Semaphore(PARSE_CONCURRENCY)

    async def submit(
        request: Request, principal: Principal, fhir_only: bool
    ) -> handlers.SubmitResult:
        external_id = ""
        channel: handlers.Channel = "http-fhir" if fhir_only else "http"
        try:
            ctype = media_type(request, fhir_only)
            body = await read_body(request, settings.max_body_bytes)
            as_fhir = fhir_only or fhir.is_fhir_content_type(ctype)
            channel = "http-fhir" if as_fhir else "http"
            # Decoding and validating (a FHIR Bundle above all) is CPU work that grows
            # with the body: done in a worker thread, so /healthz and the consumers
            # are answered meanwhile.
            async with parsing:
                payload = await asyncio.to_thread(handlers.decode_json, body)
                if not as_fhir:
                    external_id = handlers.claimed_external_id(payload)
                validate = handlers.validate_fhir if as_fhir else handlers.validate_native
                submission = await asyncio.to_thread(validate, payload)
            external_id = submission.external_id
            result = await handlers.submit_case(
                store, service.clock, principal.tenant_id, submission, registry, as_fhir
            )
        except PermanentError as exc:
            await handlers.record_http_rejection(
                store, service.clock, principal.tenant_id, channel, external_id, exc
            )
            if wants_fhir(request, fhir_only):
                raise FhirRefusal(exc) from None
            raise
        service.emitted(result.outbox)
        return result

    @api.exception_handler(FhirRefusal)
    async def fhir_refusal(_: Request, exc: Exception) -> Response:
        """A FHIR client is refused with an OperationOutcome listing every issue."""
        assert isinstance(exc, FhirRefusal)
        e = exc.error
        body = fhir_out.operation_outcome(e.status_code, e.title, e.detail, e.errors)
        return JSONResponse(body, status_code=e.status_code, media_type=fhir_out.FHIR_JSON)

    def respond(result: handlers.SubmitResult, response: Response) -> SubmitResponse:
        response.status_code = 201 if result.created else 200
        response.headers["Location"] = f"/v1/cases/{result.case_id}"
        return SubmitResponse(case_id=result.case_id, stage=result.stage, created=result.created)

    @api.post(
        "/v1/cases",
        response_model=SubmitResponse,
        status_code=201,
        tags=["cases"],
        openapi_extra=NATIVE_OR_FHIR_BODY,
        responses=SUBMIT_RESPONSES,
    )
    async def submit_case(
        request: Request, response: Response, principal: Annotated[Principal, Depends(integrator)]
    ) -> SubmitResponse:
        """Submit a case as native JSON (`application/json`) or as a FHIR R4 Bundle /
        ServiceRequest (`application/fhir+json`). `external_id` (FHIR: the
        ServiceRequest identifier) is the idempotency key: resubmitting the same case
        returns it (200), the same key with different content is a 409."""
        return respond(await submit(request, principal, fhir_only=False), response)

    @api.post(
        "/v1/fhir/ServiceRequest",
        response_model=SubmitResponse,
        status_code=201,
        tags=["cases"],
        openapi_extra=FHIR_BODY,
        responses=SUBMIT_RESPONSES,
    )
    async def submit_fhir(
        request: Request, response: Response, principal: Annotated[Principal, Depends(integrator)]
    ) -> SubmitResponse:
        """Submit a FHIR R4 ServiceRequest (alone with contained resources, or in a
        Bundle with its Patient, Consents and supporting records)."""
        return respond(await submit(request, principal, fhir_only=True), response)


def _case_routes(service: Service, store: IntakeStore, settings: IntakeSettings) -> None:
    api = service.api
    integrator = service.require("integrator")
    operations = service.require("operations")

    @api.get("/v1/cases/{case_id}", response_model=CaseStatus, tags=["cases"])
    async def case_status(
        case_id: str, principal: Annotated[Principal, Depends(integrator)]
    ) -> CaseStatus:
        """The stage the case reached (downstream too), and what it waits for and why."""
        return status_of(await handlers.tenant_case(store, principal.tenant_id, case_id), settings)

    @api.get(
        "/v1/fhir/Task/{case_id}",
        tags=["cases"],
        response_class=FhirJSONResponse,
        responses=fhir_response("The case's progress as a FHIR R4 Task"),
    )
    async def case_task(
        case_id: str, principal: Annotated[Principal, Depends(integrator)]
    ) -> Response:
        """The case's progress as a FHIR R4 Task: status and businessStatus from the
        stage, `focus` the integrator's ServiceRequest, `for` the patient, what the case
        waits for in `statusReason`. Another tenant's case is a 404."""
        case = await handlers.tenant_case(store, principal.tenant_id, case_id)
        policy = settings.delivery_policy_for(case.tenant_id)
        required = policy.required(bool(case.submission.treating_clinician_email))
        return FhirJSONResponse(fhir_out.task(case, required))

    @api.get("/v1/cases", response_model=list[CaseStatus], tags=["cases"])
    async def list_cases(
        principal: Annotated[Principal, Depends(integrator)],
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
    ) -> list[CaseStatus]:
        docs = await store.list_for_tenant(principal.tenant_id, limit)
        return [status_of(d, settings) for d in docs]

    @api.post(
        "/v1/cases/{case_id}/authorizations",
        response_model=CaseStatus,
        tags=["cases"],
        openapi_extra=json_body(ReleaseAuthorization),
        responses=errors(400),
    )
    async def authorize_release(
        case_id: str, request: Request, principal: Annotated[Principal, Depends(integrator)]
    ) -> CaseStatus:
        """Record the patient's release for one provider. When every listed provider
        is authorized the case is accepted (once, however often this is repeated)."""
        body = await read_model(request, ReleaseAuthorization, settings.max_body_bytes)
        doc, outbox = await handlers.authorize_release(
            store, service.clock, principal.tenant_id, case_id, body.provider_id, body.reference
        )
        service.emitted(outbox)
        return status_of(doc, settings)

    @api.post(
        "/v1/cases/{case_id}/review",
        response_model=CaseStatus,
        tags=["operations"],
        openapi_extra=json_body(HoldDecision),
        responses=errors(400, 409),
    )
    async def review_hold(
        case_id: str, request: Request, principal: Annotated[Principal, Depends(operations)]
    ) -> CaseStatus:
        """Operations release a case held for human review, or decline it (case.rejected)."""
        body = await read_model(request, HoldDecision, settings.max_body_bytes)
        doc, outbox = await handlers.review_hold(
            store, service.clock, case_id, body.release, body.note, principal.subject
        )
        service.emitted(outbox)
        return status_of(doc, settings)


def _subscribers(
    service: Service,
    store: IntakeStore,
    settings: IntakeSettings,
    registry: ProviderRegistry | None,
) -> None:
    @service.consumer.on(CaseSubmittedEnvelope)
    async def on_case_submitted(event: CaseSubmittedEnvelope, meta: EventMeta) -> None:
        if not service.credentials.has_tenant(event.tenant_id):
            raise PermanentError(f"unknown tenant {event.tenant_id!r}")
        outbox = await handlers.submit_from_kafka(
            store,
            service.clock,
            meta.event_id,
            event.tenant_id,
            event.submission,
            event.fhir,
            registry,
        )
        service.emitted(outbox)

    # The case's progress downstream (services/intake/progress.py): every event that
    # moves a stage or says what the case waits for.
    for model in progress.FOLLOWED:
        _follow(service, store, settings, model)


def _follow(
    service: Service, store: IntakeStore, settings: IntakeSettings, model: type[BaseModel]
) -> None:
    async def on_event(event: Any, meta: EventMeta) -> None:
        outbox = await handlers.follow(
            store, service.clock, event, meta, settings.delivery_policy_for
        )
        service.emitted(outbox)

    on_event.__name__ = f"on_{model.topic.replace('.', '_')}"  # type: ignore[attr-defined]
    service.consumer.on(model, follower=True)(on_event)


default_service = ProcessService(create_service)
__getattr__ = default_service.module_attribute
