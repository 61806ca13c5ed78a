"""The identifiers records_fetch puts into a provider request, and the checks
that what comes back belongs to the patient asked for.

An identifier arrives in a message (`records[].patient_id`) or in a peer's
answer (a study's UID, a paging link), so it is untrusted. Search syntax
turns some characters into operators: in a FHIR search a comma is OR
(`subject=Patient/a,Patient/b` returns two charts), in QIDO-RS `*` and `?`
are wildcards (`PatientID=*` matches every patient) and a backslash separates
values; in a URL path `/` and `..` move to another resource. So each
identifier is checked against a strict pattern *before* any request, is sent
as one value only (httpx `params`, which percent-escapes it), and every
resource or instance that comes back is checked to be the patient's.

The patterns (docs/records_fetch.md, "Identifiers"):

* FHIR logical id (R4 `id` datatype): ``[A-Za-z0-9\\-\\.]{1,64}``.
* DICOM Patient ID sent to QIDO-RS (VR LO, at most 64 characters): letters,
  digits, ``.``, ``_``, ``-``, beginning with a letter or digit. No wildcard
  (``*``, ``?``), no value separator (``\\``), no comma, no space, no control
  characters.
* DICOM UID (PS3.5 §9.1): ``[0-9]+(\\.[0-9]+)*``, at most 64 characters.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from prometheus_client import Counter

from shared.errors import PermanentError

FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
DICOM_PATIENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,63}")
DICOM_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
DICOM_UID_MAX = 64

# What was refused, by where it came from; never an identifier as a label (PHI).
FOREIGN_REFUSED = Counter(
    "records_fetch_foreign_records_refused_total",
    "Resources or instances a provider returned for another patient (or for no patient), refused",
    ["source"],
)
IDENTIFIERS_REFUSED = Counter(
    "records_fetch_identifiers_refused_total",
    "Identifiers refused before any request (patient ids, UIDs, paging links)",
    ["kind"],
)


class RefusedIdentifier(PermanentError):
    """An identifier that is not of its grammar: no request is made with it."""

    status_code = 422
    title = "Identifier refused"


def _refuse(kind: str, what: str) -> RefusedIdentifier:
    IDENTIFIERS_REFUSED.labels(kind=kind).inc()
    # The message names the rule broken, never the value (it may be an MRN).
    return RefusedIdentifier(f"{what} refused: not of its grammar (docs/records_fetch.md)")


def fhir_patient_id(value: str) -> str:
    """The FHIR logical id of a patient, or RefusedIdentifier."""
    if not FHIR_ID.fullmatch(value):
        raise _refuse("fhir_patient_id", "FHIR patient id")
    return value


def dicom_patient_id(value: str) -> str:
    """A Patient ID safe to send as one QIDO-RS matching value, or RefusedIdentifier."""
    if not DICOM_PATIENT_ID.fullmatch(value):
        raise _refuse("dicom_patient_id", "DICOM patient id")
    return value


def is_dicom_uid(value: object) -> bool:
    return (
        isinstance(value, str) and len(value) <= DICOM_UID_MAX and bool(DICOM_UID.fullmatch(value))
    )


def dicom_uid(value: object, what: str = "DICOM UID") -> str:
    """A UID that may go into a URL path, or RefusedIdentifier."""
    if not is_dicom_uid(value):
        raise _refuse("dicom_uid", what)
    return str(value)


# ---------------------------------------------------------------- whose is it


def fhir_reference_patient(resource: Mapping[str, Any]) -> str | None:
    """The Patient id a FHIR resource names in `subject` or `patient` (relative or
    absolute reference), or None when it names no Patient."""
    for key in ("subject", "patient"):
        ref = resource.get(key)
        if isinstance(ref, dict) and isinstance(ref.get("reference"), str):
            parts = ref["reference"].split("/")
            # `Patient/<id>`, `<base>/Patient/<id>` or `.../Patient/<id>/_history/<v>`
            if "_history" in parts:
                parts = parts[: parts.index("_history")]
            if len(parts) >= 2 and parts[-2] == "Patient":
                return parts[-1]
            return None
    return None


def belongs_to(resource: Mapping[str, Any], patient_id: str) -> bool:
    """True only if the resource names exactly the patient asked for."""
    return fhir_reference_patient(resource) == patient_id


def same_dicom_patient(found: object, asked: str) -> bool:
    """DICOM Patient ID (LO: leading and trailing spaces are padding) equality."""
    return isinstance(found, str) and found.strip() == asked.strip()
