"""One retrieval attempt for one case, provider by provider: QIDO-RS then WADO-RS
of every instance not yet held (streamed into the archive, checked with
pydicom), FHIR R4 searches for the clinical records, and the glass-slide
request when a provider has no digital pathology. Every step is recorded in
the store as it happens, so an attempt cut short (provider down, crash) is
resumed by the next one without fetching anything twice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from services.records_fetch import dicom, domain, multipart, providers
from services.records_fetch.archive import Archive
from services.records_fetch.domain import InstanceState
from services.records_fetch.identifiers import FOREIGN_REFUSED, RefusedIdentifier
from services.records_fetch.store import FetchStore
from shared.aio import gather_all
from shared.clock import SYSTEM_CLOCK, Clock
from shared.envelope import OutboxEntry, outbox_entry
from shared.errors import ProviderUnavailable, UnregisteredEndpoint
from shared.events import ProviderRecords, RecordKind, RecordsProgress
from shared.store import Doc

FHIR_KINDS = (RecordKind.NOTES, RecordKind.REPORTS, RecordKind.LABS, RecordKind.TREATMENTS)


@dataclass
class Retrieval:
    """The I/O one attempt works with (injected, so tests can pass fakes)."""

    store: FetchStore
    client: httpx.AsyncClient
    registry: domain.ProviderRegistry
    archive: Archive


@dataclass
class CaseAttempt:
    """One attempt's view of the case document.

    Writes are folded together where nothing is lost by waiting: what the
    providers yield (studies, clinical summaries, progress, their states and
    events) is kept in `pending` and written once, with the attempt's outcome
    (handlers.conclude). Each instance is still recorded as soon as it is
    stored, which is what lets a cut attempt resume without fetching anything
    twice; and a long study's progress is written as it goes."""

    doc: Doc
    unreachable: dict[str, str]
    clock: Clock = SYSTEM_CLOCK
    # provider id → why its patient identifier was refused (no request was made)
    identifier_refused: dict[str, str] = field(default_factory=dict)
    # What providers returned for another patient (or with bad identifiers): not kept.
    refused: list[Doc] = field(default_factory=list)
    instances: dict[str, Doc] | None = None  # sop_uid → instance record, once loaded
    loading: asyncio.Lock = field(default_factory=asyncio.Lock)  # one load, for all providers
    pending_fields: Doc = field(default_factory=dict)
    pending_events: list[OutboxEntry] = field(default_factory=list)
    progress_written_at: float = 0.0

    @property
    def case_id(self) -> str:
        return str(self.doc["_id"])

    @property
    def tenant_id(self) -> str:
        return str(self.doc["tenant_id"])

    def progress(
        self, rec: ProviderRecords, kind: RecordKind, state: str, **kw: Any
    ) -> OutboxEntry:
        event = RecordsProgress(
            case_id=self.case_id,
            tenant_id=self.tenant_id,
            provider_id=rec.provider_id,
            kind=kind,
            state=state,
            **kw,
        )
        return outbox_entry(event, traceparent=self.doc.get("traceparent", ""))

    def defer(self, fields: Doc, events: Sequence[OutboxEntry] = ()) -> None:
        """Fields and events to write with the attempt's outcome."""
        self.pending_fields.update(fields)
        self.pending_events.extend(events)

    def take_pending(self) -> tuple[Doc, list[OutboxEntry]]:
        fields, events = self.pending_fields, self.pending_events
        self.pending_fields, self.pending_events = {}, []
        return fields, events


def records_of(doc: Doc) -> list[ProviderRecords]:
    return [ProviderRecords.model_validate(r) for r in doc["records"]]


async def run_attempt(ctx: Retrieval, doc: Doc) -> CaseAttempt:
    """Retrieve what each provider holds, all providers at once; a provider's failure
    is recorded (in `pending`, written by the caller's concluding write), not raised."""
    attempt = CaseAttempt(doc=doc, unreachable={}, clock=ctx.store.clock)
    try:
        await gather_all(
            *(_one_provider(ctx, attempt, i, rec) for i, rec in enumerate(records_of(doc)))
        )
    finally:  # what this attempt refused replaces what the last one did
        attempt.defer({"refused": attempt.refused})
    return attempt


async def _one_provider(
    ctx: Retrieval, attempt: CaseAttempt, index: int, rec: ProviderRecords
) -> None:
    try:
        await retrieve_provider(ctx, attempt, rec, index)
    except RefusedIdentifier as exc:
        attempt.identifier_refused[rec.provider_id] = exc.detail
        _provider_state(attempt, index, rec, "refused", exc.detail)
        return
    except (ProviderUnavailable, UnregisteredEndpoint) as exc:
        attempt.unreachable[rec.provider_id] = exc.detail
        _provider_state(attempt, index, rec, "failed", exc.detail)
        return
    _provider_state(attempt, index, rec, "received", "")


def _provider_state(
    attempt: CaseAttempt, index: int, rec: ProviderRecords, state: str, reason: str
) -> None:
    # A failure is news for every kind asked of the provider; what was received has
    # already been told kind by kind (records.progress from the retrieval itself).
    # A refused identifier is a failure on the wire (records.progress has no "refused").
    failed = state in ("failed", "refused")
    events = (
        [attempt.progress(rec, k, "failed", reason=reason) for k in rec.kinds] if failed else []
    )
    fields = {
        f"providers.{index}.state": state,
        f"providers.{index}.reason": reason,
        f"providers.{index}.updated_at": attempt.clock.now(),
    }
    attempt.defer(fields, events)


async def retrieve_provider(
    ctx: Retrieval, attempt: CaseAttempt, rec: ProviderRecords, index: int
) -> None:
    endpoints = ctx.registry.lookup(attempt.tenant_id, rec.provider_id)
    wants_dicom = {RecordKind.IMAGING, RecordKind.PATHOLOGY} & set(rec.kinds)
    slides_found = False
    if wants_dicom and endpoints.dicomweb_url is not None:
        base = str(endpoints.dicomweb_url).rstrip("/")
        slides_found = await retrieve_imaging(ctx, attempt, rec, index, base)
    if RecordKind.PATHOLOGY in rec.kinds and not slides_found:
        request_glass_slides(attempt, rec)
    fhir_kinds = [k for k in rec.kinds if k in FHIR_KINDS]
    if fhir_kinds and endpoints.fhir_url is not None:
        base = str(endpoints.fhir_url).rstrip("/")
        await retrieve_clinical(ctx, attempt, rec, base, fhir_kinds)


# ---------------------------------------------------------------- imaging


def _wanted(study: providers.QidoStudy, kinds: list[RecordKind]) -> bool:
    is_slide = domain.WSI_MODALITY in study.modalities
    return RecordKind.PATHOLOGY in kinds if is_slide else RecordKind.IMAGING in kinds


async def retrieve_imaging(
    ctx: Retrieval, attempt: CaseAttempt, rec: ProviderRecords, index: int, base: str
) -> bool:
    """QIDO the patient's studies (current and prior), WADO each missing instance.

    Returns True if the PACS holds whole-slide images for the patient."""
    # What the case already holds is read while the PACS answers the search.
    holding = asyncio.ensure_future(_instances(ctx, attempt))
    try:
        found = await providers.find_studies(ctx.client, base, rec.patient_id)
    finally:
        known = await holding
    note_refused(attempt, rec.provider_id, found.refused)
    studies = [s for s in found.items if _wanted(s, rec.kinds)]
    expected = sum(s.expected for s in studies)
    kind = RecordKind.IMAGING if RecordKind.IMAGING in rec.kinds else RecordKind.PATHOLOGY
    start = attempt.progress(rec, kind, "in_progress", expected=expected)
    # One write says what is coming: the studies, the provider at work, the event.
    fields = {
        "studies": _merge_studies(attempt, rec.provider_id, studies),
        f"providers.{index}.state": "in_progress",
        **_progress_fields(attempt, known),
    }
    attempt.progress_written_at = time.monotonic()
    # This write runs alongside the listings and the retrievals (nothing they do
    # depends on it; at half load it took 30-70 ms of the case's path). Later writes
    # to the case document wait for it, so a newer progress is never overwritten.
    written = asyncio.ensure_future(ctx.store.update(attempt.case_id, fields, [start]))
    try:
        listed = await gather_all(
            *(
                providers.find_instances(ctx.client, base, s.study_uid, rec.patient_id)
                for s in studies
            )
        )
        for one in listed:
            note_refused(attempt, rec.provider_id, one.refused)
        todo = [
            i
            for insts in listed
            for i in insts.items
            if not _already_held(ctx, known.get(i.sop_uid))
        ]
        await _retrieve_all(ctx, attempt, rec, base, todo, written)
    finally:  # what did arrive is counted, also when the PACS failed midway
        attempt.defer({"studies": attempt.doc["studies"], **_progress_fields(attempt, known)})
        await written
    return any(domain.WSI_MODALITY in s.modalities for s in studies)


async def _retrieve_all(
    ctx: Retrieval,
    attempt: CaseAttempt,
    rec: ProviderRecords,
    base: str,
    todo: list[providers.QidoInstance],
    written: asyncio.Future[None],
) -> None:
    """WADO-RS the instances, a few at a time; the first failure stops the rest."""
    gate = asyncio.Semaphore(RETRIEVALS_IN_FLIGHT)
    failed = asyncio.Event()

    async def one(inst: providers.QidoInstance) -> None:
        async with gate:
            if failed.is_set():  # the PACS failed: do not queue up more timeouts
                return
            try:
                await retrieve_one(ctx, attempt, rec, base, inst)
            except BaseException:
                failed.set()
                raise
        await written  # the studies write lands before any progress write
        await _note_progress(ctx, attempt)

    await gather_all(*(one(i) for i in todo))


# A few instances at a time: a PACS answers several WADO-RS requests in parallel, but
# a large study must not open hundreds of connections to a partner's archive at once.
RETRIEVALS_IN_FLIGHT = 4
# Progress is written at most this often during a long study (and once at its end).
PROGRESS_EVERY_SECONDS = 1.0


async def _instances(ctx: Retrieval, attempt: CaseAttempt) -> dict[str, Doc]:
    """The case's instance records, read once per attempt and kept up to date in memory."""
    async with attempt.loading:
        if attempt.instances is None:
            attempt.instances = await ctx.store.instance_states(attempt.case_id)
    return attempt.instances


def _already_held(ctx: Retrieval, prev: Doc | None) -> bool:
    return bool(
        prev
        and prev.get("state") == InstanceState.RECEIVED
        and ctx.archive.holds(prev.get("sha256", ""))
    )


def _merge_studies(
    attempt: CaseAttempt, provider_id: str, studies: list[providers.QidoStudy]
) -> list[Doc]:
    others = [s for s in attempt.doc.get("studies", []) if s["provider_id"] != provider_id]
    mine = [
        {
            "provider_id": provider_id,
            "study_uid": s.study_uid,
            "study_date": s.study_date,
            "modalities": s.modalities,
            "expected": s.expected,
        }
        for s in studies
    ]
    attempt.doc["studies"] = others + mine
    return attempt.doc["studies"]


def note_refused(attempt: CaseAttempt, provider_id: str, refused: list[providers.Refused]) -> None:
    """Keep what a provider returned for another patient visible (never its content)."""
    attempt.refused += [
        {
            "provider_id": provider_id,
            "source": r.source,
            "reason": r.reason,
            "resource_type": r.resource_type,
        }
        for r in refused
    ]


async def retrieve_one(
    ctx: Retrieval,
    attempt: CaseAttempt,
    rec: ProviderRecords,
    base: str,
    inst: providers.QidoInstance,
) -> None:
    """Retrieve, check and store one instance; a bad file is recorded as corrupt, a
    file of another patient is refused and never enters the archive."""
    where = {
        "provider_id": rec.provider_id,
        "study_uid": inst.study_uid,
        "series_uid": inst.series_uid,
    }
    try:
        incoming = await providers.retrieve_instance(ctx.client, base, inst, ctx.archive)
    except multipart.MultipartError as exc:
        fields: Doc = {**where, "state": InstanceState.CORRUPT, "problems": [str(exc)]}
    else:
        # fsync, the pydicom parse and the rename: off the event loop. The file is
        # checked under its temporary name, so another patient's never gets an address.
        await asyncio.to_thread(incoming.close)
        check = await dicom.inspect(incoming.path, inst.sop_uid, rec.patient_id)
        if check.foreign_patient:
            incoming.discard()
            FOREIGN_REFUSED.labels(source="instance").inc()
            note_refused(
                attempt,
                rec.provider_id,
                [providers.Refused("instance", "instance of another patient", "DICOM")],
            )
            return
        sha, path = await asyncio.to_thread(ctx.archive.commit, incoming)
        fields = {
            **where,
            "state": InstanceState.RECEIVED if check.ok else InstanceState.CORRUPT,
            "sha256": sha,
            "size": incoming.size,
            "path": str(path),
            "modality": check.modality or inst.modality,
            "body_part": check.body_part,
            "study_date": check.study_date,
            "problems": check.problems,
        }
    await ctx.store.record_instance(attempt.case_id, inst.sop_uid, fields)
    known = await _instances(ctx, attempt)
    known[inst.sop_uid] = {**known.get(inst.sop_uid, {}), **fields, "sop_uid": inst.sop_uid}


def _progress_fields(attempt: CaseAttempt, known: dict[str, Doc]) -> Doc:
    states = [d.get("state") for d in known.values()]
    return {
        "progress": {
            "expected": sum(s["expected"] for s in attempt.doc.get("studies", [])),
            "received": states.count(InstanceState.RECEIVED),
            "corrupt": states.count(InstanceState.CORRUPT),
        }
    }


async def _note_progress(ctx: Retrieval, attempt: CaseAttempt) -> None:
    """Show a long study's progress now and then; the final count goes with the state."""
    if time.monotonic() - attempt.progress_written_at < PROGRESS_EVERY_SECONDS:
        return
    attempt.progress_written_at = time.monotonic()
    await ctx.store.update(
        attempt.case_id, _progress_fields(attempt, await _instances(ctx, attempt))
    )


# ---------------------------------------------------------------- pathology (physical)


def request_glass_slides(attempt: CaseAttempt, rec: ProviderRecords) -> None:
    """No digital pathology at this provider: the glass slides are a tracked physical item."""
    slides = attempt.doc.get("glass_slides", {})
    if rec.provider_id in slides:
        return
    slides[rec.provider_id] = {"state": "requested", "requested_at": attempt.clock.now()}
    attempt.doc["glass_slides"] = slides
    event = attempt.progress(
        rec, RecordKind.PATHOLOGY, "requested", reason="glass slides requested (physical item)"
    )
    attempt.defer({"glass_slides": slides}, [event])


# ---------------------------------------------------------------- clinical (FHIR R4)


async def retrieve_clinical(
    ctx: Retrieval,
    attempt: CaseAttempt,
    rec: ProviderRecords,
    base: str,
    kinds: list[RecordKind],
) -> None:
    """The FHIR searches of one provider, run together (they are independent)."""
    found = await gather_all(
        *(providers.search_fhir(ctx.client, base, rec.patient_id, kind) for kind in kinds)
    )
    clinical = [c for c in attempt.doc.get("clinical", []) if c["provider_id"] != rec.provider_id]
    events = []
    for kind, resources in zip(kinds, found, strict=True):
        note_refused(attempt, rec.provider_id, resources.refused)
        summaries = [domain.summarise_resource(r).model_dump() for r in resources.items]
        clinical.append(
            {"provider_id": rec.provider_id, "kind": kind.value, "summaries": summaries}
        )
        events.append(
            attempt.progress(
                rec, kind, "received", expected=len(summaries), received=len(summaries)
            )
        )
    attempt.doc["clinical"] = clinical
    attempt.defer({"clinical": clinical}, events)


# ---------------------------------------------------------------- facts for the manifest


def facts_from(
    doc: Doc,
    instances: dict[str, Doc],
    unreachable: dict[str, str],
    identifier_refused: dict[str, str] | None = None,
) -> domain.Facts:
    """What the store now holds for the case, as the domain's `Facts`."""
    studies = [_study_facts(s, instances.values()) for s in doc.get("studies", [])]
    clinical: dict[RecordKind, list[domain.ClinicalSummary]] = {}
    for block in doc.get("clinical", []):
        summaries = [domain.ClinicalSummary.model_validate(s) for s in block["summaries"]]
        clinical.setdefault(RecordKind(block["kind"]), []).extend(summaries)
    slides = doc.get("glass_slides", {})
    listed = {k for r in records_of(doc) for k in r.kinds}
    return domain.Facts(
        studies=studies,
        clinical=clinical,
        glass_slides_requested=sorted(p for p, s in slides.items() if s["state"] == "requested"),
        glass_slides_received=sorted(p for p, s in slides.items() if s["state"] == "received"),
        unreachable=unreachable,
        identifier_refused=identifier_refused or {},
        not_requested=[k for k in RecordKind if k not in listed],
    )


def _study_facts(study: Doc, instances: Any) -> domain.StudyFacts:
    mine = [i for i in instances if i.get("study_uid") == study["study_uid"]]
    received = [i for i in mine if i["state"] == InstanceState.RECEIVED]
    return domain.StudyFacts(
        provider_id=study["provider_id"],
        study_uid=study["study_uid"],
        study_date=study.get("study_date", ""),
        modalities=study.get("modalities", []),
        body_parts=sorted({i["body_part"] for i in received if i.get("body_part")}),
        expected=study.get("expected", 0),
        received=len(received),
        corrupt=sorted(i["sop_uid"] for i in mine if i["state"] == InstanceState.CORRUPT),
    )
