"""records_fetch's domain, free of I/O: the provider registry (the only
endpoints we may call), what a case needs (the completeness rules per service
tier and subspecialty), the checks on each retrieved DICOM instance, the
summaries of clinical records, the completeness manifest and the re-request
backoff.

The manifest is built from *facts* gathered by the adapters (studies and
instances seen at the PACS, FHIR resources found, glass slides requested) and
the case's *requirements*; it says per requirement what is present and what is
missing, and why, so the integrator can act on it.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field

from shared.events import ManifestItem, RecordKind, ServiceTier, StudySummary
from shared.providers import ProviderEndpoints as ProviderEndpoints
from shared.providers import ProviderRegistry as ProviderRegistry
from shared.vocabulary import Subspecialty

# ---------------------------------------------------------------- provider registry


# The registry itself is shared/providers.py: intake reads it too, to refuse a case
# naming a provider not registered for its tenant.


def within_base(url: str, base: str) -> bool:
    """True if `url` lies under the registered `base`: the same origin (scheme, host,
    port, no user info) and a path that is the base path or below it, with no dot
    segment and no escaped slash or dot that a server could resolve elsewhere. A
    provider's paging link may not send us anywhere else."""
    try:
        link, home = httpx.URL(url), httpx.URL(base.rstrip("/"))
    except (httpx.InvalidURL, TypeError, ValueError):
        return False
    if (link.scheme, link.host, link.port) != (home.scheme, home.host, home.port):
        return False
    if link.userinfo or link.fragment or not link.scheme or not link.host:
        return False
    raw_path = link.raw_path.split(b"?", 1)[0].decode("ascii", "replace")
    if any(esc in raw_path.lower() for esc in ("%2e", "%2f", "%5c", "\\")):
        return False
    segments = raw_path.split("/")
    if any(seg in (".", "..") for seg in segments):
        return False
    home_path = home.raw_path.split(b"?", 1)[0].decode("ascii", "replace").rstrip("/")
    return raw_path.rstrip("/") == home_path or raw_path.startswith(home_path + "/")


# FHIR resource types that hold each kind of clinical record.
FHIR_TYPES: dict[RecordKind, tuple[str, ...]] = {
    RecordKind.NOTES: ("DocumentReference",),
    RecordKind.REPORTS: ("DiagnosticReport",),
    RecordKind.LABS: ("Observation",),
    RecordKind.TREATMENTS: ("MedicationStatement", "Procedure"),
}

# Whole-slide images travel over DICOMweb like any study, with this modality.
WSI_MODALITY = "SM"
# VL Whole Slide Microscopy Image Storage: what satisfies a pathology requirement
# digitally (a study labelled SM holding other images, e.g. a photo, does not).
WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"

# ---------------------------------------------------------------- what a case needs


class Requirement(StrEnum):
    """One thing a reviewer needs, in the field's words."""

    ORIGINAL_IMAGES = "original_images"
    PRIOR_STUDIES = "prior_studies"
    ORIGINAL_REPORT = "original_report"
    PATHOLOGY = "pathology"
    CLINICAL_NOTES = "clinical_notes"
    LABS = "labs"
    TREATMENT_HISTORY = "treatment_history"


REQUIREMENT_KIND: dict[Requirement, RecordKind] = {
    Requirement.ORIGINAL_IMAGES: RecordKind.IMAGING,
    Requirement.PRIOR_STUDIES: RecordKind.IMAGING,
    Requirement.ORIGINAL_REPORT: RecordKind.REPORTS,
    Requirement.PATHOLOGY: RecordKind.PATHOLOGY,
    Requirement.CLINICAL_NOTES: RecordKind.NOTES,
    Requirement.LABS: RecordKind.LABS,
    Requirement.TREATMENT_HISTORY: RecordKind.TREATMENTS,
}

# A re-read compares with earlier studies; the report is what is being re-read.
IMAGING_REREAD = (
    Requirement.ORIGINAL_IMAGES,
    Requirement.ORIGINAL_REPORT,
    Requirement.PRIOR_STUDIES,
)
# A pathology re-review needs the slides, the pathology report and the clinical context.
PATHOLOGY_REREVIEW = (
    Requirement.PATHOLOGY,
    Requirement.ORIGINAL_REPORT,
    Requirement.CLINICAL_NOTES,
)
# An oncology opinion: pathology, staging imaging, the notes and the treatment so far.
ONCOLOGY = (
    Requirement.PATHOLOGY,
    Requirement.ORIGINAL_IMAGES,
    Requirement.CLINICAL_NOTES,
    Requirement.TREATMENT_HISTORY,
)
# Any specialist opinion: the work-up so far.
SPECIALIST = (
    Requirement.CLINICAL_NOTES,
    Requirement.ORIGINAL_REPORT,
    Requirement.LABS,
    Requirement.TREATMENT_HISTORY,
)


def requirements_for(tier: ServiceTier, subspecialties: Iterable[str]) -> list[Requirement]:
    """What the case's manifest must hold, from what the partner bought and the question.

    An imaging re-read or a pathology re-review is bounded by the tier (a
    re-read of a glioma MRI needs the images, not the chemotherapy history);
    specialist opinions add what each subspecialty reads (shared.vocabulary's
    `Subspecialty.needs`, the one definition every service uses)."""
    if tier is ServiceTier.IMAGING_REREAD:
        return list(IMAGING_REREAD)
    if tier is ServiceTier.PATHOLOGY_REREVIEW:
        return list(PATHOLOGY_REREVIEW)
    needed: list[Requirement] = list(SPECIALIST)
    for code in subspecialties:
        try:
            sub = Subspecialty(code)
        except ValueError:  # not of the shared vocabulary: the specialist work-up only
            continue
        needs = sub.needs
        if sub.is_oncology:
            needed += ONCOLOGY
        if needs.imaging_reread:
            needed += IMAGING_REREAD
        if needs.reads_pathology:
            needed += PATHOLOGY_REREVIEW
        if needs.needs_imaging:
            needed.append(Requirement.ORIGINAL_IMAGES)
    return sorted(set(needed), key=list(Requirement).index)


# ---------------------------------------------------------------- DICOM instances


class InstanceState(StrEnum):
    PENDING = "pending"
    RECEIVED = "received"
    CORRUPT = "corrupt"


class InstanceCheck(BaseModel):
    """What the validation of one retrieved instance found."""

    ok: bool
    problems: list[str] = []
    # The file names another patient (or none): refused, never stored.
    foreign_patient: bool = False
    modality: str = ""
    body_part: str = ""
    study_date: str = ""
    sop_class: str = ""


def expected_pixel_bytes(attrs: dict[str, Any]) -> int | None:
    """Length native (uncompressed) pixel data must have; None when not computable."""
    try:
        rows, cols = int(attrs["Rows"]), int(attrs["Columns"])
        bits, samples = int(attrs["BitsAllocated"]), int(attrs.get("SamplesPerPixel") or 1)
        frames = int(attrs.get("NumberOfFrames") or 1)
    except (KeyError, TypeError, ValueError):
        return None
    return (rows * cols * samples * frames * bits + 7) // 8


def check_instance(
    attrs: dict[str, Any], expected_sop_uid: str, expected_patient_id: str | None = None
) -> InstanceCheck:
    """Check the attributes read from one instance against what QIDO promised.

    `attrs` holds the DICOM keywords read from the file plus `_pixel_bytes`
    (length of PixelData as stored, None if absent) and `_compressed`."""
    problems: list[str] = []
    if attrs.get("SOPInstanceUID") != expected_sop_uid:
        problems.append("SOP Instance UID differs from the one requested")
    foreign = expected_patient_id is not None and (
        str(attrs.get("PatientID") or "").strip() != expected_patient_id.strip()
    )
    if foreign:
        problems.append("the instance is of another patient")
    if not attrs.get("Modality"):
        problems.append("no Modality")
    pixel_bytes = attrs.get("_pixel_bytes")
    if attrs.get("Rows") and pixel_bytes is None:
        problems.append("pixel data missing (truncated file?)")
    elif pixel_bytes is not None and not attrs.get("_compressed"):
        want = expected_pixel_bytes(attrs)
        if want is not None and pixel_bytes < want:
            problems.append(f"pixel data truncated ({pixel_bytes} of {want} bytes)")
    return InstanceCheck(
        ok=not problems,
        problems=problems,
        foreign_patient=foreign,
        modality=str(attrs.get("Modality") or ""),
        body_part=str(attrs.get("BodyPartExamined") or ""),
        study_date=str(attrs.get("StudyDate") or ""),
        sop_class=str(attrs.get("SOPClassUID") or ""),
    )


# ---------------------------------------------------------------- facts gathered


class StudyFacts(BaseModel):
    """One study at a provider's PACS and how far its retrieval got."""

    provider_id: str
    study_uid: str
    study_date: str = ""
    modalities: list[str] = []
    body_parts: list[str] = []
    description: str = ""
    expected: int = 0
    received: int = 0
    corrupt: list[str] = Field(default=[], description="Names of corrupt instances (SOP UIDs)")
    # Received instances of the VL Whole Slide Microscopy SOP class (WSI_SOP_CLASS).
    wsi_instances: int = 0

    @property
    def whole(self) -> bool:
        return self.expected > 0 and self.received >= self.expected and not self.corrupt

    @property
    def is_slide(self) -> bool:
        return WSI_MODALITY in self.modalities


class ClinicalSummary(BaseModel):
    """One FHIR resource reduced to what a reviewer scans first."""

    resource_type: str
    date: str = ""
    text: str = ""
    dose: str = ""
    status: str = ""
    outcome: str = ""
    value: str = ""


class Facts(BaseModel):
    """Everything one retrieval attempt learnt about the case's records."""

    studies: list[StudyFacts] = []
    clinical: dict[RecordKind, list[ClinicalSummary]] = {}
    glass_slides_requested: list[str] = Field(default=[], description="provider ids")
    glass_slides_received: list[str] = []
    unreachable: dict[str, str] = Field(default={}, description="provider id → reason")
    identifier_refused: dict[str, str] = Field(
        default={}, description="provider id → why its patient identifier was refused"
    )
    not_requested: list[RecordKind] = Field(
        default=[], description="kinds no provider was asked for"
    )


def _first(items: Iterable[Any]) -> Any:
    return next(iter(items), None)


def _codeable_text(concept: Any) -> str:
    if not isinstance(concept, dict):
        return ""
    coding = _first(concept.get("coding") or []) or {}
    return str(concept.get("text") or coding.get("display") or coding.get("code") or "")


def _resource_date(res: dict[str, Any]) -> str:
    for key in ("effectiveDateTime", "performedDateTime", "issued", "date", "authoredOn"):
        if res.get(key):
            return str(res[key])[:10]
    for key in ("effectivePeriod", "performedPeriod"):
        if isinstance(res.get(key), dict) and res[key].get("start"):
            return str(res[key]["start"])[:10]
    return ""


def _dose(res: dict[str, Any]) -> str:
    dosage = _first(res.get("dosage") or []) or {}
    if dosage.get("text"):
        return str(dosage["text"])
    dose = (_first(dosage.get("doseAndRate") or []) or {}).get("doseQuantity") or {}
    return f"{dose.get('value', '')} {dose.get('unit', '')}".strip()


def _value(res: dict[str, Any]) -> str:
    qty = res.get("valueQuantity")
    if isinstance(qty, dict):
        return f"{qty.get('value', '')} {qty.get('unit', '')}".strip()
    return str(res.get("valueString") or _codeable_text(res.get("valueCodeableConcept")))


def summarise_resource(res: dict[str, Any]) -> ClinicalSummary:
    """Dates, doses and outcomes of one FHIR R4 resource, whatever its type."""
    text = _codeable_text(
        res.get("code") or res.get("medicationCodeableConcept") or res.get("type")
    )
    return ClinicalSummary(
        resource_type=str(res.get("resourceType", "")),
        date=_resource_date(res),
        text=text or str(res.get("description") or ""),
        dose=_dose(res),
        status=str(res.get("status") or ""),
        outcome=str(res.get("conclusion") or _codeable_text(res.get("outcome"))),
        value=_value(res),
    )


# ---------------------------------------------------------------- the manifest


class CompletenessManifest(BaseModel):
    """Per requirement: present or missing, and the why."""

    requirements: list[Requirement]
    items: list[ManifestItem]
    expected_instances: int = 0
    received_instances: int = 0

    @property
    def missing(self) -> list[ManifestItem]:
        return [i for i in self.items if not i.present]

    @property
    def complete(self) -> bool:
        return not self.missing


def current_and_priors(studies: list[StudyFacts]) -> tuple[StudyFacts | None, list[StudyFacts]]:
    """The most recent radiology study is the one re-read; earlier ones are priors."""
    radiology = sorted(
        (s for s in studies if not s.is_slide), key=lambda s: s.study_date, reverse=True
    )
    if not radiology:
        return None, []
    current = radiology[0]
    return current, [s for s in radiology[1:] if s.study_date < current.study_date]


def _study_detail(s: StudyFacts) -> str:
    parts = [f"{s.received}/{s.expected} instances", ",".join(s.modalities) or "?"]
    if s.body_parts:
        parts.append(",".join(s.body_parts))
    if s.study_date:
        parts.append(s.study_date)
    if s.corrupt:
        parts.append("corrupt: " + ", ".join(s.corrupt))
    if s.is_slide and s.whole and not s.wsi_instances:
        parts.append("no VL Whole Slide Microscopy image among them")
    return " ".join(parts)


def _item(req: Requirement, present: bool, count: int, detail: str) -> ManifestItem:
    return ManifestItem(
        kind=REQUIREMENT_KIND[req], present=present, count=count, detail=f"{req.value}: {detail}"
    )


def _why_missing(kind: RecordKind, facts: Facts, what: str) -> str:
    """Why nothing of `kind` is there, `what` naming the absence ("no prior study"):
    "no prior study found at the provider", "no study: imaging not requested from any
    provider" (read by integrators in intake's status: plain words, no double negation)."""
    if kind in facts.not_requested:
        return f"{what}: {kind.value} not requested from any provider"
    if facts.identifier_refused:
        refused = ", ".join(sorted(facts.identifier_refused))
        return f"{what}: patient identifier refused (not requested) for: {refused}"
    if facts.unreachable:
        return f"{what}: provider unreachable: " + ", ".join(sorted(facts.unreachable))
    return f"{what} found at the provider"


def _imaging_item(req: Requirement, facts: Facts) -> ManifestItem:
    current, priors = current_and_priors(facts.studies)
    if req is Requirement.ORIGINAL_IMAGES:
        if current is None:
            return _item(req, False, 0, _why_missing(RecordKind.IMAGING, facts, "no study"))
        item = _item(req, current.whole, current.received, _study_detail(current))
        return item.model_copy(update={"studies": [study_summary(current)]})
    whole = [p for p in priors if p.whole]
    if whole:
        item = _item(req, True, len(whole), "; ".join(_study_detail(p) for p in whole))
        return item.model_copy(update={"studies": [study_summary(p) for p in whole[:20]]})
    if priors:
        return _item(req, False, 0, "; ".join(_study_detail(p) for p in priors))
    return _item(req, False, 0, _why_missing(RecordKind.IMAGING, facts, "no prior study"))


def study_summary(s: StudyFacts) -> StudySummary:
    """A retrieved study as records.complete carries it: what the images are (DICOM
    Modality, BodyPartExamined, StudyDescription), which intake re-routes with."""
    return StudySummary(
        study_uid=s.study_uid,
        modality=",".join(s.modalities),
        study_date=s.study_date,
        description=s.description,
        instances=s.received,
        body_part=",".join(s.body_parts),
    )


def _pathology_item(req: Requirement, facts: Facts) -> ManifestItem:
    slides = [s for s in facts.studies if s.is_slide]
    if any(s.whole and s.wsi_instances for s in slides):
        count = sum(s.wsi_instances for s in slides if s.whole)
        return _item(req, True, count, "whole-slide images received")
    if facts.glass_slides_received:
        return _item(req, True, len(facts.glass_slides_received), "glass slides received")
    if slides:
        return _item(req, False, 0, "; ".join(_study_detail(s) for s in slides))
    if facts.glass_slides_requested:
        providers = ", ".join(facts.glass_slides_requested)
        return _item(req, False, 0, f"glass slides requested from {providers}, not yet received")
    return _item(req, False, 0, _why_missing(RecordKind.PATHOLOGY, facts, "no pathology"))


def clinical_detail(summaries: list[ClinicalSummary]) -> str:
    """Counts by type and the date range: enough to judge, without the contents."""
    by_type: dict[str, int] = {}
    for s in summaries:
        by_type[s.resource_type] = by_type.get(s.resource_type, 0) + 1
    dates = sorted(s.date for s in summaries if s.date)
    span = f" ({dates[0]}..{dates[-1]})" if dates else ""
    return ", ".join(f"{n} {t}" for t, n in sorted(by_type.items())) + span


def _clinical_item(req: Requirement, facts: Facts) -> ManifestItem:
    kind = REQUIREMENT_KIND[req]
    found = facts.clinical.get(kind, [])
    if found:
        return _item(req, True, len(found), clinical_detail(found))
    return _item(req, False, 0, _why_missing(kind, facts, f"no {kind.value}"))


def build_manifest(requirements: list[Requirement], facts: Facts) -> CompletenessManifest:
    items = []
    for req in requirements:
        if req in (Requirement.ORIGINAL_IMAGES, Requirement.PRIOR_STUDIES):
            items.append(_imaging_item(req, facts))
        elif req is Requirement.PATHOLOGY:
            items.append(_pathology_item(req, facts))
        else:
            items.append(_clinical_item(req, facts))
    return CompletenessManifest(
        requirements=requirements,
        items=items,
        expected_instances=sum(s.expected for s in facts.studies),
        received_instances=sum(s.received for s in facts.studies),
    )


# ---------------------------------------------------------------- re-requests


class RetryPolicy(BaseModel):
    """Exponential backoff between re-requests of missing items, with a cap."""

    model_config = ConfigDict(frozen=True)
    base_seconds: float = 30.0
    max_delay_seconds: float = 3600.0
    max_attempts: int = 8

    def delay(self, attempt: int) -> timedelta:
        """Wait after failed attempt number `attempt` (1-based)."""
        seconds = self.base_seconds * 2 ** max(0, attempt - 1)
        return timedelta(seconds=min(self.max_delay_seconds, seconds))

    def next_retry(self, attempt: int, now: datetime) -> datetime | None:
        """When to try again, or None once the cap is reached (a human decides then)."""
        if attempt >= self.max_attempts:
            return None
        return now + self.delay(attempt)
