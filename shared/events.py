"""One versioned pydantic model per Kafka topic: the published contract.

Every topic is keyed by ``case_id`` so one case's events stay ordered on one
partition. Each model's ``ce_type`` names the topic and the schema version; a
consumer refuses (dead-letters) a version it does not know. New fields are
added with defaults so older consumers keep working (docs/architecture.md).

PHI travels only in the event bodies that need it (intake → records_fetch needs
patient identifiers at the provider); it never goes into keys, headers, logs or
span attributes.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, ClassVar

from annotated_types import MaxLen
from pydantic import BaseModel, ConfigDict, Field

from shared.bounds import (
    Clipped64,
    Clipped128,
    Clipped200,
    Clipped300,
    Clipped500,
    Clipped1000,
    NonEmpty64,
    Text10,
    Text32,
    Text64,
    Text128,
    Text200,
    Text2000,
    clip_items,
)


class Urgency(StrEnum):
    ROUTINE = "routine"
    PRIORITY = "priority"
    URGENT = "urgent"


class ServiceTier(StrEnum):
    """What the partner bought; it sets the review deadline (assignment/domain)."""

    IMAGING_REREAD = "imaging_reread"
    PATHOLOGY_REREVIEW = "pathology_rereview"
    SPECIALIST_OPINION = "specialist_opinion"
    MULTI_SPECIALIST = "multi_specialist"


class RecordKind(StrEnum):
    IMAGING = "imaging"
    PATHOLOGY = "pathology"
    NOTES = "notes"
    REPORTS = "reports"
    LABS = "labs"
    TREATMENTS = "treatments"


class Concordance(StrEnum):
    CONFIRMED = "confirmed"
    REFINED = "refined"
    CHANGED = "changed_diagnosis"


class Event(BaseModel):
    """Base of every topic payload."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    topic: ClassVar[str]
    version: ClassVar[int] = 1

    case_id: str = Field(min_length=1, max_length=64)
    tenant_id: str = Field(min_length=1, max_length=64)

    @classmethod
    def ce_type(cls) -> str:
        return f"org.secondopinion.{cls.topic}.v{cls.version}"


# ---------------------------------------------------------------- shared parts


# A patient's identifier at a provider, as the router sends it in a FHIR search
# (`subject=Patient/<id>`) or a QIDO query (`PatientID=<id>`): one value, never a
# list (`,` is OR in FHIR search), a wildcard (`*`, `?` in QIDO) or a path.
PATIENT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class PatientIdentifier(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    system: str = Field(min_length=1, max_length=200)
    value: str = Field(min_length=1, max_length=100)


class ProviderRecords(BaseModel):
    """Where one provider holds records, and the patient's release for it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    provider_id: str = Field(min_length=1, max_length=64)
    patient_id: str = Field(
        max_length=64,
        pattern=PATIENT_ID_PATTERN,
        description="Patient id at the provider: letters, digits, '.', '_' and '-' "
        "(no wildcards, commas, slashes or spaces: it is sent as one search value)",
    )
    kinds: Annotated[list[RecordKind], Field(min_length=1, max_length=len(RecordKind))]
    authorized: bool = Field(description="Release authorization on file for this provider")


class FirstOpinionSource(BaseModel):
    """Who gave the first opinion: what an independent reviewer must not share."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    clinician_id: Text64 = ""
    institution: Text200 = ""
    affiliations: Annotated[list[Text200], Field(max_length=20)] = []


class RoutingContext(BaseModel):
    """What every downstream stage needs to route the case; carried forward in each
    event so that no service has to read another's data or rely on cross-topic order."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    subspecialties: Annotated[list[NonEmpty64], Field(min_length=1, max_length=10)]
    urgency: Urgency = Urgency.ROUTINE
    service_tier: ServiceTier = ServiceTier.SPECIALIST_OPINION
    jurisdiction: str = Field(min_length=2, max_length=16)
    first_opinion: FirstOpinionSource = FirstOpinionSource()


# ---------------------------------------------------------------- intake


class Coding(BaseModel):
    """A coded concept as integrators send it (FHIR Coding): ICD-10-CM or SNOMED CT
    for a condition, LOINC or the RadLex playbook for a procedure, SNOMED CT for a
    body site."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    system: Text200 = ""
    code: Annotated[str, Field(min_length=1, max_length=64)]
    display: Text200 = ""


class CaseSubmittedPatient(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(min_length=1, max_length=200)
    birth_date: str = Field(max_length=10, pattern=r"^\d{4}-\d{2}-\d{2}$")
    sex: str = Field(default="unknown", max_length=8, pattern=r"^(female|male|other|unknown)$")
    jurisdiction: str = Field(min_length=2, max_length=16, description="e.g. US-CA")
    identifiers: Annotated[list[PatientIdentifier], Field(max_length=10)] = []


class CaseSubmittedFirstOpinion(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    diagnosis: str = Field(min_length=1, max_length=2000)
    treatment_plan: str = Field(default="", max_length=4000)
    report_text: str = Field(default="", max_length=20000)
    clinician_id: str = Field(default="", max_length=64)
    clinician_name: str = Field(default="", max_length=200)
    institution: str = Field(default="", max_length=200)
    affiliations: Annotated[list[Text200], Field(max_length=20)] = []


class EarlierOpinion(BaseModel):
    """An opinion already given on the same question (beyond the first opinion):
    intake links it and flags a long chain of opinions."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    reference: str = Field(
        min_length=1, max_length=128, description="Earlier case id here, or the issuer's reference"
    )
    diagnosis: str = Field(default="", max_length=2000)
    institution: str = Field(default="", max_length=200)
    given_on: str | None = Field(default=None, max_length=10, pattern=r"^\d{4}-\d{2}-\d{2}$")


class CaseSubmission(BaseModel):
    """A case as an integrator sends it (native JSON), over HTTP or Kafka."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    external_id: str = Field(
        min_length=1, max_length=128, description="The integrator's own reference; idempotency key"
    )
    patient: CaseSubmittedPatient
    question: str = Field(min_length=10, max_length=4000)
    first_opinion: CaseSubmittedFirstOpinion
    urgency: Urgency = Urgency.ROUTINE
    service_tier: ServiceTier = ServiceTier.SPECIALIST_OPINION
    records: Annotated[list[ProviderRecords], Field(min_length=1, max_length=20)]
    treating_clinician_email: str = Field(default="", max_length=200)
    earlier_opinions: list[EarlierOpinion] = Field(default=[], max_length=20)
    treatment_start_date: str | None = Field(
        default=None,
        max_length=10,
        pattern=r"^\d{4}-\d{2}-\d{2}$",
        description="Planned start of treatment",
    )
    symptoms_status: str = Field(
        default="unknown", max_length=16, pattern=r"^(persistent|improving|resolved|unknown)$"
    )
    # Coded data, read first when routing (docs/clinical-rules.md): the conditions
    # in question (FHIR: Condition.code, ServiceRequest.reasonCode), the requested
    # procedure (ServiceRequest.code) and the body sites (ServiceRequest.bodySite).
    diagnoses: Annotated[list[Coding], Field(max_length=20)] = []
    procedures: Annotated[list[Coding], Field(max_length=20)] = []
    body_sites: Annotated[list[Coding], Field(max_length=10)] = []
    # The integrator's own request this case fulfils (FHIR: the ServiceRequest's
    # reference, e.g. "ServiceRequest/123" or its identifier), for the report's basedOn.
    request_reference: Text200 = ""


class CaseSubmitted(BaseModel):
    """`case.submitted`: keyed by the integrator's external_id (no case_id yet)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    topic: ClassVar[str] = "case.submitted"
    version: ClassVar[int] = 1
    tenant_id: str = Field(min_length=1, max_length=64)
    submission: CaseSubmission

    @classmethod
    def ce_type(cls) -> str:
        return f"org.secondopinion.{cls.topic}.v{cls.version}"


class RoutingFinding(BaseModel):
    """A concept intake read in the case (docs/clinical-rules.md): the words or code
    that named it, where, and the context that qualified it (current, negated,
    family, hypothetical, historical, uncertain) with the words that set it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    concept: Clipped64
    words: Clipped200
    source: Clipped128
    context: Clipped64 = "current"
    cue: Clipped200 = ""


class CaseAccepted(Event):
    topic: ClassVar[str] = "case.accepted"
    external_id: Text128
    routing: RoutingContext
    records: Annotated[list[ProviderRecords], Field(max_length=20)]
    triage_signals: Annotated[list[Clipped64], clip_items(20), MaxLen(20)] = []
    # Why intake routed it so (docs/intake.md): signal/subspecialty name -> reason.
    triage_reasons: Annotated[dict[Clipped64, Clipped500], clip_items(20), MaxLen(20)] = {}
    subspecialty_reasons: Annotated[dict[Clipped64, Clipped500], clip_items(20), MaxLen(20)] = {}
    # What the routing was read from, and the needed reviewers the service tier does
    # not cover (routed all the same: a decision for operations, with its reason).
    findings: Annotated[list[RoutingFinding], clip_items(40), MaxLen(40)] = []
    beyond_tier: Annotated[dict[Clipped64, Clipped1000], clip_items(10), MaxLen(10)] = {}
    urgency_reason: Clipped500 = ""
    earlier_case_ids: Annotated[list[Text128], Field(max_length=20)] = []
    treatment_start_date: Text10 | None = None
    # What the report must name (docs/reporting.md): whom it is about, the question,
    # the opinion under review, to whom it goes and the coded data. PHI: this topic
    # already carries the patient's identifiers at the providers (docs/security.md).
    patient: CaseSubmittedPatient | None = None
    question: Annotated[str, Field(max_length=4000)] = ""
    first_opinion: CaseSubmittedFirstOpinion | None = None
    treating_clinician_email: Text200 = ""
    request_reference: Text200 = ""
    diagnoses: Annotated[list[Coding], Field(max_length=20)] = []
    procedures: Annotated[list[Coding], Field(max_length=20)] = []
    body_sites: Annotated[list[Coding], Field(max_length=10)] = []


class FieldError(BaseModel):
    model_config = ConfigDict(frozen=True)
    loc: Clipped200
    msg: Clipped500
    type: Clipped64


class CaseRejected(Event):
    topic: ClassVar[str] = "case.rejected"
    external_id: Clipped128
    errors: Annotated[list[FieldError], clip_items(50), MaxLen(50)]


class CaseStatusChanged(Event):
    """`case.status`: intake's view of a case moved (docs/architecture.md): the stage
    reached and, in plain words, what the case now waits for. Followed by the
    operations view; no PHI beyond the ids."""

    topic: ClassVar[str] = "case.status"
    stage: Text64
    previous_stage: Text64 = ""
    waiting_for: Annotated[list[Clipped300], clip_items(20), MaxLen(20)] = []
    subspecialties: Annotated[list[Text64], Field(max_length=10)] = []
    urgency: Urgency = Urgency.ROUTINE
    service_tier: ServiceTier = ServiceTier.SPECIALIST_OPINION
    changed_at: datetime


class CaseRerouted(Event):
    """`case.rerouted`: intake re-checked the reviewers a case needs once its images
    were known (records.complete: DICOM Modality, BodyPartExamined, study
    description) and the set changed (docs/clinical-rules.md, "The images").
    `routing` is the whole new routing; assignment opens a slot for each added
    subspecialty and withdraws only the unaccepted slots of the removed ones."""

    topic: ClassVar[str] = "case.rerouted"
    routing: RoutingContext
    added: Annotated[dict[Clipped64, Clipped500], clip_items(10), MaxLen(10)] = {}
    removed: Annotated[dict[Clipped64, Clipped500], clip_items(10), MaxLen(10)] = {}
    subspecialty_reasons: Annotated[dict[Clipped64, Clipped500], clip_items(20), MaxLen(20)] = {}
    rerouted_at: datetime


# ---------------------------------------------------------------- records_fetch


class RecordsRequested(Event):
    topic: ClassVar[str] = "records.requested"
    provider_id: Text64
    kinds: Annotated[list[RecordKind], Field(max_length=len(RecordKind))]


class RecordsProgress(Event):
    topic: ClassVar[str] = "records.progress"
    provider_id: Text64
    kind: RecordKind
    state: str = Field(max_length=16, pattern=r"^(requested|in_progress|received|failed)$")
    expected: int = 0
    received: int = 0
    reason: Clipped500 = ""


class StudySummary(BaseModel):
    """One imaging study retrieved, as the report's "materials reviewed" lists it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    study_uid: Text64
    modality: Clipped64 = ""
    study_date: Text10 = ""
    description: Clipped200 = ""
    instances: int = 0
    # DICOM BodyPartExamined (0018,0015) of the instances received, comma-separated:
    # intake re-checks the routing with it (docs/clinical-rules.md, "The images").
    body_part: Clipped64 = ""


class ImageLink(BaseModel):
    """A study the reviewer opens in the review organisation's PACS viewer."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    study_uid: Text64
    modality: Clipped64 = ""
    study_date: Text10 = ""
    description: Clipped200 = ""
    viewer_url: Annotated[str, Field(max_length=500)]


class ManifestItem(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: RecordKind
    present: bool
    count: int = 0
    detail: Clipped500 = ""
    # For imaging: the studies retrieved (the first 20).
    studies: Annotated[list[StudySummary], clip_items(20), MaxLen(20)] = []


class RecordsComplete(Event):
    topic: ClassVar[str] = "records.complete"
    routing: RoutingContext
    manifest: Annotated[list[ManifestItem], clip_items(10), MaxLen(10)]
    completed_at: datetime
    override_reason: Clipped1000 = ""
    # Every study records_fetch imported into the review organisation's PACS, with
    # the link its viewer opens (none when no review PACS is configured).
    images: Annotated[list[ImageLink], clip_items(20), MaxLen(20)] = []


class RecordsIncomplete(Event):
    """`records.incomplete`: items still missing after a retrieval attempt; told to
    the integrator (via notify) while records_fetch re-requests them with backoff."""

    topic: ClassVar[str] = "records.incomplete"
    missing: Annotated[list[ManifestItem], clip_items(10), MaxLen(10)]
    attempt: int = 1
    next_retry_at: datetime | None = None
    gave_up: bool = False


# ---------------------------------------------------------------- assignment


class CaseAssigned(Event):
    topic: ClassVar[str] = "case.assigned"
    assignment_id: Text128
    reviewer_id: Text64
    subspecialty: Text64
    due_at: datetime
    reason: Clipped1000
    # Who the reviewer is, as the signed opinion names them (reporting does not own the roster).
    reviewer_name: str = Field(default="", max_length=200)
    reviewer_credentials: str = Field(default="", max_length=300, description="e.g. MD, ABR CAQ")
    # The reviewer's US National Provider Identifier (10 digits) and the licence
    # under which they review this case (the case's jurisdiction, e.g. US-CA): the
    # report names both, and its FHIR performer carries the NPI.
    reviewer_npi: str = Field(
        default="", max_length=10, pattern=r"^(|\d{10})$", description="10-digit NPI"
    )
    reviewer_licence_jurisdiction: Text32 = ""
    # The case's studies in the review PACS viewer (from records.complete's images).
    images: Annotated[list[ImageLink], clip_items(20), MaxLen(20)] = []


class CaseReassigned(Event):
    topic: ClassVar[str] = "case.reassigned"
    assignment_id: Text128
    from_reviewer_id: Text64
    to_reviewer_id: Text64 = ""
    reason: Clipped1000
    # The subspecialty is no longer needed (case.rerouted): the offer is withdrawn
    # and handed to no one, by design rather than for want of a reviewer.
    withdrawn: bool = False


class CaseUnassignable(Event):
    """`case.unassignable`: no eligible reviewer; an alert for operations."""

    topic: ClassVar[str] = "case.unassignable"
    subspecialty: Text64
    reason: Clipped1000
    # Why each reviewer was not chosen (the first 100 of a large roster).
    excluded: Annotated[dict[Clipped64, Clipped300], clip_items(100), MaxLen(100)] = {}


class SlaWarning(Event):
    topic: ClassVar[str] = "sla.warning"
    assignment_id: Text128
    due_at: datetime
    fraction_elapsed: float


class SlaBreached(Event):
    topic: ClassVar[str] = "sla.breached"
    assignment_id: Text128
    due_at: datetime
    escalation_level: int = 0


# ---------------------------------------------------------------- reporting


class ReportSubmitted(Event):
    topic: ClassVar[str] = "report.submitted"
    report_id: Text128
    reviewer_id: Text64
    assignment_id: Text128 = ""
    concordance: Concordance


class ReportLinks(BaseModel):
    """Where an authorised partner fetches the report: absolute URLs on the
    reporting API (its public base URL), each needing the partner's API key."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    report: Text2000 = Field(description="Absolute URL of the signed report (JSON)")
    fhir: Text2000 = Field(default="", description="Absolute URL of the FHIR DiagnosticReport")
    pdf: Text2000 = Field(default="", description="Absolute URL of the PDF")
    signature: Text2000 = Field(default="", description="Absolute URL of the detached signatures")


class ReportReady(Event):
    """`report.ready`: links to fetch the signed report, not the PHI payload itself."""

    topic: ClassVar[str] = "report.ready"
    report_id: Text128
    reviewer_id: Text64
    concordance: Concordance
    signed_at: datetime
    content_sha256: Text64
    links: ReportLinks


class ReportAddendum(Event):
    """`report.addendum`: a signed answer to a follow-up question was appended to a
    report (the report itself is never edited); links, not the PHI payload."""

    topic: ClassVar[str] = "report.addendum"
    report_id: Text128
    addendum_id: Text128
    reviewer_id: Text64
    signed_at: datetime
    content_sha256: Text64
    links: ReportLinks


# ---------------------------------------------------------------- notify


class NotificationDelivered(Event):
    topic: ClassVar[str] = "notification.delivered"
    delivery_id: Text128
    event_type: Text64
    channel: Text32
    subscription_id: Text128 = ""
    status: str = Field(max_length=16, pattern=r"^(delivered|dead_letter)$")
    # Whom it was for (the subscription's audience): intake's status keeps delivery
    # per audience and a case is `delivered` when the tenant's policy's audiences
    # have the report (docs/intake.md). Older producers meant the partner.
    audience: str = Field(
        default="partner",
        max_length=32,
        pattern=r"^(partner|treating_clinician|patient_portal)$",
    )


TOPIC_MODELS: dict[str, type[BaseModel]] = {
    m.topic: m
    for m in (
        CaseSubmitted,
        CaseAccepted,
        CaseRejected,
        CaseStatusChanged,
        CaseRerouted,
        RecordsRequested,
        RecordsProgress,
        RecordsComplete,
        RecordsIncomplete,
        CaseAssigned,
        CaseUnassignable,
        CaseReassigned,
        SlaWarning,
        SlaBreached,
        ReportSubmitted,
        ReportReady,
        ReportAddendum,
        NotificationDelivered,
    )
}


def dead_letter_topic(topic: str) -> str:
    return f"{topic}.dlq"


ALL_TOPICS: list[str] = [*TOPIC_MODELS, *(dead_letter_topic(t) for t in TOPIC_MODELS)]


# ---------------------------------------------------------------- partner channels
#
# A partner reads its own tenant's events only: each partner-facing event is also
# published on a topic of that tenant's own, ``partner.<tenant>.<topic>``, which
# the tenant's Kafka user may read (a prefixed ACL on ``partner.<tenant>.``,
# deploy/k8s/base/kafka-partner-users.yaml). The shared topics (``report.ready``)
# carry every tenant's events and are for the router's own services.

# The events published on the partner channels (by their emitting service's outbox).
PARTNER_TOPICS: tuple[str, ...] = ("report.ready",)
PARTNER_PREFIX = "partner."
# A tenant id that names a channel: lower-case letters, digits and inner hyphens,
# at most 63 characters (a DNS label, so it also names the tenant's KafkaUser). No
# dot: with it, the ACL prefix `partner.acme.` of tenant `acme` would also match
# a tenant called `acme.eu`.
TENANT_ID_PATTERN = r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$"
_TENANT_ID = re.compile(TENANT_ID_PATTERN)


def is_channel_tenant(tenant_id: str) -> bool:
    return bool(_TENANT_ID.fullmatch(tenant_id))


def partner_prefix(tenant_id: str) -> str:
    """`partner.<tenant>.`: the prefix of every topic of one tenant's partner channel."""
    if not is_channel_tenant(tenant_id):
        raise ValueError(f"tenant id {tenant_id!r} does not match {TENANT_ID_PATTERN}")
    return f"{PARTNER_PREFIX}{tenant_id}."


def partner_topic(tenant_id: str, topic: str) -> str:
    """The tenant's own copy of a partner-facing topic, e.g.
    ``partner.demo-health.report.ready``."""
    if topic not in PARTNER_TOPICS:
        raise ValueError(f"{topic!r} is not published on partner channels")
    return f"{partner_prefix(tenant_id)}{topic}"
