"""FHIR R4 intake: a `ServiceRequest` mapped to the native `CaseSubmission`.

Accepted shapes: a `Bundle` (collection or transaction) holding one
ServiceRequest with its Patient, requester, Consents and supporting records, or
a ServiceRequest carrying those as contained resources. Parsing uses the
`fhir.resources` models (R4B: the same as R4 for every resource read here);
the mapping itself is pure, so both the HTTP route and the Kafka subscriber
validate a FHIR case exactly like a native one.

Where each native field comes from (docs/intake.md has the full table):
external_id ← ServiceRequest.identifier[0]; patient ← the subject Patient
(jurisdiction from address country-state); question ← note + reasonCode text;
first opinion ← reasonReference Condition + supportingInfo DiagnosticReport
(performer, presentedForm) and CarePlan; records and their release
authorization ← one Consent per provider (organization = the provider,
status active = authorized, provision.class = the kinds of records).
"""

from __future__ import annotations

import re
from typing import Any

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.servicerequest import ServiceRequest
from pydantic import ValidationError

from shared.events import FieldError, RecordKind, ServiceTier, Urgency

TIER_SYSTEM = "urn:secondopinion:service-tier"
PRIORITY = {
    "routine": Urgency.ROUTINE,
    "urgent": Urgency.PRIORITY,
    "asap": Urgency.URGENT,
    "stat": Urgency.URGENT,
}
KIND_BY_RESOURCE = {
    "ImagingStudy": RecordKind.IMAGING,
    "Specimen": RecordKind.PATHOLOGY,
    "DocumentReference": RecordKind.NOTES,
    "DiagnosticReport": RecordKind.REPORTS,
    "Observation": RecordKind.LABS,
    "MedicationStatement": RecordKind.TREATMENTS,
    "Procedure": RecordKind.TREATMENTS,
}
# Native field → the FHIR element it is read from, so errors point at the FHIR input.
FHIR_SOURCE = {
    "external_id": "ServiceRequest.identifier",
    "question": "ServiceRequest.note",
    "patient.name": "Patient.name",
    "patient.birth_date": "Patient.birthDate",
    "patient.jurisdiction": "Patient.address",
    "patient.sex": "Patient.gender",
    "first_opinion.diagnosis": "ServiceRequest.reasonReference",
    "first_opinion.report_text": "DiagnosticReport.presentedForm",
    "records": "Consent",
    "urgency": "ServiceRequest.priority",
    "service_tier": "ServiceRequest.code",
}


# The resources one submission may carry, Bundle entries and contained resources
# together. A second-opinion request is a ServiceRequest with its Patient, a few
# Practitioners and Organizations, a Consent per provider and the first opinion:
# tens of resources. Parsing is linear in this count (10,000 took over a second),
# so it is bounded before the FHIR models see it.
MAX_RESOURCES = 500


class FhirMappingError(Exception):
    """The FHIR input cannot be read as a case; `errors` say where and why."""

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(f"{e.loc}: {e.msg}" for e in errors))
        self.errors = errors


def _error(loc: str, msg: str, type_: str = "fhir_mapping") -> FhirMappingError:
    return FhirMappingError([FieldError(loc=loc, msg=msg, type=type_)])


def fhir_field_errors(exc: ValidationError, root: str) -> list[FieldError]:
    """fhir.resources validation errors, located in the FHIR document, without values."""
    return [
        FieldError(loc=".".join([root, *(str(p) for p in e["loc"])]), msg=e["msg"], type=e["type"])
        for e in exc.errors(include_input=False, include_url=False)
    ]


def native_loc(loc: str) -> str:
    """`records.0.kinds` → `Consent (records.0.kinds)`: the FHIR source, then the field."""
    for prefix, source in FHIR_SOURCE.items():
        if loc == prefix or loc.startswith(prefix + "."):
            return f"{source} ({loc})"
    return loc


class Resources:
    """Resources of one submission, found by any reference form used in it."""

    def __init__(self) -> None:
        self._by_ref: dict[str, Any] = {}
        self.all: list[Any] = []

    def add(self, resource: Any, *refs: str) -> None:
        self.all.append(resource)
        rtype, rid = resource.get_resource_type(), resource.id
        for ref in (*refs, f"{rtype}/{rid}" if rid else ""):
            if ref:
                self._by_ref[ref] = resource
        # Not every resource type has `contained` (a bare `Resource` has not).
        for inner in getattr(resource, "contained", None) or []:
            self.add(inner, f"#{inner.id}")

    def get(self, reference: Any) -> Any:
        ref = getattr(reference, "reference", None) or ""
        return self._by_ref.get(ref) or self._by_ref.get(ref.rsplit("/_history", 1)[0])

    def of_type(self, rtype: str) -> list[Any]:
        return [r for r in self.all if r.get_resource_type() == rtype]


def parse(payload: Any) -> tuple[Any, Resources]:
    """The ServiceRequest and every resource around it, or FhirMappingError."""
    rtype = payload.get("resourceType") if isinstance(payload, dict) else None
    if rtype not in ("Bundle", "ServiceRequest"):
        raise _error("resourceType", "expected a Bundle or a ServiceRequest", "resource_type")
    model: Any = Bundle if rtype == "Bundle" else ServiceRequest
    if (count := resource_count(payload)) > MAX_RESOURCES:
        where = "Bundle.entry" if rtype == "Bundle" else "ServiceRequest.contained"
        raise _error(
            where, f"{count} resources; at most {MAX_RESOURCES} per submission", "too_long"
        )
    try:
        parsed = model.model_validate(payload)
    except ValidationError as exc:
        raise FhirMappingError(fhir_field_errors(exc, rtype)) from None
    except (KeyError, TypeError):
        # fhir.resources looks a nested resource's class up by its resourceType and
        # fails with these (not a ValidationError) for an unknown or missing one.
        raise _error(
            f"{rtype}.entry.resource.resourceType"
            if rtype == "Bundle"
            else "ServiceRequest.contained.resourceType",
            "a contained or entry resource has an unknown or missing resourceType",
            "resource_type",
        ) from None
    resources = Resources()
    if rtype == "ServiceRequest":
        resources.add(parsed)
    else:
        for entry in parsed.entry or []:
            if entry.resource is not None:
                resources.add(entry.resource, entry.fullUrl or "")
    requests = resources.of_type("ServiceRequest")
    if len(requests) != 1:
        raise _error("Bundle.entry", f"expected one ServiceRequest, found {len(requests)}")
    return requests[0], resources


def resource_count(payload: dict[str, Any]) -> int:
    """Bundle entries and contained resources, counted on the raw JSON (cheap)."""

    def contained(resource: Any) -> int:
        inner = resource.get("contained") if isinstance(resource, dict) else None
        return len(inner) if isinstance(inner, list) else 0

    if payload.get("resourceType") != "Bundle":
        return 1 + contained(payload)
    entries = payload.get("entry")
    if not isinstance(entries, list):
        return 0
    resources = [e.get("resource") for e in entries if isinstance(e, dict)]
    return len(entries) + sum(contained(r) for r in resources)


def _text(concept: Any) -> str:
    if concept is None:
        return ""
    if concept.text:
        return str(concept.text)
    return next((str(c.display) for c in concept.coding or [] if c.display), "")


def _human_name(names: Any) -> str:
    for n in names or []:
        if n.text:
            return str(n.text)
        parts = [*(n.given or []), n.family or ""]
        if joined := " ".join(p for p in parts if p):
            return joined
    return ""


def _jurisdiction(patient: Any) -> str:
    for a in patient.address or []:
        parts = [p for p in (a.country, a.state) if p]
        if parts:
            return "-".join(parts)
    return ""


def map_patient(patient: Any) -> dict[str, Any]:
    return {
        "name": _human_name(patient.name),
        "birth_date": patient.birthDate.isoformat() if patient.birthDate else "",
        "sex": patient.gender or "unknown",
        "jurisdiction": _jurisdiction(patient),
        "identifiers": [
            {"system": i.system, "value": i.value}
            for i in patient.identifier or []
            if i.system and i.value
        ],
    }


def _performers(report: Any, res: Resources) -> tuple[Any, Any]:
    found = [res.get(p) for p in report.performer or []] if report else []
    practitioner = next((r for r in found if r and r.get_resource_type() == "Practitioner"), None)
    org = next((r for r in found if r and r.get_resource_type() == "Organization"), None)
    return practitioner, org


def _report_text(report: Any) -> str:
    for form in report.presentedForm or [] if report else []:
        if form.data and (form.contentType or "text/plain").startswith("text/"):
            return bytes(form.data).decode("utf-8", errors="replace")
    return str(report.conclusion or "") if report else ""


def map_first_opinion(request: Any, res: Resources) -> dict[str, Any]:
    support = [r for r in (res.get(s) for s in request.supportingInfo or []) if r is not None]
    report = next((r for r in support if r.get_resource_type() == "DiagnosticReport"), None)
    plan = next((r for r in support if r.get_resource_type() == "CarePlan"), None)
    conditions = [res.get(r) for r in request.reasonReference or []]
    diagnosis = next((_text(c.code) for c in conditions if c is not None and c.code), "")
    practitioner, org = _performers(report, res)
    ident = (practitioner.identifier or [None])[0] if practitioner else None
    institution = str(org.name or "") if org else ""
    return {
        "diagnosis": diagnosis or str(getattr(report, "conclusion", "") or ""),
        "treatment_plan": str(plan.description or "") if plan else "",
        "report_text": _report_text(report),
        "clinician_id": str(ident.value or "") if ident else "",
        "clinician_name": _human_name(practitioner.name) if practitioner else "",
        "institution": institution,
        "affiliations": [institution] if institution else [],
    }


def _patient_id_at(patient: Any, org: Any, org_ref: str) -> str:
    refs = {org_ref, f"Organization/{org.id}", f"#{org.id}"}
    for i in patient.identifier or []:
        if i.assigner is not None and i.value and i.assigner.reference in refs:
            return str(i.value)
    return str(patient.id or "")


def map_records(patient: Any, res: Resources) -> list[dict[str, Any]]:
    """One provider per Consent: who releases the records, which kinds, authorized or not."""
    records = []
    for i, consent in enumerate(res.of_type("Consent")):
        org_ref = (consent.organization or [None])[0]
        org = res.get(org_ref) if org_ref else None
        if org is None or not org.identifier:
            raise _error(f"Consent[{i}].organization", "must reference the providing Organization")
        provision = consent.provision
        classes = [c.code for c in (provision.class_fhir or [] if provision else [])]
        kinds = sorted({KIND_BY_RESOURCE[c] for c in classes if c in KIND_BY_RESOURCE})
        denied = provision is not None and provision.type == "deny"
        records.append(
            {
                "provider_id": str(org.identifier[0].value or ""),
                "patient_id": _patient_id_at(patient, org, org_ref.reference or ""),
                "kinds": kinds,
                "authorized": consent.status == "active" and not denied,
            }
        )
    return records


def _question(request: Any) -> str:
    notes = [str(n.text) for n in request.note or [] if n.text]
    reasons = [t for t in (_text(c) for c in request.reasonCode or []) if t]
    return "\n".join(notes + reasons)


def _tier(request: Any) -> str:
    codings = request.code.coding or [] if request.code else []
    code = next((c.code for c in codings if c.system == TIER_SYSTEM), None)
    return str(code) if code else ServiceTier.SPECIALIST_OPINION.value


def _requester_email(request: Any, res: Resources) -> str:
    who = res.get(request.requester) if request.requester else None
    emails = [t.value for t in getattr(who, "telecom", None) or [] if t.system == "email"]
    return str(emails[0]) if emails else ""


def to_submission(payload: Any) -> dict[str, Any]:
    """The native submission (unvalidated dict) a FHIR case maps to."""
    request, res = parse(payload)
    if request.status != "active" or request.intent not in ("order", "original-order"):
        raise _error("ServiceRequest.status", "expected status 'active' and intent 'order'")
    ident = next((i.value for i in request.identifier or [] if i.value), None)
    if not ident:
        raise _error("ServiceRequest.identifier", "the integrator's reference is required")
    patient = res.get(request.subject)
    if patient is None or patient.get_resource_type() != "Patient":
        raise _error("ServiceRequest.subject", "must reference a Patient in the submission")
    return {
        "external_id": str(ident),
        "patient": map_patient(patient),
        "question": _question(request),
        "first_opinion": map_first_opinion(request, res),
        "urgency": PRIORITY.get(request.priority or "routine", Urgency.ROUTINE).value,
        "service_tier": _tier(request),
        "records": map_records(patient, res),
        "treating_clinician_email": _requester_email(request, res),
        "earlier_opinions": [
            {"reference": str(b.identifier.value)}
            for b in request.basedOn or []
            if b.identifier is not None and b.identifier.value
        ],
    }


def is_fhir_content_type(content_type: str) -> bool:
    return bool(re.match(r"application/fhir\+json\b", content_type.strip().lower()))
