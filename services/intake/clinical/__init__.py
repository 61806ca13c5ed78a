"""Clinical routing (docs/clinical-rules.md): the rules as data (rules/*.yaml,
validated by rules.py), free text read with clinical context (nlp.py: spaCy +
NegEx), coded data first (routing.py: ICD-10-CM through simple-icd-10-cm, SNOMED
CT, LOINC, RadLex), and `route(submission)`: findings, triage signals, the
reviewers needed with a reason each, and those beyond the service tier."""

from services.intake.clinical.routing import ClinicalRouting, Need, Reason, route

__all__ = ["ClinicalRouting", "Need", "Reason", "route"]
