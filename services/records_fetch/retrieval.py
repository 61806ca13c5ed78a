"""One retrieval attempt for one case, provider by provider: QIDO-RS then WADO-RS
of every instance not yet held (streamed into the archive, checked with
pydicom), FHIR R4 searches for the clinical records, and the glass-slide
request when a provider has no digital pathology. Every step is recorded in
the store as it happens, so an attempt cut short (provider down, crash) is
resumed by the next one without fetching anything twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from services.records_fetch import dicom, domain, multipart, providers
from services.records_fetch.archive import Archive
from services.records_fetch.domain import InstanceState
from services.records_fetch.store import FetchStore
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
    """One attempt's view of the case document."""

    doc: Doc
    unreachable: dict[str, str]

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


def records_of(doc: Doc) -> list[ProviderRecords]:
    return [ProviderRecords.model_validate(r) for r in doc["records"]]


async def run_attempt(ctx: Retrieval, doc: Doc) -> CaseAttempt:
    """Retrieve what each provider holds; provider failures are recorded, not raised."""
    attempt = CaseAttempt(doc=doc, unreachable={})
    for index, rec in enumerate(records_of(doc)):
        await _provider_state(ctx, attempt, index, "in_progress", "")
        try:
            await retrieve_provider(ctx, attempt, rec)
        except (ProviderUnavailable, UnregisteredEndpoint) as exc:
            attempt.unreachable[rec.provider_id] = exc.detail
            await _provider_state(ctx, attempt, index, "failed", exc.detail, rec)
            continue
        await _provider_state(ctx, attempt, index, "received", "")
    return attempt


async def _provider_state(
    ctx: Retrieval,
    attempt: CaseAttempt,
    index: int,
    state: str,
    reason: str,
    rec: ProviderRecords | None = None,
) -> None:
    outbox = [attempt.progress(rec, k, state, reason=reason) for k in rec.kinds] if rec else []
    fields = {
        f"providers.{index}.state": state,
        f"providers.{index}.reason": reason,
        f"providers.{index}.updated_at": datetime.now(UTC),
    }
    await ctx.store.update(attempt.case_id, fields, outbox)


async def retrieve_provider(ctx: Retrieval, attempt: CaseAttempt, rec: ProviderRecords) -> None:
    endpoints = ctx.registry.lookup(attempt.tenant_id, rec.provider_id)
    wants_dicom = {RecordKind.IMAGING, RecordKind.PATHOLOGY} & set(rec.kinds)
    slides_found = False
    if wants_dicom and endpoints.dicomweb_url is not None:
        base = str(endpoints.dicomweb_url).rstrip("/")
        slides_found = await retrieve_imaging(ctx, attempt, rec, base)
    if RecordKind.PATHOLOGY in rec.kinds and not slides_found:
        await request_glass_slides(ctx, attempt, rec)
    fhir_kinds = [k for k in rec.kinds if k in FHIR_KINDS]
    if fhir_kinds and endpoints.fhir_url is not None:
        base = str(endpoints.fhir_url).rstrip("/")
        await retrieve_clinical(ctx, attempt, rec, base, fhir_kinds)


# ---------------------------------------------------------------- imaging


def _wanted(study: providers.QidoStudy, kinds: list[RecordKind]) -> bool:
    is_slide = domain.WSI_MODALITY in study.modalities
    return RecordKind.PATHOLOGY in kinds if is_slide else RecordKind.IMAGING in kinds


async def retrieve_imaging(
    ctx: Retrieval, attempt: CaseAttempt, rec: ProviderRecords, base: str
) -> bool:
    """QIDO the patient's studies (current and prior), WADO each missing instance.

    Returns True if the PACS holds whole-slide images for the patient."""
    found = await providers.find_studies(ctx.client, base, rec.patient_id)
    studies = [s for s in found if _wanted(s, rec.kinds)]
    await _store_studies(ctx, attempt, rec.provider_id, studies)
    expected = sum(s.expected for s in studies)
    kind = RecordKind.IMAGING if RecordKind.IMAGING in rec.kinds else RecordKind.PATHOLOGY
    start = attempt.progress(rec, kind, "in_progress", expected=expected)
    await ctx.store.update(attempt.case_id, {}, [start])
    known = await ctx.store.instance_states(attempt.case_id)
    for study in studies:
        for inst in await providers.find_instances(ctx.client, base, study.study_uid):
            if not _already_held(ctx, known.get(inst.sop_uid)):
                await retrieve_one(ctx, attempt, rec.provider_id, base, inst)
                await _update_progress(ctx, attempt)
    return any(domain.WSI_MODALITY in s.modalities for s in studies)


def _already_held(ctx: Retrieval, prev: Doc | None) -> bool:
    return bool(
        prev
        and prev.get("state") == InstanceState.RECEIVED
        and ctx.archive.holds(prev.get("sha256", ""))
    )


async def _store_studies(
    ctx: Retrieval, attempt: CaseAttempt, provider_id: str, studies: list[providers.QidoStudy]
) -> None:
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
    await ctx.store.update(attempt.case_id, {"studies": attempt.doc["studies"]})


async def retrieve_one(
    ctx: Retrieval, attempt: CaseAttempt, provider_id: str, base: str, inst: providers.QidoInstance
) -> None:
    """Retrieve, store and check one instance; a bad file is recorded as corrupt."""
    where = {"provider_id": provider_id, "study_uid": inst.study_uid, "series_uid": inst.series_uid}
    try:
        incoming = await providers.retrieve_instance(ctx.client, base, inst, ctx.archive)
    except multipart.MultipartError as exc:
        await ctx.store.record_instance(
            attempt.case_id,
            inst.sop_uid,
            {**where, "state": InstanceState.CORRUPT, "problems": [str(exc)]},
        )
        return
    sha, path = ctx.archive.commit(incoming)
    check = await dicom.inspect(path, inst.sop_uid)
    state = InstanceState.RECEIVED if check.ok else InstanceState.CORRUPT
    fields = {
        **where,
        "state": state,
        "sha256": sha,
        "size": incoming.size,
        "path": str(path),
        "modality": check.modality or inst.modality,
        "body_part": check.body_part,
        "study_date": check.study_date,
        "problems": check.problems,
    }
    await ctx.store.record_instance(attempt.case_id, inst.sop_uid, fields)


async def _update_progress(ctx: Retrieval, attempt: CaseAttempt) -> None:
    counts = await ctx.store.count_instances(attempt.case_id)
    expected = sum(s["expected"] for s in attempt.doc.get("studies", []))
    fields = {
        "progress": {
            "expected": expected,
            "received": counts.get(InstanceState.RECEIVED, 0),
            "corrupt": counts.get(InstanceState.CORRUPT, 0),
        }
    }
    await ctx.store.update(attempt.case_id, fields)


# ---------------------------------------------------------------- pathology (physical)


async def request_glass_slides(ctx: Retrieval, attempt: CaseAttempt, rec: ProviderRecords) -> None:
    """No digital pathology at this provider: the glass slides are a tracked physical item."""
    slides = attempt.doc.get("glass_slides", {})
    if rec.provider_id in slides:
        return
    slides[rec.provider_id] = {"state": "requested", "requested_at": datetime.now(UTC)}
    attempt.doc["glass_slides"] = slides
    event = attempt.progress(
        rec, RecordKind.PATHOLOGY, "requested", reason="glass slides requested (physical item)"
    )
    await ctx.store.update(attempt.case_id, {"glass_slides": slides}, [event])


# ---------------------------------------------------------------- clinical (FHIR R4)


async def retrieve_clinical(
    ctx: Retrieval,
    attempt: CaseAttempt,
    rec: ProviderRecords,
    base: str,
    kinds: list[RecordKind],
) -> None:
    clinical = [c for c in attempt.doc.get("clinical", []) if c["provider_id"] != rec.provider_id]
    events = []
    for kind in kinds:
        resources = await providers.search_fhir(ctx.client, base, rec.patient_id, kind)
        summaries = [domain.summarise_resource(r).model_dump() for r in resources]
        clinical.append(
            {"provider_id": rec.provider_id, "kind": kind.value, "summaries": summaries}
        )
        events.append(
            attempt.progress(
                rec, kind, "received", expected=len(summaries), received=len(summaries)
            )
        )
    attempt.doc["clinical"] = clinical
    await ctx.store.update(attempt.case_id, {"clinical": clinical}, events)


# ---------------------------------------------------------------- facts for the manifest


def facts_from(doc: Doc, instances: dict[str, Doc], unreachable: dict[str, str]) -> domain.Facts:
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
