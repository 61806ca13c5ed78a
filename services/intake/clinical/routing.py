"""From a case to its clinical routing: findings (free text and coded data, each
with the words or code that triggered it and the context that qualified it),
triage signals, and the reviewers the case needs, each with its reason, set
against what the service tier covers. Pure: no I/O; the rules come from
rules/*.yaml (services/intake/clinical/rules.py), the context from nlp.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import simple_icd_10_cm as icd

from services.intake.clinical import nlp
from services.intake.clinical.nlp import Mention
from services.intake.clinical.rules import Rules, Signal, load_rules
from shared.events import CaseSubmission, Coding, ServiceTier, StudySummary
from shared.vocabulary import Subspecialty

# The order texts are read in: what the requester asks first, then the opinion
# under review, the coded data, the plan and the report.
# The images' DICOM attributes come last: they are known only once records_fetch
# has the studies (records.complete), and re-check the routing then.
TEXT_ORDER = ("question", "diagnosis", "coded", "treatment_plan", "report_text", "imaging")
DICOM = "dicom"


@dataclass(frozen=True)
class Reason:
    name: str
    reason: str


@dataclass(frozen=True)
class Need:
    subspecialty: Subspecialty
    reason: str


@dataclass(frozen=True)
class ClinicalRouting:
    findings: list[Mention]
    signals: list[Reason]
    hold: Reason | None
    needed: list[Need]
    beyond_tier: list[Need] = field(default_factory=list)


# ---------------------------------------------------------------- coded data


def _system(rules: Rules, coding: Coding) -> str:
    wanted = coding.system.strip().lower()
    for name, aliases in rules.codes.systems.items():
        if wanted in (a.lower() for a in aliases):
            return name
    return ""


def coded_texts(rules: Rules, codings: list[Coding]) -> list[tuple[str, str]]:
    """(where, words) per coding: what each code means in words a clinician reads.

    ICD-10-CM: the official description (simple-icd-10-cm) and what its chapter,
    block or category means (codes.yaml); other systems: codes.yaml's words for
    the code, else the integrator's display."""
    out = []
    for c in codings:
        system = _system(rules, c)
        where = f"{system or c.system or 'code'} {c.code}"
        words: list[str] = []
        if system == "icd10cm" and icd.is_valid_item(c.code):
            words.append(icd.get_description(c.code))
            for item in [c.code, *icd.get_ancestors(c.code)]:
                if item in rules.codes.icd10cm:
                    words.append(rules.codes.icd10cm[item].text)
        elif text := rules.codes.codes.get(system, {}).get(c.code):
            words.append(text)
        if not words and c.display:
            words.append(c.display)
        if words:
            out.append((where, ". ".join(words)))
    return out


def imaging_texts(rules: Rules, studies: list[StudySummary]) -> list[tuple[str, str]]:
    """(where, words) per DICOM fact of the studies retrieved: each BodyPartExamined
    in the words of its site (codes.yaml `dicom`), a Modality that names a site,
    and the StudyDescription as the PACS gives it."""
    out: list[tuple[str, str]] = []
    words = rules.codes.dicom
    for st in studies:
        for part in filter(None, (p.strip().upper() for p in st.body_part.split(","))):
            out.append(
                (f"{DICOM} BodyPartExamined {part}", words.body_parts.get(part, part.lower()))
            )
        for mod in filter(None, (m.strip().upper() for m in st.modality.split(","))):
            if mod in words.modalities:
                out.append((f"{DICOM} Modality {mod}", words.modalities[mod]))
        if st.description.strip():
            out.append((f"{DICOM} StudyDescription", st.description))
    return list(dict.fromkeys(out))


def read_case(
    s: CaseSubmission, rules: Rules | None = None, studies: list[StudySummary] | None = None
) -> list[Mention]:
    """Every mention in the case: free text fields, then each coding, then (once
    the images are known) each DICOM fact of the studies."""
    rules = rules or load_rules()
    fo = s.first_opinion
    texts = {
        "question": s.question,
        "diagnosis": fo.diagnosis,
        "treatment_plan": fo.treatment_plan,
        "report_text": fo.report_text,
    }
    coded = coded_texts(rules, [*s.diagnoses, *s.procedures, *s.body_sites])
    for i, (_, words) in enumerate(coded):
        texts[f"coded#{i}"] = words
    named = {f"coded#{i}": f"coded {where}" for i, (where, _) in enumerate(coded)}
    for i, (where, words) in enumerate(imaging_texts(rules, studies or [])):
        texts[f"{DICOM}#{i}"] = words
        named[f"{DICOM}#{i}"] = where
    mentions = [
        # A DICOM attribute is a fact of the images, not a statement: no context.
        Mention(m.concept, m.words, named[m.source], "current", "", m.start)
        if m.source.startswith(DICOM)
        else Mention(m.concept, m.words, named.get(m.source, m.source), m.context, m.cue, m.start)
        for m in nlp.read(texts, rules)
    ]
    return sorted(mentions, key=lambda m: _text_rank(m.source))


def _text(source: str) -> str:
    if source.startswith(DICOM):
        return "imaging"
    return "coded" if source.startswith("coded") else source


def from_images(m: Mention) -> bool:
    return _text(m.source) == "imaging"


def _text_rank(source: str) -> int:
    return TEXT_ORDER.index(_text(source))


def counts(rules: Rules, m: Mention) -> bool:
    """Whether a mention is the patient's current concern (context.yaml `blocks`)."""
    kind = rules.concept(m.concept).kind
    return m.context not in rules.context.blocks.get(kind, [])


def explain(m: Mention) -> str:
    if from_images(m):
        return f"'{m.words}' in the images ({m.source})"
    where = m.source if m.source.startswith("coded") else f"in the {m.source.replace('_', ' ')}"
    context = (
        "" if m.context == "current" else f", {m.context}" + (f" ('{m.cue}')" if m.cue else "")
    )
    return f"'{m.words}' {where}{context}"


# ---------------------------------------------------------------- signals


def _tagged(rules: Rules, active: list[Mention], tag: str, texts: list[str]) -> Mention | None:
    for m in active:
        if tag in rules.concept(m.concept).tags and (not texts or _text(m.source) in texts):
            return m
    return None


def _field_reason(rules: Rules, s: CaseSubmission, tag: str) -> str:
    for name, values in rules.signals.field_tags.items():
        value = getattr(s, name, None)
        if isinstance(value, str) and tag in values.get(value, []):
            return f"{name} is {value}"
    return ""


def _signal(rules: Rules, sig: Signal, s: CaseSubmission, active: list[Mention]) -> Reason | None:
    if sig.any_tags:
        for tag in sig.any_tags:
            if m := _tagged(rules, active, tag, list(sig.texts)):
                return Reason(sig.name, f"{sig.explain}: {explain(m)}")
        for tag in sig.any_tags:
            if why := _field_reason(rules, s, tag):
                return Reason(sig.name, f"{sig.explain}: {why}")
        return None
    parts = []
    for tag in sig.all_tags:
        texts: list[str] = list(sig.tag_texts.get(tag, sig.texts))
        m = _tagged(rules, active, tag, texts)
        why = _field_reason(rules, s, tag) or (explain(m) if m else "")
        if not why:
            return None
        parts.append(why)
    return Reason(sig.name, f"{sig.explain}: {' and '.join(parts)}")


def signals(
    rules: Rules, s: CaseSubmission, active: list[Mention]
) -> tuple[list[Reason], Reason | None]:
    found, hold = [], None
    for sig in rules.signals.signals:
        if r := _signal(rules, sig, s, active):
            if sig.value == "hold":
                hold = hold or r
            else:
                found.append(r)
    return found, hold


LOW_VALUE = frozenset(s.name for s in load_rules().signals.signals if s.value == "low")


# ---------------------------------------------------------------- who is needed


def _site_of(
    rules: Rules, m: Mention, active: list[Mention], attr: str
) -> tuple[Subspecialty, str] | None:
    """The specialty (`imaging` or `oncology`) of the site a finding is at: its own
    site, else the nearest site named in the same text, else any site named."""
    own = rules.concept(m.concept).site
    if own and (sub := getattr(rules.concept(own), attr)):
        return sub, f"site {own} (from '{m.words}')"
    sites = [
        x
        for x in active
        if rules.concept(x.concept).kind == "site" and getattr(rules.concept(x.concept), attr)
    ]
    same = sorted((x for x in sites if x.source == m.source), key=lambda x: abs(x.start - m.start))
    for x in [*same, *sites]:
        return getattr(rules.concept(x.concept), attr), f"site '{x.words}'"
    return None


def _imaging_central(rules: Rules, s: CaseSubmission, active: list[Mention]) -> str:
    rule = rules.needs.rules["imaging_central"]
    if s.service_tier.value in rule.imaging_tiers:
        return f"the tier is {s.service_tier.value}"
    active = [m for m in active if not from_images(m)]  # the images do not ask a question
    for tag in rule.when_tags:
        if m := _tagged(rules, active, tag, []):
            return explain(m)
    for m in active:
        if rules.concept(m.concept).kind == "imaging" and _text(m.source) in rule.imaging_texts:
            return explain(m)
    return ""


def needed(rules: Rules, s: CaseSubmission, active: list[Mention]) -> list[Need]:
    """Every reviewer the case needs, in discovery order, each with its first reason."""
    out: dict[Subspecialty, str] = {}

    def add(sub: Subspecialty, why: str) -> None:
        out.setdefault(sub, why)

    cancer_rule = rules.needs.rules["new_cancer_diagnosis"]
    for m in active:
        if from_images(m):
            continue  # the images tell where, not what: only the imaging rule reads them
        concept = rules.concept(m.concept)
        for sub in concept.specialties:
            add(sub, f"{explain(m)}")
        if set(cancer_rule.when_tags) & set(concept.tags):
            why = f"new or suspected cancer diagnosis, {explain(m)}"
            add(concept.pathology or Subspecialty.PATHOLOGY, f"{why}: the slides are reviewed")
            site = _site_of(rules, m, active, "oncology")
            onc, at = site or (Subspecialty.ONCOLOGY_GENERAL, "no site named")
            add(onc, f"{why}, {at}: the oncologist of the site plans treatment")
    if s.service_tier.value in rules.needs.rules["pathology_rereview"].tiers:
        add(
            Subspecialty.PATHOLOGY,
            f"the tier is {s.service_tier.value}: the slides are the question",
        )
    if central := _imaging_central(rules, s, active):
        imaged = False
        for m in active:
            concept = rules.concept(m.concept)
            if concept.kind == "site" and concept.imaging:
                add(concept.imaging, f"imaging is central ({central}); {explain(m)}")
                imaged = True
            elif concept.site and (site := _site_of(rules, m, active, "imaging")):
                add(site[0], f"imaging is central ({central}); {explain(m)}")
                imaged = True
        if not imaged:
            add(Subspecialty.RADIOLOGY, f"imaging is central ({central}); no body site named")
    if not out:
        add(Subspecialty.GENERAL_INTERNAL_MEDICINE, rules.needs.rules["fallback"].explain)
    return [Need(sub, why) for sub, why in out.items()]


def ordered(rules: Rules, tier: ServiceTier, needs: list[Need]) -> list[Need]:
    """The primary first: the kind of opinion the tier asks for, then the others."""
    order: list[str] = list(rules.needs.primary_order[tier.value])
    return sorted(needs, key=lambda n: order.index(n.subspecialty.opinion))


def tier_coverage(rules: Rules, tier: ServiceTier, needs: list[Need]) -> list[Need]:
    """The needed reviewers the tier does not pay for, each with why it is routed anyway."""
    covers = rules.needs.tiers[tier.value].covers
    if covers == "all":
        return []
    if covers == "one":
        covered = needs[:1]
    else:
        covered = [n for n in needs if n.subspecialty.opinion in covers] or needs[:1]
    what = covers if isinstance(covers, str) else " and ".join(covers)
    return [
        Need(
            n.subspecialty,
            f"needed ({n.reason}); beyond the {tier.value} tier, which covers {what}: "
            "routed all the same, for operations to settle with the partner",
        )
        for n in needs
        if n not in covered
    ]


def route(
    s: CaseSubmission, rules: Rules | None = None, studies: list[StudySummary] | None = None
) -> ClinicalRouting:
    """The case's routing; with `studies` (records.complete), re-checked with what
    the images are: their body parts choose the imaging subspecialty when imaging
    is central (docs/clinical-rules.md, "The images")."""
    rules = rules or load_rules()
    findings = read_case(s, rules, studies)
    active = [m for m in findings if counts(rules, m)]
    found, hold = signals(rules, s, [m for m in active if not from_images(m)])
    needs = ordered(rules, s.service_tier, needed(rules, s, active))
    return ClinicalRouting(
        findings, found, hold, needs, tier_coverage(rules, s.service_tier, needs)
    )
