"""Intake's domain rules, free of I/O: the case identity, release authorization,
triage signals, urgency, the subspecialties the clinical question needs, the
links to earlier opinions and the flags that hold a case for a human.

The wording of the rules comes from the field (docs/intake.md); each
signal and inference carries the phrase that triggered it so an operator can
see why a case was routed the way it was.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime

from services.intake import clinical, progress
from services.intake.clinical.nlp import Mention
from services.intake.documents import (
    CaseDocument,
    MentionRecord,
    RerouteRecord,
    SubspecialtyRecord,
)
from shared.events import (
    CaseAccepted,
    CaseRerouted,
    CaseSubmission,
    FirstOpinionSource,
    ManifestItem,
    ProviderRecords,
    RoutingContext,
    RoutingFinding,
    StudySummary,
    Urgency,
)
from shared.vocabulary import Subspecialty

CASE_NAMESPACE = uuid.UUID("6f2b1c3e-6a53-4c1b-9d0e-2d8f0e8a7c11")

# Stages a case goes through, in order (services/intake/progress.py).
STAGES = progress.STAGES


def case_id_for(tenant_id: str, external_id: str) -> str:
    """The same submission (tenant + the integrator's reference) is the same case."""
    return "case-" + uuid.uuid5(CASE_NAMESPACE, f"{tenant_id}\x1f{external_id}").hex[:20]


def submission_fingerprint(submission: CaseSubmission) -> str:
    return hashlib.sha256(submission.model_dump_json().encode()).hexdigest()


def stage_rank(stage: str) -> int:
    return progress.stage_rank(stage)


def missing_authorizations(submission: CaseSubmission) -> list[str]:
    """Providers whose release the patient has not yet authorized."""
    return [r.provider_id for r in submission.records if not r.authorized]


@dataclass(frozen=True)
class Finding:
    """A signal or an inference, with the phrase that triggered it."""

    name: str
    reason: str


@dataclass(frozen=True)
class SubspecialtyFinding:
    """A subspecialty the question needs (shared.vocabulary), with the words that chose it."""

    name: Subspecialty
    reason: str


def _search(pattern: str, text: str) -> str | None:
    m = re.search(pattern, text)
    return m.group(0) if m else None


# ---------------------------------------------------------------- clinical routing
# The rules of the field live in services/intake/clinical (rules/*.yaml, read with
# clinical context); these functions are intake's view of them.

LOW_VALUE = clinical.routing.LOW_VALUE


def infer_subspecialties(s: CaseSubmission) -> list[SubspecialtyFinding]:
    """The reviewers the case needs (primary first), each with the words that chose it."""
    return [SubspecialtyFinding(n.subspecialty, n.reason) for n in clinical.route(s).needed]


def case_text(s: CaseSubmission) -> str:
    fo = s.first_opinion
    return "\n".join((s.question, fo.diagnosis, fo.report_text, fo.treatment_plan)).lower()


def conflicting_earlier(s: CaseSubmission) -> Finding | None:
    """An earlier opinion on the same question whose diagnosis differs from the first."""
    first = _normalised(s.first_opinion.diagnosis)
    for earlier in s.earlier_opinions:
        if earlier.diagnosis and _normalised(earlier.diagnosis) != first:
            return Finding(
                "conflicting_opinions",
                f"earlier opinion {earlier.reference!r} differs from the first opinion",
            )
    return None


def _normalised(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9 ]", " ", text.lower()).split())


def _signals(s: CaseSubmission, routing: clinical.ClinicalRouting) -> list[Finding]:
    found = [Finding(r.name, r.reason) for r in routing.signals]
    if (earlier := conflicting_earlier(s)) and earlier.name not in {f.name for f in found}:
        found.append(earlier)
    return found


def triage_signals(s: CaseSubmission) -> list[Finding]:
    """Every signal found, high-value and low-value, each with its reason."""
    return _signals(s, clinical.route(s))


def second_opinion_value(signals: list[Finding]) -> str:
    """'high' when any signal says it is worth it, 'low' when only low-value ones."""
    names = {f.name for f in signals}
    if names - LOW_VALUE:
        return "high"
    return "low" if names else "standard"


# ---------------------------------------------------------------- urgency

URGENT_TERMS = (
    r"cord compression|rapidly progressive|rapidly growing|impending|acute stroke"
    r"|surgery (is )?(scheduled )?(for )?(tomorrow|this week)"
)
URGENCY_ORDER = (Urgency.ROUTINE, Urgency.PRIORITY, Urgency.URGENT)


def assess_urgency(s: CaseSubmission, today: date) -> tuple[Urgency, str]:
    """The requested urgency, raised (never lowered) when treatment is about to start
    — the best time for a second opinion is before treatment — or the text is urgent."""
    options = [(s.urgency, f"requested {s.urgency.value}")]
    if s.treatment_start_date:
        days = (date.fromisoformat(s.treatment_start_date) - today).days
        if 0 <= days <= 3:
            options.append((Urgency.URGENT, f"treatment starts in {days} day(s)"))
        elif 0 <= days <= 14:
            options.append((Urgency.PRIORITY, f"treatment starts in {days} days"))
    if m := _search(URGENT_TERMS, case_text(s)):
        options.append((Urgency.URGENT, f"matched '{m}'"))
    return max(options, key=lambda o: URGENCY_ORDER.index(o[0]))


# ---------------------------------------------------------------- earlier opinions, review flags

LONG_CHAIN = 2  # earlier opinions beyond the first: a third opinion is fine, a fourth is a chain


def opinion_chain(s: CaseSubmission) -> Finding | None:
    """A third, tie-breaking opinion is normal; a longer chain delays care and is flagged."""
    n = len(s.earlier_opinions)
    if n >= LONG_CHAIN:
        return Finding(
            "long_opinion_chain",
            f"this would be opinion {n + 2} on the same question; a long chain delays treatment",
        )
    if n == 1:
        return Finding("third_opinion_tie_break", "one earlier second opinion on record")
    return None


def doctor_shopping(s: CaseSubmission) -> Finding | None:
    """A request for a controlled-substance prescription, or for a particular
    diagnosis (for a claim or a dispute), is not a second opinion: held for a human."""
    return _hold(clinical.route(s))


def _hold(routing: clinical.ClinicalRouting) -> Finding | None:
    if routing.hold is None:
        return None
    return Finding(routing.hold.name, f"{routing.hold.reason}: held for human review")


def link_earlier(s: CaseSubmission, known: dict[str, str]) -> list[str]:
    """Case ids of earlier opinions that intake itself holds (known: reference → case id)."""
    return sorted({known[e.reference] for e in s.earlier_opinions if e.reference in known})


# ---------------------------------------------------------------- the assessment


@dataclass(frozen=True)
class Assessment:
    """Everything intake decides about a submission, with the reasons."""

    subspecialties: list[SubspecialtyFinding]
    signals: list[Finding]
    urgency: Urgency
    urgency_reason: str
    earlier_case_ids: list[str]
    hold: Finding | None
    waiting_on: list[str] = field(default_factory=list)
    # Every concept read (with its words, where, and its context) and the needed
    # reviewers the service tier does not cover (docs/clinical-rules.md).
    findings: list[Mention] = field(default_factory=list)
    beyond_tier: list[SubspecialtyFinding] = field(default_factory=list)

    @property
    def stage(self) -> str:
        if self.hold:
            return "held_for_review"
        return "awaiting_authorization" if self.waiting_on else "accepted"


def assess(s: CaseSubmission, today: date, known: dict[str, str]) -> Assessment:
    routing = clinical.route(s)
    signals = _signals(s, routing)
    chain = opinion_chain(s)
    urgency, why = assess_urgency(s, today)
    return Assessment(
        subspecialties=[SubspecialtyFinding(n.subspecialty, n.reason) for n in routing.needed],
        signals=signals + ([chain] if chain else []),
        urgency=urgency,
        urgency_reason=why,
        earlier_case_ids=link_earlier(s, known),
        hold=_hold(routing),
        waiting_on=missing_authorizations(s),
        findings=routing.findings,
        beyond_tier=[SubspecialtyFinding(n.subspecialty, n.reason) for n in routing.beyond_tier],
    )


def waiting_reasons(hold_reason: str, waiting_on: list[str]) -> list[str]:
    """What the case waits for, in words an integrator can act on."""
    reasons = [f"held for human review: {hold_reason}"] if hold_reason else []
    reasons += [f"release authorization missing for provider {p!r}" for p in waiting_on]
    return reasons


def authorized_records(submission: CaseSubmission, authorized: set[str]) -> list[ProviderRecords]:
    return [
        r.model_copy(update={"authorized": True}) if r.provider_id in authorized else r
        for r in submission.records
    ]


def routing_context(doc: CaseDocument) -> RoutingContext:
    """What assignment routes by: the reviewers needed (primary first) and the case's
    urgency, tier, jurisdiction and first opinion's source (conflicts of interest)."""
    s = doc.submission
    fo = s.first_opinion
    subs = doc.subspecialties
    return RoutingContext(
        subspecialties=[x.name.value for x in subs],
        urgency=doc.urgency,
        service_tier=s.service_tier,
        jurisdiction=s.patient.jurisdiction,
        first_opinion=FirstOpinionSource(
            clinician_id=fo.clinician_id, institution=fo.institution, affiliations=fo.affiliations
        ),
    )


def case_accepted(doc: CaseDocument) -> CaseAccepted:
    """The `case.accepted` event for a stored case (at creation or when it resumes)."""
    s = doc.submission
    subs = doc.subspecialties
    routing = routing_context(doc)
    return CaseAccepted(
        case_id=doc.id,
        tenant_id=doc.tenant_id,
        external_id=s.external_id,
        routing=routing,
        records=authorized_records(s, set(doc.authorized_providers)),
        triage_signals=[x.name for x in doc.triage],
        triage_reasons={x.name: x.reason for x in doc.triage},
        subspecialty_reasons={x.name.value: x.reason for x in subs},
        findings=[RoutingFinding.model_validate(m.model_dump()) for m in doc.findings],
        beyond_tier={x.name.value: x.reason for x in doc.beyond_tier},
        urgency_reason=doc.urgency_reason,
        earlier_case_ids=doc.earlier_case_ids,
        treatment_start_date=s.treatment_start_date,
        patient=s.patient,
        question=s.question,
        first_opinion=s.first_opinion,
        treating_clinician_email=s.treating_clinician_email,
        request_reference=s.request_reference,
        diagnoses=s.diagnoses,
        procedures=s.procedures,
        body_sites=s.body_sites,
    )


# ---------------------------------------------------------------- the images known


def studies_of(manifest: list[ManifestItem]) -> list[StudySummary]:
    """The studies records_fetch retrieved, as records.complete lists them."""
    return [st for item in manifest for st in item.studies]


def images_in_words(studies: list[StudySummary]) -> str:
    """What the images are, without identifiers: "CT HEART (CT CORONARY ANGIO)"."""
    parts = []
    for st in studies:
        words = " ".join(x for x in (st.modality, st.body_part) if x) or "study"
        parts.append(f"{words} ({st.description})" if st.description else words)
    return "; ".join(dict.fromkeys(parts))


@dataclass(frozen=True)
class Reroute:
    """The case's routing re-checked with its images, and what changed."""

    subspecialties: list[SubspecialtyRecord]
    beyond_tier: list[SubspecialtyRecord]
    findings: list[MentionRecord]
    record: RerouteRecord

    def applied(self, doc: CaseDocument) -> CaseDocument:
        return doc.model_copy(
            update={
                "subspecialties": self.subspecialties,
                "beyond_tier": self.beyond_tier,
                "findings": self.findings,
                "reroutes": [*doc.reroutes, self.record],
            }
        )


def recheck(doc: CaseDocument, studies: list[StudySummary], now: datetime) -> Reroute | None:
    """The reviewers the case needs, re-checked once its images are known (DICOM
    Modality, BodyPartExamined, StudyDescription: docs/clinical-rules.md, "The
    images"); None when the images change nothing. Pure: the same case and studies
    give the same answer, so a records.complete delivered twice changes it once."""
    if not studies:
        return None
    routing = clinical.route(doc.submission, studies=studies)
    new = [SubspecialtyRecord(name=n.subspecialty, reason=n.reason) for n in routing.needed]
    before = {x.name for x in doc.subspecialties}
    after = {x.name for x in new}
    if before == after:
        return None
    images = images_in_words(studies)
    removed = [
        SubspecialtyRecord(
            name=x.name,
            reason=f"no longer needed once the images were known ({images}); was: {x.reason}",
        )
        for x in doc.subspecialties
        if x.name not in after
    ]
    return Reroute(
        subspecialties=new,
        beyond_tier=[
            SubspecialtyRecord(name=n.subspecialty, reason=n.reason) for n in routing.beyond_tier
        ],
        findings=[
            MentionRecord(
                concept=m.concept, words=m.words, source=m.source, context=m.context, cue=m.cue
            )
            for m in routing.findings
        ],
        record=RerouteRecord(
            at=now,
            images=images,
            added=[x for x in new if x.name not in before],
            removed=removed,
        ),
    )


def case_rerouted(doc: CaseDocument, reroute: Reroute) -> CaseRerouted:
    """The `case.rerouted` event for a case whose routing `reroute` changed."""
    after = reroute.applied(doc)
    return CaseRerouted(
        case_id=doc.id,
        tenant_id=doc.tenant_id,
        routing=routing_context(after),
        added={x.name.value: x.reason for x in reroute.record.added},
        removed={x.name.value: x.reason for x in reroute.record.removed},
        subspecialty_reasons={x.name.value: x.reason for x in after.subspecialties},
        rerouted_at=reroute.record.at,
    )
