"""The clinical rules as data (rules/*.yaml), loaded once and validated.

A clinician reads and extends the YAML files; this module checks them (every
specialty a code of shared.vocabulary, every tag a signal uses carried by some
concept, every ICD-10-CM item a real chapter, block or code) so that a typo
fails at start-up, not silently at routing time.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

import simple_icd_10_cm as icd
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.vocabulary import Subspecialty

RULES_DIR = Path(__file__).parent / "rules"
ConceptKind = Literal["condition", "site", "imaging", "procedure", "cue", "drug"]
ContextName = Literal["negated", "family", "hypothetical", "historical", "uncertain"]
TextName = Literal["question", "diagnosis", "report_text", "treatment_plan", "coded", "imaging"]
OpinionKind = Literal["imaging", "pathology", "specialist"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Concept(Strict):
    id: str
    kind: ConceptKind
    phrases: list[str] = Field(min_length=1)
    tags: list[str] = []
    site: str | None = None
    specialties: list[Subspecialty] = []
    imaging: Subspecialty | None = None
    oncology: Subspecialty | None = None
    pathology: Subspecialty | None = None


class Termset(Strict):
    extends: Literal["en_clinical"] | None = None
    preceding: list[str] = []
    following: list[str] = []
    pseudo: list[str] = []
    termination: list[str] = []


class ContextRules(Strict):
    precedence: list[ContextName]
    blocks: dict[ConceptKind, list[ContextName]]
    categories: dict[ContextName, Termset]


class Signal(Strict):
    name: str
    value: Literal["high", "low", "hold"]
    any_tags: list[str] = []
    all_tags: list[str] = []
    texts: list[TextName] = []
    tag_texts: dict[str, list[TextName]] = {}
    explain: str

    @model_validator(mode="after")
    def _one_condition(self) -> Signal:
        if bool(self.any_tags) == bool(self.all_tags):
            raise ValueError(f"signal {self.name}: give exactly one of any_tags, all_tags")
        return self


class SignalRules(Strict):
    field_tags: dict[str, dict[str, list[str]]] = {}
    signals: list[Signal]


class NeedRule(Strict):
    explain: str
    when_tags: list[str] = []
    brings: list[str] = []
    tiers: list[str] = []
    imaging_texts: list[TextName] = []
    imaging_tiers: list[str] = []


class TierCover(Strict):
    covers: list[OpinionKind] | Literal["one", "all"]


class NeedRules(Strict):
    rules: dict[
        Literal["new_cancer_diagnosis", "imaging_central", "pathology_rereview", "fallback"],
        NeedRule,
    ]
    tiers: dict[str, TierCover]
    primary_order: dict[str, list[OpinionKind]]


class IcdItem(Strict):
    text: str


class DicomRules(Strict):
    """Words for the DICOM attributes of the studies retrieved (records.complete)."""

    body_parts: dict[str, str] = {}
    modalities: dict[str, str] = {}


class CodeRules(Strict):
    systems: dict[Literal["icd10cm", "snomed", "loinc", "radlex"], list[str]]
    icd10cm: dict[str, IcdItem] = {}
    codes: dict[str, dict[str, str]] = {}
    dicom: DicomRules = DicomRules()

    @model_validator(mode="after")
    def _real_icd_items(self) -> CodeRules:
        bad = [item for item in self.icd10cm if not icd.is_valid_item(item)]
        if bad:
            raise ValueError(f"not ICD-10-CM chapters, blocks or codes: {bad}")
        return self


class Rules(Strict):
    concepts: list[Concept]
    context: ContextRules
    signals: SignalRules
    needs: NeedRules
    codes: CodeRules

    @model_validator(mode="after")
    def _consistent(self) -> Rules:
        ids = [c.id for c in self.concepts]
        if len(ids) != len(set(ids)):
            raise ValueError("concept ids must be unique")
        sites = {c.id for c in self.concepts if c.kind == "site"}
        if missing := {c.site for c in self.concepts if c.site} - sites:
            raise ValueError(f"concepts name unknown sites: {sorted(missing)}")
        tags = {t for c in self.concepts for t in c.tags}
        tags |= {
            t for values in self.signals.field_tags.values() for v in values.values() for t in v
        }
        used = {t for s in self.signals.signals for t in (*s.any_tags, *s.all_tags)}
        used |= {t for r in self.needs.rules.values() for t in r.when_tags}
        if unknown := used - tags:
            raise ValueError(f"rules use tags no concept carries: {sorted(unknown)}")
        return self

    def concept(self, concept_id: str) -> Concept:
        return next(c for c in self.concepts if c.id == concept_id)


def _read(name: str) -> object:
    return yaml.safe_load((RULES_DIR / name).read_text(encoding="utf-8"))


@functools.cache
def load_rules() -> Rules:
    """The rules of rules/*.yaml, validated (a ValidationError names the bad entry)."""
    concepts = _read("concepts.yaml")
    assert isinstance(concepts, dict)
    return Rules.model_validate(
        {
            "concepts": concepts["concepts"],
            "context": _read("context.yaml"),
            "signals": _read("signals.yaml"),
            "needs": _read("needs.yaml"),
            "codes": _read("codes.yaml"),
        }
    )
