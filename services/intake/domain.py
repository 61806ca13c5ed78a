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
from datetime import date

from services.intake import progress
from services.intake.documents import CaseDocument
from shared.events import (
    CaseAccepted,
    CaseSubmission,
    FirstOpinionSource,
    ProviderRecords,
    RoutingContext,
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


# ---------------------------------------------------------------- subspecialty

S = Subspecialty
# (subspecialty, pattern) — first the specific, then the general.
SUBSPECIALTY_RULES: tuple[tuple[Subspecialty, str], ...] = (
    (S.BREAST_IMAGING, r"\b(mammogra\w*|breast (mri|ultrasound|imaging)|bi-?rads)\b"),
    (
        S.NEURORADIOLOGY,
        r"\b(brain|head|spine|spinal|skull base|posterior fossa|brachial plexus|pituitary)\b"
        r"|\bneuro\w*",
    ),
    (
        S.MUSCULOSKELETAL_RADIOLOGY,
        r"\b(knee|shoulder|hip|ankle|wrist|elbow|joint|menisc\w*|rotator cuff)\b",
    ),
    (S.THORACIC_IMAGING, r"\b(chest ct|lung nodule|pulmonary nodule|thorac\w*|mediastin\w*)\b"),
    (
        S.BODY_IMAGING,
        r"\b(abdom\w*|pelvi\w*|liver|hepat\w*|kidney|renal|pancrea\w*|prostate|adrenal)\b",
    ),
    (S.PATHOLOGY, r"\b(biopsy|histolog\w*|patholog\w*|slides?|cytolog\w*|gleason)\b"),
)
ONCOLOGY_SITES: tuple[tuple[Subspecialty, str], ...] = (
    (S.ONCOLOGY_GENITOURINARY, r"\b(prostate|bladder|renal cell|kidney cancer)\b"),
    (S.ONCOLOGY_BREAST, r"\bbreast\b"),
    (S.ONCOLOGY_THORACIC, r"\b(lung|thoracic|nsclc)\b"),
    (S.ONCOLOGY_NEURO, r"\b(glioma|glioblastoma|brain tumou?r)\b"),
)
# Words that make the question an oncology one (a PI-RADS 4-5 lesion or a Gleason
# grade is prostate cancer work-up even before the word "cancer" appears).
CANCER = (
    r"\b(cancer|\w*carcinoma|malignan\w*|tumou?r|lymphoma|sarcoma|metasta\w*|psa|nsclc"
    r"|gleason|pi-?rads [45])\b"
)


def _oncology(text: str) -> SubspecialtyFinding | None:
    cancer = _search(CANCER, text)
    if cancer is None:
        return None
    for name, pattern in ONCOLOGY_SITES:
        if site := _search(pattern, text):
            return SubspecialtyFinding(name, f"cancer term '{cancer}' at site '{site}'")
    return SubspecialtyFinding(S.ONCOLOGY_GENERAL, f"cancer term '{cancer}'")


def infer_subspecialties(text: str) -> list[SubspecialtyFinding]:
    """The subspecialties the question needs, each with the words that chose it."""
    lowered = text.lower()
    found = [
        SubspecialtyFinding(name, f"matched '{m}'")
        for name, pattern in SUBSPECIALTY_RULES
        if (m := _search(pattern, lowered))
    ]
    if onc := _oncology(lowered):
        found.append(onc)
    return found or [
        SubspecialtyFinding(S.GENERAL_INTERNAL_MEDICINE, "no subspecialty-specific terms")
    ]


# ---------------------------------------------------------------- triage

# Signals that make a second opinion worth it (docs/intake.md).
HIGH_VALUE: tuple[tuple[str, str], ...] = (
    (
        "ambiguous_report",
        r"cannot (be )?exclude\w*|cannot be ruled out|can ?not rule out|non-?specific"
        r"|recommend\w* (clinical )?correlation|clinical correlation|indeterminate|equivocal"
        r"|may represent",
    ),
    (
        "serious_diagnosis",
        CANCER + r"|\b(glioma|glioblastoma|aneurysm|multiple sclerosis|als|dementia"
        r"|cardiomyopathy|pulmonary fibrosis|vasculitis)\b",
    ),
    ("rare_condition", r"\brare\b|orphan disease|unusual presentation"),
    (
        "complex_anatomy",
        r"skull base|posterior fossa|brachial plexus|post-?(surgical|operative) pelvis"
        r"|pelvis after (surgery|prostatectomy|hysterectomy)",
    ),
    (
        "prior_studies_not_compared",
        r"no prior (studies|imaging) (available|for comparison)"
        r"|prior (studies|imaging|mri|ct) (were |was )?not (available|reviewed|compared)"
        r"|without comparison|no comparison|comparison: none",
    ),
    (
        "imaging_symptom_mismatch",
        r"(does not|doesn't|do not) (match|explain) (the |my |her |his |the patient's )?symptoms"
        r"|discordant with (the )?(symptoms|clinical)|symptoms (are )?not explained",
    ),
    ("conflicting_opinions", r"conflicting (opinions|reports|diagnos\w*)|differing opinions"),
)
IRREVERSIBLE = (
    r"\b(resection|surgery|surgical|\w+ectomy|amputation|transplant\w*|radiation|radiotherapy"
    r"|chemotherapy|ablation|spinal fusion|craniotomy)\b"
)
PERSISTENT = r"persistent|despite (treatment|therapy)|not improving|no improvement|refractory"
BENIGN_INCIDENTAL = (
    r"simple (renal |kidney |hepatic |liver )?cyst|bosniak (i|1)\b"
    r"|stable (liver |hepatic )?hemangioma|hemangioma,? (unchanged|stable)"
)
NORMAL_REPORT = (
    r"\bnormal (study|exam\w*|mri|ct|scan)\b|\bunremarkable\b|no acute (abnormality|findings)"
    r"|within normal limits"
)
RESOLVED = r"symptoms (have )?resolved|resolved symptoms|now asymptomatic"
LOW_VALUE = frozenset({"benign_incidental_finding", "normal_report_resolved_symptoms"})


def case_text(s: CaseSubmission) -> str:
    fo = s.first_opinion
    return "\n".join((s.question, fo.diagnosis, fo.report_text, fo.treatment_plan)).lower()


def _treatment_signal(s: CaseSubmission) -> Finding | None:
    text = f"{s.question}\n{s.first_opinion.treatment_plan}".lower()
    if m := _search(IRREVERSIBLE, text):
        return Finding("irreversible_treatment", f"invasive or irreversible treatment '{m}'")
    return None


def _persistent_signal(s: CaseSubmission, text: str) -> Finding | None:
    if s.symptoms_status == "persistent":
        return Finding("persistent_symptoms", "symptoms_status is persistent")
    if m := _search(PERSISTENT, text):
        return Finding("persistent_symptoms", f"matched '{m}'")
    return None


def _normal_resolved_signal(s: CaseSubmission, text: str) -> Finding | None:
    normal = _search(NORMAL_REPORT, s.first_opinion.report_text.lower())
    resolved = "symptoms_status is resolved" if s.symptoms_status == "resolved" else None
    resolved = resolved or (f"matched '{m}'" if (m := _search(RESOLVED, text)) else None)
    if normal and resolved:
        return Finding("normal_report_resolved_symptoms", f"report says '{normal}' and {resolved}")
    return None


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


def triage_signals(s: CaseSubmission) -> list[Finding]:
    """Every signal found, high-value and low-value, each with its reason."""
    text = case_text(s)
    found = [Finding(name, f"matched '{m}'") for name, p in HIGH_VALUE if (m := _search(p, text))]
    optional = (
        _treatment_signal(s),
        _persistent_signal(s, text),
        conflicting_earlier(s),
        Finding("benign_incidental_finding", f"matched '{m}'")
        if (m := _search(BENIGN_INCIDENTAL, text))
        else None,
        _normal_resolved_signal(s, text),
    )
    names = {f.name for f in found}
    for finding in optional:
        if finding and finding.name not in names:
            found.append(finding)
            names.add(finding.name)
    return found


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


CONTROLLED_SUBSTANCE = (
    r"\b(oxycodone|oxycontin|hydrocodone|fentanyl|morphine|methadone|percocet|vicodin|opioids?"
    r"|opiates?|tramadol|codeine|xanax|alprazolam|diazepam|valium|clonazepam|klonopin|lorazepam"
    r"|ativan|benzodiazepines?|adderall|amphetamines?|methylphenidate|ritalin|ketamine)\b"
)
PRESCRIPTION_REQUEST = (
    r"\b(prescri\w*|refills?|renew\w*|higher dose|dose increase|increase (my|the) dose"
    r"|stronger (pain )?(medication|meds)|new script|refused to (prescribe|refill))\b"
)


def doctor_shopping(s: CaseSubmission) -> Finding | None:
    """A request for a controlled-substance prescription is not a second opinion."""
    text = s.question.lower()
    drug, ask = _search(CONTROLLED_SUBSTANCE, text), _search(PRESCRIPTION_REQUEST, text)
    if drug and ask:
        return Finding(
            "controlled_substance_request",
            f"asks '{ask}' about controlled substance '{drug}': held for human review",
        )
    return None


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

    @property
    def stage(self) -> str:
        if self.hold:
            return "held_for_review"
        return "awaiting_authorization" if self.waiting_on else "accepted"


def assess(s: CaseSubmission, today: date, known: dict[str, str]) -> Assessment:
    signals = triage_signals(s)
    chain = opinion_chain(s)
    urgency, why = assess_urgency(s, today)
    return Assessment(
        subspecialties=infer_subspecialties(case_text(s)),
        signals=signals + ([chain] if chain else []),
        urgency=urgency,
        urgency_reason=why,
        earlier_case_ids=link_earlier(s, known),
        hold=doctor_shopping(s),
        waiting_on=missing_authorizations(s),
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


def case_accepted(doc: CaseDocument) -> CaseAccepted:
    """The `case.accepted` event for a stored case (at creation or when it resumes)."""
    s = doc.submission
    fo = s.first_opinion
    subs = doc.subspecialties
    routing = RoutingContext(
        subspecialties=[x.name.value for x in subs],
        urgency=doc.urgency,
        service_tier=s.service_tier,
        jurisdiction=s.patient.jurisdiction,
        first_opinion=FirstOpinionSource(
            clinician_id=fo.clinician_id, institution=fo.institution, affiliations=fo.affiliations
        ),
    )
    return CaseAccepted(
        case_id=doc.id,
        tenant_id=doc.tenant_id,
        external_id=s.external_id,
        routing=routing,
        records=authorized_records(s, set(doc.authorized_providers)),
        triage_signals=[x.name for x in doc.triage],
        triage_reasons={x.name: x.reason for x in doc.triage},
        subspecialty_reasons={x.name.value: x.reason for x in subs},
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
