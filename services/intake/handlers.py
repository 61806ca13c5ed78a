"""Intake's handlers: a submission in → domain rules → the case stored with its
first event in the outbox. Used by both the HTTP API and the Kafka subscriber,
so a native or FHIR case, over HTTP or Kafka, takes one validation and one
idempotency path."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Literal

from pydantic import ValidationError

from services.intake import domain, fhir, progress, safejson
from services.intake.documents import (
    AuthorizationRecord,
    CaseDocument,
    FindingRecord,
    MentionRecord,
    RejectionDocument,
    ReviewRecord,
    Stage,
    StageRecord,
    SubspecialtyRecord,
)
from services.intake.store import IntakeStore
from shared.clock import Clock
from shared.envelope import EventMeta, OutboxEntry, outbox_entry
from shared.errors import Conflict, InvalidInput, NotFound, PermanentError, RetryableError
from shared.events import (
    CaseRejected,
    CaseStatusChanged,
    CaseSubmission,
    FieldError,
    RecordsComplete,
)
from shared.providers import ProviderRegistry
from shared.telemetry import current_traceparent

MalformedInput = safejson.MalformedInput
Channel = Literal["http", "http-fhir", "kafka"]


@dataclass(frozen=True)
class SubmitResult:
    case_id: str
    stage: str
    created: bool
    outbox: list[OutboxEntry]


def field_errors(exc: ValidationError, prefix: str = "") -> list[FieldError]:
    def loc(parts: tuple[int | str, ...]) -> str:
        joined = ".".join(str(p) for p in parts)
        return prefix + joined if joined else prefix.rstrip(".") or "body"

    return [
        FieldError(loc=loc(e["loc"]), msg=e["msg"], type=e["type"])
        for e in exc.errors(include_input=False, include_url=False)
    ]


def decode_json(body: bytes) -> Any:
    """An HTTP body as JSON within intake's limits (services/intake/safejson.py)."""
    return safejson.decode(body)


def claimed_external_id(payload: Any) -> str:
    """The external id a native submission claims, for the rejection record; '' when
    it is not a usable string (a refused case may carry anything there)."""
    value = payload.get("external_id") if isinstance(payload, dict) else None
    if not isinstance(value, str) or not safejson.is_unicode(value):
        return ""
    return value[:128]


def validate_native(payload: Any, prefix: str = "") -> CaseSubmission:
    """A native submission, or InvalidInput with field-level errors."""
    try:
        submission = CaseSubmission.model_validate(payload)
    except ValidationError as exc:
        errors = field_errors(exc, prefix)
        raise InvalidInput("the case failed validation", errors=_dump(errors)) from None
    if errors := impossible_dates(submission, prefix):
        raise InvalidInput("the case failed validation", errors=_dump(errors))
    return submission


def impossible_dates(s: CaseSubmission, prefix: str = "") -> list[FieldError]:
    """The schema checks only the YYYY-MM-DD shape; "1227-62-81" must not reach the
    urgency rules (a 500) — it is a field error like any other."""
    dates = {
        "patient.birth_date": s.patient.birth_date,
        "treatment_start_date": s.treatment_start_date,
        **{f"earlier_opinions.{i}.given_on": e.given_on for i, e in enumerate(s.earlier_opinions)},
    }
    return [
        FieldError(loc=prefix + loc, msg="not a calendar date", type="date")
        for loc, value in dates.items()
        if value and not _is_calendar_date(value)
    ]


def _is_calendar_date(value: str) -> bool:
    try:
        date.fromisoformat(value)
    except ValueError:
        return False
    return True


def validate_fhir(payload: Any) -> CaseSubmission:
    """A FHIR case mapped, then validated like a native one. Every issue is reported
    at once: what stands in the way of reading it, then what the native rules find in
    what could be read, each located at its FHIR element (FHIRPath) and field."""
    try:
        reading = fhir.read_case(payload)
    except fhir.FhirMappingError as exc:
        raise InvalidInput("the FHIR case cannot be read", errors=_dump(exc.errors)) from None
    errors = list(reading.issues)
    submission = None
    try:
        submission = CaseSubmission.model_validate(reading.mapped)
    except ValidationError as exc:
        for e in field_errors(exc):
            if (loc := reading.located(e.loc)) is not None:
                errors.append(
                    e.model_copy(update={"loc": loc, "msg": fhir.readable(e.type, e.msg)})
                )
    if submission is not None and not errors:
        errors = [
            e.model_copy(update={"loc": reading.located(e.loc) or e.loc})
            for e in impossible_dates(submission)
        ]
    if errors or submission is None:
        raise InvalidInput("the FHIR case failed validation", errors=_dump(errors))
    return submission


def _dump(errors: list[FieldError]) -> list[dict[str, Any]]:
    return [e.model_dump() for e in errors]


def _new_case(
    tenant_id: str, submission: CaseSubmission, known: dict[str, str], now: datetime
) -> tuple[CaseDocument, list[OutboxEntry]]:
    a = domain.assess(submission, now.date(), known)
    case = CaseDocument(
        id=domain.case_id_for(tenant_id, submission.external_id),
        tenant_id=tenant_id,
        external_id=submission.external_id,
        fingerprint=domain.submission_fingerprint(submission),
        submission=submission,
        subspecialties=[SubspecialtyRecord(name=f.name, reason=f.reason) for f in a.subspecialties],
        findings=[
            MentionRecord(
                concept=m.concept, words=m.words, source=m.source, context=m.context, cue=m.cue
            )
            for m in a.findings
        ],
        beyond_tier=[SubspecialtyRecord(name=f.name, reason=f.reason) for f in a.beyond_tier],
        triage=[FindingRecord(name=f.name, reason=f.reason) for f in a.signals],
        second_opinion_value=domain.second_opinion_value(a.signals),
        urgency=a.urgency,
        urgency_reason=a.urgency_reason,
        earlier_case_ids=a.earlier_case_ids,
        hold_reason=a.hold.reason if a.hold else "",
        waiting_on_authorization=a.waiting_on,
        authorized_providers=[r.provider_id for r in submission.records if r.authorized],
        stage=a.stage,
        stage_rank=domain.stage_rank(a.stage),
        history=[StageRecord(stage=a.stage, at=now)],
        created_at=now,
        updated_at=now,
    )
    outbox = [_accepted_entry(case)] if a.stage == "accepted" else []
    return case, [*outbox, status_entry(case, case.stage, "", now)]


def _accepted_entry(case: CaseDocument) -> OutboxEntry:
    return outbox_entry(domain.case_accepted(case), traceparent=current_traceparent())


def waiting_for(
    case: CaseDocument, stage: Stage, required: tuple[progress.Audience, ...]
) -> list[str]:
    """What the case at `stage` waits for, in plain words (services/intake/progress.py)."""
    if stage in ("held_for_review", "awaiting_authorization"):
        return domain.waiting_reasons(case.hold_reason, case.waiting_on_authorization)
    return progress.waiting_for(stage, case.progress, required)


def status_entry(
    case: CaseDocument,
    stage: Stage,
    previous: str,
    now: datetime,
    required: tuple[progress.Audience, ...] = ("partner",),
) -> OutboxEntry:
    """`case.status`: the case reached `stage` (the operations view follows it)."""
    changed = CaseStatusChanged(
        case_id=case.id,
        tenant_id=case.tenant_id,
        stage=stage,
        previous_stage=previous,
        waiting_for=waiting_for(case, stage, required),
        subspecialties=[s.name.value for s in case.subspecialties],
        urgency=case.urgency,
        service_tier=case.submission.service_tier,
        changed_at=now,
    )
    return outbox_entry(changed, traceparent=current_traceparent())


def refuse_unregistered(
    registry: ProviderRegistry | None, tenant_id: str, submission: CaseSubmission, as_fhir: bool
) -> None:
    """A case naming a provider not registered for its tenant is refused at the door
    (422 on the field; `case.rejected` on Kafka): records_fetch could never fetch it.
    Once the provider is registered the same case is submitted again (docs/intake.md)."""
    if registry is None:
        return
    errors = [
        FieldError(
            loc=fhir.native_loc(f"records.{i}.provider_id")
            if as_fhir
            else f"records.{i}.provider_id",
            msg=f"provider {r.provider_id!r} is not registered for this tenant: register it, "
            "then submit the case again",
            type="unregistered_provider",
        )
        for i, r in enumerate(submission.records)
        if not registry.is_registered(tenant_id, r.provider_id)
    ]
    if errors:
        raise InvalidInput("the case names an unregistered provider", errors=_dump(errors))


async def submit_case(
    store: IntakeStore,
    clock: Clock,
    tenant_id: str,
    submission: CaseSubmission,
    registry: ProviderRegistry | None = None,
    as_fhir: bool = False,
) -> SubmitResult:
    """Create the case once; a resubmission returns it, a changed one is a conflict.
    A provider not in the tenant's `registry` refuses the case (nothing stored)."""
    refuse_unregistered(registry, tenant_id, submission, as_fhir)
    refs = [e.reference for e in submission.earlier_opinions]
    known = await store.known_references(tenant_id, refs)
    case, outbox = _new_case(tenant_id, submission, known, clock.now())
    if await store.insert_case(case, outbox):
        return SubmitResult(case.id, case.stage, True, outbox)
    existing = await store.get(case.id)
    if existing is None:  # pragma: no cover - inserted and vanished: treat as transient
        raise Conflict("case is being created concurrently; retry")
    if existing.fingerprint != case.fingerprint:
        err = FieldError(
            loc="external_id", msg="already used for a different case", type="conflict"
        )
        raise Conflict(
            "this external_id was already used for a different submission",
            errors=[err.model_dump()],
        )
    return SubmitResult(existing.id, existing.stage, False, [])


def _errors_of(exc: PermanentError) -> list[FieldError]:
    return [FieldError.model_validate(e) for e in exc.errors] or [
        FieldError(loc="body", msg=exc.detail, type=exc.title.lower().replace(" ", "_"))
    ]


async def record_http_rejection(
    store: IntakeStore,
    clock: Clock,
    tenant_id: str,
    channel: Channel,
    external_id: str,
    exc: PermanentError,
) -> None:
    """What is kept of a refused request: where and why, never the submitted values."""
    rejection = RejectionDocument(
        id=f"http:{uuid.uuid4()}",
        tenant_id=tenant_id,
        channel=channel,
        external_id=external_id[:128],
        status=exc.status_code,
        errors=_errors_of(exc),
        at=clock.now(),
    )
    await store.record_rejection(rejection, [])


async def reject_submission(
    store: IntakeStore,
    clock: Clock,
    event_id: str,
    tenant_id: str,
    external_id: str,
    errors: list[FieldError],
) -> list[OutboxEntry]:
    """Record a refused Kafka submission and tell the integrator with case.rejected."""
    case_id = domain.case_id_for(tenant_id, external_id or event_id)
    rejected = CaseRejected(
        case_id=case_id, tenant_id=tenant_id, external_id=external_id, errors=errors
    )
    outbox = [outbox_entry(rejected, traceparent=current_traceparent())]
    rejection = RejectionDocument(
        id=f"event:{event_id}",
        tenant_id=tenant_id,
        channel="kafka",
        external_id=external_id[:128],
        case_id=case_id,
        status=422,
        errors=errors,
        at=clock.now(),
    )
    created = await store.record_rejection(rejection, outbox)
    return outbox if created else []


async def tenant_case(store: IntakeStore, tenant_id: str, case_id: str) -> CaseDocument:
    case = await store.get(case_id)
    # Another tenant's case is reported as absent, not forbidden: no existence leak.
    if case is None or case.tenant_id != tenant_id:
        raise NotFound(f"no case {case_id}")
    return case


async def authorize_release(
    store: IntakeStore,
    clock: Clock,
    tenant_id: str,
    case_id: str,
    provider_id: str,
    reference: str,
) -> tuple[CaseDocument, list[OutboxEntry]]:
    """Record the patient's release for one provider; accept the case once all are on file."""
    case = await tenant_case(store, tenant_id, case_id)
    if provider_id not in [r.provider_id for r in case.submission.records]:
        err = FieldError(loc="provider_id", msg="not a provider of this case", type="unknown")
        raise InvalidInput("the provider is not listed for this case", errors=[err.model_dump()])
    now = clock.now()
    entry = AuthorizationRecord(provider_id=provider_id, reference=reference, at=now)
    case = await store.record_authorization(case_id, entry, now) or case
    return await _accept_if_ready(store, clock, case)


async def _accept_if_ready(
    store: IntakeStore, clock: Clock, case: CaseDocument
) -> tuple[CaseDocument, list[OutboxEntry]]:
    if not case.waiting or case.hold_reason or case.waiting_on_authorization:
        return case, []
    outbox = [_accepted_entry(case), status_entry(case, "accepted", case.stage, clock.now())]
    rank = domain.stage_rank("accepted")
    if not await store.accept_if_ready(case.id, rank, outbox, clock.now()):
        outbox = []  # someone else accepted it first: one case.accepted only
    return await store.get(case.id) or case, outbox


async def review_hold(
    store: IntakeStore, clock: Clock, case_id: str, release: bool, note: str, reviewer: str
) -> tuple[CaseDocument, list[OutboxEntry]]:
    """A human's decision on a held case: release it onward, or decline it."""
    case = await store.get(case_id)
    if case is None:
        raise NotFound(f"no case {case_id}")
    if case.stage != "held_for_review":
        raise Conflict(f"case is {case.stage}, not held for review")
    now = clock.now()
    review = ReviewRecord(by=reviewer, release=release, note=note, at=now)
    if not release:
        err = FieldError(loc="question", msg=note or case.hold_reason, type="not_a_second_opinion")
        rejected = CaseRejected(
            case_id=case_id, tenant_id=case.tenant_id, external_id=case.external_id, errors=[err]
        )
        outbox = [
            outbox_entry(rejected, traceparent=current_traceparent()),
            status_entry(case, "declined", case.stage, now),
        ]
        if not await store.decline(case_id, review, outbox, now):
            outbox = []
        return await store.get(case_id) or case, outbox
    nxt: Stage = "awaiting_authorization"
    released = [status_entry(case.model_copy(update={"hold_reason": ""}), nxt, case.stage, now)]
    if not await store.release_hold(case_id, review, nxt, domain.stage_rank(nxt), released, now):
        released = []
    case, outbox = await _accept_if_ready(store, clock, await store.get(case_id) or case)
    return case, [*released, *outbox]


def kafka_submission(submission: Any, fhir_payload: Any) -> CaseSubmission:
    """The case carried by a `case.submitted` event: native or FHIR, exactly one."""
    if (submission is None) == (fhir_payload is None):
        err = FieldError(
            loc="submission", msg="give exactly one of submission or fhir", type="one_of"
        )
        raise InvalidInput("exactly one of submission or fhir", errors=[err.model_dump()])
    if fhir_payload is not None:
        safejson.check_value(fhir_payload, prefix="fhir.")
        return validate_fhir(fhir_payload)
    safejson.check_value(submission, prefix="submission.")
    return validate_native(submission, prefix="submission.")


async def submit_from_kafka(
    store: IntakeStore,
    clock: Clock,
    event_id: str,
    tenant_id: str,
    submission: Any,
    fhir_payload: Any,
    registry: ProviderRegistry | None = None,
) -> list[OutboxEntry]:
    """A Kafka submission: the case (idempotent), or a recorded case.rejected."""
    external_id = claimed_external_id(submission)
    try:
        # FHIR parsing is CPU work proportional to the Bundle: off the event loop.
        case = await asyncio.to_thread(kafka_submission, submission, fhir_payload)
        as_fhir = fhir_payload is not None and submission is None
        result = await submit_case(store, clock, tenant_id, case, registry, as_fhir)
    except (InvalidInput, MalformedInput, Conflict) as exc:
        errors = [FieldError.model_validate(e) for e in exc.errors]
        return await reject_submission(store, clock, event_id, tenant_id, external_id, errors)
    return result.outbox


# A downstream event re-read and re-applied when the case changed under it (another
# topic's event for the same case, applied at the same moment); a case changing under
# every try is retried by the consumer later.
FOLLOW_TRIES = 8


async def follow(
    store: IntakeStore,
    clock: Clock,
    event: progress.Followed,
    meta: EventMeta,
    policy_for: Callable[[str], progress.DeliveryPolicy],
) -> list[OutboxEntry]:
    """A downstream event applied to the case's progress (services/intake/progress.py),
    once, with a `case.status` per stage reached. The stage is dated when the service
    that reached it says it happened (the event's time), not when intake heard of it."""
    now = clock.now()
    at = meta.occurred_at(default=now)
    for _ in range(FOLLOW_TRIES):
        case = await store.get(event.case_id, unless_applied=meta.event_id)
        if case is None:
            return []  # not a case of this intake (nothing to show), or a redelivery
        if case.tenant_id != event.tenant_id:
            raise PermanentError("the event names another tenant than its case")
        required = policy_for(case.tenant_id).required(
            bool(case.submission.treating_clinician_email)
        )
        step = progress.apply(case.stage, case.progress, event, at, now, required)
        after = case.model_copy(update={"progress": step.progress})
        # The images are known: the routing is re-checked with them, in the same write.
        reroute = None
        if isinstance(event, RecordsComplete):
            reroute = domain.recheck(case, domain.studies_of(event.manifest), now)
        outbox: list[OutboxEntry] = []
        if reroute is not None:
            after = reroute.applied(after)
            rerouted = domain.case_rerouted(case, reroute)
            outbox.append(outbox_entry(rerouted, traceparent=current_traceparent()))
        previous = case.stage
        for reached in step.reached:
            outbox.append(status_entry(after, reached.stage, previous, reached.at, required))
            previous = reached.stage
        if await store.save_progress(case, meta.event_id, step, outbox, now, _rerouted(reroute)):
            return outbox
        if await store.applied(case.id, meta.event_id):
            return []
    raise RetryableError("the case kept changing while the event was applied")


def _rerouted(reroute: domain.Reroute | None) -> dict[str, Any]:
    """The case's fields a re-check with the images changed (none if it did not)."""
    if reroute is None:
        return {}
    return {
        "subspecialties": [x.model_dump(mode="python") for x in reroute.subspecialties],
        "beyond_tier": [x.model_dump(mode="python") for x in reroute.beyond_tier],
        "findings": [x.model_dump(mode="python") for x in reroute.findings],
        "reroute": reroute.record.model_dump(mode="python"),
    }
