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

from services.records_fetch import domain, multipart, providers
from services.records_fetch.archive import Archive, IncomingFile
from services.records_fetch.checker import Checker
from services.records_fetch.domain import InstanceCheck, InstanceState
from services.records_fetch.identifiers import FOREIGN_REFUSED, RefusedIdentifier
from services.records_fetch.review_pacs import ReviewPacs
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
    # The review organisation's PACS the complete case's images go to (None: none).
    review: ReviewPacs | None = None
    # Where the instances' checks run (worker processes; threads with processes=0).
    checker: Checker = field(default_factory=lambda: Checker(processes=0))


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
    recorder: Recorder | None = None

    async def record(
        self,
        ctx: Retrieval,
        records: list[tuple[str, Doc]],
        refused: list[providers.Refused],
        provider_id: str,
        written: asyncio.Future[None] | None = None,
    ) -> None:
        """Hand instance records and refusals to the attempt's recorder; returns once
        they are written."""
        await self.record_later(ctx, records, refused, provider_id, written)

    def record_later(
        self,
        ctx: Retrieval,
        records: list[tuple[str, Doc]],
        refused: list[providers.Refused],
        provider_id: str,
        written: asyncio.Future[None] | None = None,
    ) -> asyncio.Future[None]:
        """The same, without waiting: the returned future is done once written (a
        series streams on while its last batch's records are written)."""
        if self.recorder is None:
            self.recorder = Recorder(ctx, self)
        return self.recorder.submit(records, refused, provider_id, written)

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


@dataclass
class _Entry:
    records: list[tuple[str, Doc]]
    refused: list[providers.Refused]
    provider_id: str
    written: asyncio.Future[None] | None
    done: asyncio.Future[None]


class Recorder:
    """The one owner of an attempt's instance records (`attempt.instances`, the
    store's `instances`) and of its refusals: every retrieval, series or instance,
    of every provider, hands what it found here and waits until it is written, so
    nothing else mutates them. It also writes a long study's progress now and then
    (after the provider's studies write, which it waits for)."""

    def __init__(self, ctx: Retrieval, attempt: CaseAttempt) -> None:
        self.ctx, self.attempt = ctx, attempt
        self.queue: asyncio.Queue[_Entry | None] = asyncio.Queue()
        self.task = asyncio.ensure_future(self._run())

    def submit(
        self,
        records: list[tuple[str, Doc]],
        refused: list[providers.Refused],
        provider_id: str,
        written: asyncio.Future[None] | None,
    ) -> asyncio.Future[None]:
        if self.task.done():
            raise RuntimeError("the attempt's recorder has stopped")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.queue.put_nowait(_Entry(records, refused, provider_id, written, done))
        return done

    async def close(self) -> None:
        self.queue.put_nowait(None)
        await self.task

    async def _run(self) -> None:
        while (entry := await self.queue.get()) is not None:
            try:
                await self._write(entry)
            except BaseException as exc:
                if not entry.done.done():
                    entry.done.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
            else:
                entry.done.set_result(None)

    async def _write(self, entry: _Entry) -> None:
        ctx, attempt = self.ctx, self.attempt
        note_refused(attempt, entry.provider_id, entry.refused)
        if not entry.records:
            return
        await ctx.store.record_instances(attempt.case_id, entry.records)
        known = await _instances(ctx, attempt)
        for sop, fields in entry.records:
            known[sop] = {**known.get(sop, {}), **fields, "sop_uid": sop}
        if entry.written is not None:
            await entry.written  # the studies write lands before any progress write
        await _note_progress(ctx, attempt)


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
        if attempt.recorder is not None:
            await attempt.recorder.close()
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
    # Which recorded files the archive does hold: one call (an S3 archive asks for
    # them together, off the event loop).
    held = await asyncio.to_thread(
        ctx.archive.held,
        [d.get("sha256", "") for d in known.values() if d.get("state") == InstanceState.RECEIVED],
    )
    await attempt.record(ctx, [], found.refused, rec.provider_id)
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
        await _retrieve_all(ctx, attempt, rec, base, studies, known, held, written)
    finally:  # what did arrive is counted, also when the PACS failed midway
        attempt.defer({"studies": attempt.doc["studies"], **_progress_fields(attempt, known)})
        await written
    return any(domain.WSI_MODALITY in s.modalities for s in studies)


async def _retrieve_all(
    ctx: Retrieval,
    attempt: CaseAttempt,
    rec: ProviderRecords,
    base: str,
    studies: list[providers.QidoStudy],
    known: dict[str, Doc],
    held: set[str],
    written: asyncio.Future[None],
) -> None:
    """WADO-RS what is missing: a series of which nothing is held yet in one
    series-level request (parsed as it streams), the rest instance by instance (a
    series partly held after a cut attempt, what a series answer left out, a PACS
    that refuses series-level retrieval). At most RETRIEVALS_IN_FLIGHT requests at
    once (searches included); the first failure of the PACS stops the rest.

    The series search is quick and the instance listing may be slow (a PACS can
    read every file to answer it), so a series of which nothing is held starts
    streaming at once; its parts are matched against the listing before they are
    committed."""
    gate = asyncio.Semaphore(RETRIEVALS_IN_FLIGHT)
    failed = asyncio.Event()

    async def gated(aw: Any) -> Any:
        async with gate:
            if failed.is_set():  # the PACS failed: do not queue up more timeouts
                aw.close()
                return None
            try:
                return await aw
            except BaseException:
                failed.set()
                raise

    listings = {
        s.study_uid: asyncio.ensure_future(
            gated(providers.find_instances(ctx.client, base, s.study_uid, rec.patient_id))
        )
        for s in studies
    }
    try:
        found_series = await gather_all(
            *(gated(providers.find_series(ctx.client, base, s.study_uid)) for s in studies)
        )
        series = [x for f in found_series if f is not None for x in f.items]
        await attempt.record(
            ctx, [], [r for f in found_series if f is not None for r in f.refused], rec.provider_id
        )
        held_series = {d.get("series_uid") for d in known.values() if _already_held(held, d)}
        whole = [x for x in series if x.series_uid not in held_series]

        brought = await gather_all(
            *(
                gated(retrieve_series(ctx, attempt, rec, base, x, listings[x.study_uid], written))
                for x in whole
            )
        )
        listed = await gather_all(*listings.values())
    finally:
        for f in listings.values():
            if not f.done():
                f.cancel()
        await asyncio.gather(*listings.values(), return_exceptions=True)
    await attempt.record(
        ctx, [], [r for one in listed if one is not None for r in one.refused], rec.provider_id
    )
    # Instance by instance: what no series answer brought (partly held series, a PACS
    # refusing series-level retrieval, a part that did not come or came cut).
    # SOP UIDs a series answer brought (received or corrupt): not asked for again now.
    tried: set[str] = set().union(*(b for b in brought if b is not None))
    todo = [
        i
        for one in listed
        if one is not None
        for i in one.items
        if i.sop_uid not in tried and not _already_held(held, known.get(i.sop_uid))
    ]
    await gather_all(
        *(gated(retrieve_one(ctx, attempt, rec, base, inst, written)) for inst in todo)
    )


# A few requests at a time: a PACS answers several WADO-RS requests in parallel, but
# a large study must not open hundreds of connections to a partner's archive at once.
RETRIEVALS_IN_FLIGHT = 4
# Progress is written at most this often during a long study (and once at its end).
PROGRESS_EVERY_SECONDS = 1.0
# A series-level answer is committed in batches: one fsync round and one database
# write per batch. A crash loses at most one batch (fetched again, never half-kept).
BATCH_FILES = 64
BATCH_BYTES = 256 * 1024 * 1024
# Checks of streamed parts running in worker threads while the stream goes on.
CHECKS_IN_FLIGHT = 16
# In a series-level answer, one instance in this many has a sample of its frames
# decoded (compressed syntaxes; every multi-frame instance gets its sample). The
# structure of every instance's pixel data is walked regardless.
DECODE_EVERY = 8


async def _inspect_part(
    ctx: Retrieval,
    incoming: IncomingFile,
    study_uid: str,
    series_uid: str,
    patient_id: str,
    decode: bool,
) -> tuple[str, InstanceCheck]:
    """One streamed part's checks, once the stream's writer has written it (and
    hashed it, as it wrote): in a check worker, which reads it from the spool."""
    if incoming.written is not None:
        # shielded: a cancelled check must not cancel the writer's job of the part
        await asyncio.shield(asyncio.wrap_future(incoming.written))
    incoming.settle()  # its write's failure, if any, is raised here
    return await ctx.checker.series_part(incoming.path, study_uid, series_uid, patient_id, decode)


@dataclass
class _Part:
    incoming: IncomingFile
    check: asyncio.Future[tuple[str, InstanceCheck]]


async def retrieve_series(
    ctx: Retrieval,
    attempt: CaseAttempt,
    rec: ProviderRecords,
    base: str,
    series: providers.QidoSeries,
    listing: asyncio.Future[providers.Found[providers.QidoInstance] | None],
    written: asyncio.Future[None],
) -> set[str]:
    """One series by series-level WADO-RS, streamed part by part into the archive and
    checked as it comes; committed and recorded batch by batch, each part matched
    against the study's instance listing (awaited before the first commit). Returns
    the SOP UIDs it brought; the rest is left to the instance-by-instance pass."""
    study_uid, series_uid = series.study_uid, series.series_uid
    wanted: dict[str, providers.QidoInstance] | None = None
    got: set[str] = set()  # this series' own: only its commits (one at a time) add
    batch: list[_Part] = []
    batch_bytes = 0
    n = 0
    # One batch is made durable while the next one streams in; its records are
    # written by the recorder meanwhile (all awaited before the series ends).
    committing: asyncio.Future[None] | None = None
    recorded: list[asyncio.Future[None]] = []

    async def commit(wait: bool = True) -> None:
        nonlocal batch, batch_bytes, committing, wanted
        parts, batch, batch_bytes = batch, [], 0
        if committing is not None:
            previous, committing = committing, None
            await previous
        if wanted is None:
            found = await asyncio.shield(listing)
            items = found.items if found is not None else []
            wanted = {i.sop_uid: i for i in items if i.series_uid == series_uid}
        committing = asyncio.ensure_future(
            _commit_parts(ctx, attempt, rec, parts, wanted, got, written, recorded)
        )
        if wait:
            previous, committing = committing, None
            await previous

    try:
        async for incoming in providers.stream_series(
            ctx.client, base, study_uid, series_uid, ctx.archive
        ):
            decode = n % DECODE_EVERY == 0
            n += 1
            check = asyncio.ensure_future(
                _inspect_part(ctx, incoming, study_uid, series_uid, rec.patient_id, decode)
            )
            batch.append(_Part(incoming, check))
            batch_bytes += incoming.size
            pending = [p.check for p in batch if not p.check.done()]
            if len(pending) > CHECKS_IN_FLIGHT:  # the checks set the pace, not memory
                await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if len(batch) >= BATCH_FILES or batch_bytes >= BATCH_BYTES:
                await commit(wait=False)
    except (providers.SeriesRefused, multipart.MultipartError):
        pass  # what arrived whole is kept; the rest instance by instance
    except ProviderUnavailable:
        await commit()  # keep what arrived whole, then report the outage
        await gather_all(*recorded)
        raise
    except BaseException:
        for p in batch:
            p.check.cancel()
            p.incoming.discard()
        if committing is not None:
            await asyncio.wait([committing])
        raise
    await commit()
    await gather_all(*recorded)
    return got


async def _commit_parts(
    ctx: Retrieval,
    attempt: CaseAttempt,
    rec: ProviderRecords,
    parts: list[_Part],
    wanted: dict[str, providers.QidoInstance],
    got: set[str],
    written: asyncio.Future[None],
    recorded: list[asyncio.Future[None]],
) -> None:
    """Checked parts → the archive (one durable step) → their records (one write,
    by the recorder, whose future is added to `recorded`).
    Another patient's file, or one the listing did not name (or named twice), never
    gets an address."""
    keep: list[tuple[str, InstanceCheck, IncomingFile]] = []
    refused: list[providers.Refused] = []
    try:
        for p in parts:
            sop, check = await p.check
            if check.foreign_patient:
                p.incoming.discard()
                FOREIGN_REFUSED.labels(source="instance").inc()
                refused.append(
                    providers.Refused("instance", "instance of another patient", "DICOM")
                )
            elif sop not in wanted or sop in got:
                p.incoming.discard()  # not listed by QIDO for this series, or a repeat
            else:
                got.add(sop)
                keep.append((sop, check, p.incoming))
    except BaseException:
        for p in parts:
            p.incoming.discard()
        raise
    placed = await asyncio.to_thread(ctx.archive.commit_batch, [f for _, _, f in keep])
    records = [
        (sop, _instance_fields(rec, wanted[sop], check, sha, location, f.size))
        for (sop, check, f), (sha, location) in zip(keep, placed, strict=True)
    ]
    recorded.append(attempt.record_later(ctx, records, refused, rec.provider_id, written))


def _instance_fields(
    rec: ProviderRecords,
    inst: providers.QidoInstance,
    check: InstanceCheck,
    sha: str,
    location: str,
    size: int,
) -> Doc:
    return {
        "provider_id": rec.provider_id,
        "study_uid": inst.study_uid,
        "series_uid": inst.series_uid,
        "state": InstanceState.RECEIVED if check.ok else InstanceState.CORRUPT,
        "sha256": sha,
        "size": size,
        "location": location,
        "modality": check.modality or inst.modality,
        "body_part": check.body_part,
        "study_date": check.study_date,
        "sop_class": check.sop_class,
        "problems": check.problems,
    }


async def _instances(ctx: Retrieval, attempt: CaseAttempt) -> dict[str, Doc]:
    """The case's instance records, read once per attempt; from then on changed only
    by the attempt's recorder."""
    async with attempt.loading:
        if attempt.instances is None:
            attempt.instances = await ctx.store.instance_states(attempt.case_id)
    return attempt.instances


def _already_held(held: set[str], prev: Doc | None) -> bool:
    return bool(prev and prev.get("state") == InstanceState.RECEIVED and prev.get("sha256") in held)


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
            "description": s.description,
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
    written: asyncio.Future[None],
) -> None:
    """Retrieve, check and store one instance; a bad file is recorded as corrupt, a
    file of another patient is refused and never enters the archive."""
    try:
        incoming = await providers.retrieve_instance(ctx.client, base, inst, ctx.archive)
    except multipart.MultipartError as exc:
        fields: Doc = {
            "provider_id": rec.provider_id,
            "study_uid": inst.study_uid,
            "series_uid": inst.series_uid,
            "state": InstanceState.CORRUPT,
            "problems": [str(exc)],
        }
        await attempt.record(ctx, [(inst.sop_uid, fields)], [], rec.provider_id, written)
        return
    # fsync, the pydicom parse and the rename: off the event loop. The file is
    # checked under its temporary name, so another patient's never gets an address.
    await asyncio.to_thread(incoming.close)
    check = await ctx.checker.instance(incoming.path, inst.sop_uid, rec.patient_id)
    if check.foreign_patient:
        incoming.discard()
        FOREIGN_REFUSED.labels(source="instance").inc()
        refusal = providers.Refused("instance", "instance of another patient", "DICOM")
        await attempt.record(ctx, [], [refusal], rec.provider_id, written)
        return
    sha, location = await asyncio.to_thread(ctx.archive.commit, incoming)
    fields = _instance_fields(rec, inst, check, sha, location, incoming.size)
    await attempt.record(ctx, [(inst.sop_uid, fields)], [], rec.provider_id, written)


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
    await attempt.record(ctx, [], [r for one in found for r in one.refused], rec.provider_id)
    for kind, resources in zip(kinds, found, strict=True):
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
        description=study.get("description", ""),
        body_parts=sorted({i["body_part"] for i in received if i.get("body_part")}),
        expected=study.get("expected", 0),
        received=len(received),
        corrupt=sorted(i["sop_uid"] for i in mine if i["state"] == InstanceState.CORRUPT),
        wsi_instances=sum(1 for i in received if i.get("sop_class") == domain.WSI_SOP_CLASS),
    )
