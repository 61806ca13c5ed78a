"""Sample records for the local PACS and FHIR peer: pydicom's bundled test
images re-labelled to a demo patient, and a small clinical chart (notes,
reports, labs, treatments). Used by the demo and the tests."""

from __future__ import annotations

import io
from typing import Any

import httpx
import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid


def dicom_bytes(
    name: str,
    patient_id: str,
    patient_name: str,
    *,
    study_date: str = "",
    attributes: dict[str, str] | None = None,
) -> bytes:
    """A bundled test file with the given patient and fresh study/series/instance UIDs
    (and `attributes`, e.g. BodyPartExamined, set by keyword)."""
    path = get_testdata_file(name)
    if path is None:
        raise FileNotFoundError(name)
    ds = pydicom.dcmread(path)
    ds.PatientID = patient_id
    ds.PatientName = patient_name
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if study_date:
        ds.StudyDate = study_date
    for keyword, value in (attributes or {}).items():
        setattr(ds, keyword, value)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def seed_pacs(
    orthanc_url: str,
    patient_id: str,
    patient_name: str,
    files: list[tuple[str, str]],
    attributes: dict[str, str] | None = None,
) -> int:
    """Upload (test file name, study date) pairs for one patient, each with
    `attributes` set; returns instances stored."""
    stored = 0
    with httpx.Client(base_url=orthanc_url, timeout=30) as client:
        for name, study_date in files:
            body = dicom_bytes(
                name, patient_id, patient_name, study_date=study_date, attributes=attributes
            )
            resp = client.post(
                "/instances", content=body, headers={"Content-Type": "application/dicom"}
            )
            resp.raise_for_status()
            stored += 1
    return stored


def _chart(patient_ref: str) -> list[dict[str, Any]]:
    subject = {"reference": patient_ref}
    return [
        {
            "resourceType": "DocumentReference",
            "status": "current",
            "subject": subject,
            "type": {"text": "First consultation note"},
            "date": "2026-10-02T09:00:00Z",
            "content": [{"attachment": {"contentType": "text/plain", "title": "consult.txt"}}],
        },
        {
            "resourceType": "DiagnosticReport",
            "status": "final",
            "subject": subject,
            "code": {"text": "MRI brain with and without contrast"},
            "issued": "2026-10-05T12:00:00Z",
            "conclusion": "Enhancing lesion, cannot exclude low-grade glioma.",
        },
        {
            "resourceType": "Observation",
            "status": "final",
            "subject": subject,
            "code": {"text": "Hemoglobin"},
            "valueQuantity": {"value": 13.2, "unit": "g/dL"},
        },
        {
            "resourceType": "Observation",
            "status": "final",
            "subject": subject,
            "code": {"text": "Creatinine"},
            "valueQuantity": {"value": 0.9, "unit": "mg/dL"},
        },
        {
            "resourceType": "MedicationStatement",
            "status": "active",
            "subject": subject,
            "medicationCodeableConcept": {"text": "Levetiracetam 500 mg twice daily"},
            "effectivePeriod": {"start": "2026-10-06"},
            "dosage": [{"text": "500 mg orally twice daily"}],
        },
        {
            "resourceType": "Procedure",
            "status": "completed",
            "subject": subject,
            "code": {"text": "Stereotactic biopsy (planned, not performed)"},
            "performedDateTime": "2026-10-07",
            "outcome": {"text": "Deferred pending second opinion"},
        },
    ]


def seed_fhir(fhir_url: str, family: str, given: str, birth_date: str) -> str:
    """Create the patient and their chart; returns the Patient id at the provider."""
    with httpx.Client(base_url=fhir_url, timeout=30) as client:
        patient = {
            "resourceType": "Patient",
            "name": [{"family": family, "given": [given]}],
            "birthDate": birth_date,
        }
        resp = client.post(
            "/Patient", json=patient, headers={"Content-Type": "application/fhir+json"}
        )
        resp.raise_for_status()
        patient_id = str(resp.json()["id"])
        for resource in _chart(f"Patient/{patient_id}"):
            r = client.post(
                f"/{resource['resourceType']}",
                json=resource,
                headers={"Content-Type": "application/fhir+json"},
            )
            r.raise_for_status()
    return patient_id


# A current MR and a prior CT a year earlier: what an imaging re-read needs.
CURRENT_AND_PRIOR = [("MR_small.dcm", "20261005"), ("CT_small.dcm", "20250110")]


def seed_patient(
    infra: dict[str, str], mrn: str, dicom_name: str, family: str, given: str, birth_date: str
) -> tuple[str, str]:
    """A patient's studies in the PACS and chart in the FHIR peer; returns the
    patient ids at the imaging provider (the MRN) and at the clinic (FHIR id)."""
    seed_pacs(infra["orthanc_url"], mrn, dicom_name, CURRENT_AND_PRIOR)
    return mrn, seed_fhir(infra["fhir_url"], family, given, birth_date)
