"""The clinical vocabulary every service shares: subspecialties (with what each
needs from the records and its standard code), partner-facing event types.

One definition, used by intake (routing), records_fetch (what the manifest must
hold), assignment (roster matching) and reporting (which report sections are
required), so the services cannot disagree about what a subspecialty means.
The codes are the NUCC Health Care Provider Taxonomy (the code set US payers
and the NPPES registry use for a clinician's specialty); where the taxonomy
has no code of the subspecialty's own, the code of its parent specialty is
given and `nucc_exact` is False. See docs/architecture.md, "Clinical vocabulary".
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

NUCC_SYSTEM = "http://nucc.org/provider-taxonomy"


@dataclass(frozen=True)
class SpecialtyNeeds:
    """What a subspecialty's opinion is made of."""

    display: str
    nucc: str
    nucc_exact: bool
    # The opinion is a re-read of images: the original images and the original
    # report are required, and the report has an imaging section.
    imaging_reread: bool = False
    # The opinion reads slides: pathology material is required.
    reads_pathology: bool = False
    # Staging imaging is part of the work-up (oncology, neurosurgery, ...): images
    # are required although the opinion is not a re-read.
    needs_imaging: bool = False


class Subspecialty(StrEnum):
    """The subspecialties the router routes to (values are the wire and roster codes)."""

    # Radiology
    NEURORADIOLOGY = "neuroradiology"
    BODY_IMAGING = "body_imaging"
    MUSCULOSKELETAL_RADIOLOGY = "musculoskeletal_radiology"
    BREAST_IMAGING = "breast_imaging"
    THORACIC_IMAGING = "thoracic_imaging"
    CARDIAC_IMAGING = "cardiac_imaging"
    NUCLEAR_MEDICINE = "nuclear_medicine"
    PEDIATRIC_RADIOLOGY = "pediatric_radiology"
    RADIOLOGY = "radiology"
    # Pathology
    PATHOLOGY = "pathology"
    HEMATOPATHOLOGY = "hematopathology"
    CYTOPATHOLOGY = "cytopathology"
    # Oncology by site
    ONCOLOGY_GENERAL = "oncology_general"
    ONCOLOGY_GENITOURINARY = "oncology_genitourinary"
    ONCOLOGY_BREAST = "oncology_breast"
    ONCOLOGY_THORACIC = "oncology_thoracic"
    ONCOLOGY_NEURO = "oncology_neuro"
    ONCOLOGY_GASTROINTESTINAL = "oncology_gastrointestinal"
    ONCOLOGY_GYNECOLOGIC = "oncology_gynecologic"
    HEMATOLOGY_ONCOLOGY = "hematology_oncology"
    # Other specialist opinions
    CARDIOLOGY = "cardiology"
    NEUROLOGY = "neurology"
    EPILEPSY = "epilepsy"
    NEUROSURGERY = "neurosurgery"
    ORTHOPAEDICS = "orthopaedics"
    GASTROENTEROLOGY = "gastroenterology"
    HEPATOLOGY = "hepatology"
    PULMONOLOGY = "pulmonology"
    RHEUMATOLOGY = "rheumatology"
    # Rare and undiagnosed disease programs are run by clinical geneticists.
    MEDICAL_GENETICS = "medical_genetics"
    GENERAL_INTERNAL_MEDICINE = "general_internal_medicine"

    @property
    def needs(self) -> SpecialtyNeeds:
        return NEEDS[self]

    @property
    def opinion(self) -> str:
        """What kind of opinion it gives: 'imaging' (a re-read), 'pathology' (slides)
        or 'specialist' (a clinical opinion): what a service tier may cover."""
        if self.needs.imaging_reread:
            return "imaging"
        if self.needs.reads_pathology and not self.is_oncology:
            return "pathology"
        return "specialist"

    @property
    def is_oncology(self) -> bool:
        return self.value.startswith("oncology") or self is Subspecialty.HEMATOLOGY_ONCOLOGY


S = Subspecialty
_RADIOLOGY = "2085R0202X"  # Radiology, Diagnostic Radiology
NEEDS: dict[Subspecialty, SpecialtyNeeds] = {
    S.NEURORADIOLOGY: SpecialtyNeeds("Neuroradiology", "2085N0700X", True, imaging_reread=True),
    S.BODY_IMAGING: SpecialtyNeeds("Body imaging", "2085B0100X", True, imaging_reread=True),
    S.MUSCULOSKELETAL_RADIOLOGY: SpecialtyNeeds(
        "Musculoskeletal radiology", _RADIOLOGY, False, imaging_reread=True
    ),
    S.BREAST_IMAGING: SpecialtyNeeds("Breast imaging", _RADIOLOGY, False, imaging_reread=True),
    S.THORACIC_IMAGING: SpecialtyNeeds("Thoracic imaging", _RADIOLOGY, False, imaging_reread=True),
    S.CARDIAC_IMAGING: SpecialtyNeeds("Cardiac imaging", _RADIOLOGY, False, imaging_reread=True),
    S.NUCLEAR_MEDICINE: SpecialtyNeeds(
        "Nuclear radiology", "2085N0904X", True, imaging_reread=True
    ),
    S.PEDIATRIC_RADIOLOGY: SpecialtyNeeds(
        "Pediatric radiology", "2085P0229X", True, imaging_reread=True
    ),
    S.RADIOLOGY: SpecialtyNeeds("Diagnostic radiology", _RADIOLOGY, True, imaging_reread=True),
    S.PATHOLOGY: SpecialtyNeeds("Anatomic pathology", "207ZP0101X", True, reads_pathology=True),
    S.HEMATOPATHOLOGY: SpecialtyNeeds("Hematopathology", "207ZH0000X", True, reads_pathology=True),
    S.CYTOPATHOLOGY: SpecialtyNeeds("Cytopathology", "207ZC0500X", True, reads_pathology=True),
    S.ONCOLOGY_GENERAL: SpecialtyNeeds(
        "Medical oncology", "207RX0202X", True, reads_pathology=True, needs_imaging=True
    ),
    S.ONCOLOGY_GENITOURINARY: SpecialtyNeeds(
        "Genitourinary oncology", "207RX0202X", False, reads_pathology=True, needs_imaging=True
    ),
    S.ONCOLOGY_BREAST: SpecialtyNeeds(
        "Breast oncology", "207RX0202X", False, reads_pathology=True, needs_imaging=True
    ),
    S.ONCOLOGY_THORACIC: SpecialtyNeeds(
        "Thoracic oncology", "207RX0202X", False, reads_pathology=True, needs_imaging=True
    ),
    S.ONCOLOGY_NEURO: SpecialtyNeeds(
        "Neuro-oncology", "207RX0202X", False, reads_pathology=True, needs_imaging=True
    ),
    S.ONCOLOGY_GASTROINTESTINAL: SpecialtyNeeds(
        "Gastrointestinal oncology", "207RX0202X", False, reads_pathology=True, needs_imaging=True
    ),
    S.ONCOLOGY_GYNECOLOGIC: SpecialtyNeeds(
        "Gynecologic oncology", "207VX0201X", True, reads_pathology=True, needs_imaging=True
    ),
    S.HEMATOLOGY_ONCOLOGY: SpecialtyNeeds(
        "Hematology and oncology", "207RH0003X", True, reads_pathology=True
    ),
    S.CARDIOLOGY: SpecialtyNeeds("Cardiovascular disease", "207RC0000X", True),
    S.NEUROLOGY: SpecialtyNeeds("Neurology", "2084N0400X", True),
    S.EPILEPSY: SpecialtyNeeds("Epilepsy", "2084E0001X", True),
    S.NEUROSURGERY: SpecialtyNeeds("Neurological surgery", "207T00000X", True, needs_imaging=True),
    S.ORTHOPAEDICS: SpecialtyNeeds("Orthopaedic surgery", "207X00000X", True, needs_imaging=True),
    S.GASTROENTEROLOGY: SpecialtyNeeds("Gastroenterology", "207RG0100X", True),
    S.HEPATOLOGY: SpecialtyNeeds("Hepatology", "207RI0008X", True),
    S.PULMONOLOGY: SpecialtyNeeds("Pulmonary disease", "207RP1001X", True),
    S.RHEUMATOLOGY: SpecialtyNeeds("Rheumatology", "207RR0500X", True),
    S.MEDICAL_GENETICS: SpecialtyNeeds("Clinical genetics (M.D.)", "207SG0201X", True),
    S.GENERAL_INTERNAL_MEDICINE: SpecialtyNeeds("Internal medicine", "207R00000X", True),
}
assert set(NEEDS) == set(Subspecialty), "every subspecialty has its needs"


def imaging_reread(subspecialty: str) -> bool:
    """Whether the subspecialty's opinion is a re-read of images."""
    return subspecialty in NEEDS_BY_VALUE and NEEDS_BY_VALUE[subspecialty].imaging_reread


NEEDS_BY_VALUE: dict[str, SpecialtyNeeds] = {s.value: n for s, n in NEEDS.items()}


class PartnerEventType(StrEnum):
    """The events a partner portal can subscribe to (notify's subscriptions)."""

    REPORT_READY = "report.ready"
    CASE_REJECTED = "case.rejected"
    RECORDS_INCOMPLETE = "records.incomplete"
    SLA_BREACHED = "sla.breached"
