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
from dataclasses import dataclass
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
FHIR_SOURCE: dict[str, tuple[str, str]] = {
    "external_id": ("ServiceRequest", "identifier"),
    "question": ("ServiceRequest", "note"),
    "patient.name": ("Patient", "name"),
    "patient.birth_date": ("Patient", "birthDate"),
    "patient.jurisdiction": ("Patient", "address"),
    "patient.sex": ("Patient", "gender"),
    "patient.identifiers": ("Patient", "identifier"),
    "patient": ("Patient", ""),
    "first_opinion.diagnosis": ("ServiceRequest", "reasonReference"),
    "first_opinion.report_text": ("DiagnosticReport", "presentedForm"),
    "first_opinion": ("DiagnosticReport", ""),
    "records": ("Consent", ""),
    "urgency": ("ServiceRequest", "priority"),
    "service_tier": ("ServiceRequest", "code"),
    "treating_clinician_email": ("ServiceRequest", "requester"),
    "earlier_opinions": ("ServiceRequest", "supportingInfo"),
    "diagnoses": ("ServiceRequest", "reasonCode"),
    "procedures": ("ServiceRequest", "code"),
    "body_sites": ("ServiceRequest", "bodySite"),
    "request_reference": ("ServiceRequest", "identifier"),
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
    """fhir.resources validation errors, located in the FHIR document (FHIRPath:
    `Bundle.entry[0].resource.subject`), in words, without values."""
    errors = []
    for e in exc.errors(include_input=False, include_url=False):
        path = root
        for part in e["loc"]:
            path += f"[{part}]" if isinstance(part, int) else f".{part}"
        errors.append(FieldError(loc=path, msg=readable(e["type"], e["msg"]), type=e["type"]))
    return errors


READABLE = {
    "missing": "is required",
    "extra_forbidden": "is not an element of this resource in FHIR R4",
    "model_type": "has the wrong shape for this element (an object, a list or a value expected)",
    "list_type": "must be a list (this element repeats in FHIR R4)",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "date_from_datetime_parsing": "is not a FHIR date (YYYY, YYYY-MM or YYYY-MM-DD)",
    "json_invalid": "has the wrong shape for this element (an object expected)",
    "json_type": "has the wrong shape for this element (an object expected)",
    "string_too_short": "is missing or too short",
    "too_short": "is missing",
    "string_too_long": "is too long",
    "too_long": "has too many entries",
    "enum": "is not one of the values this element allows",
    "literal_error": "is not one of the values this element allows",
}


def readable(type_: str, msg: str) -> str:
    """A validation message in the words of the FHIR specification, not of the library."""
    if type_ in READABLE:
        return READABLE[type_]
    if type_.endswith("pattern_mismatch") or type_ == "value_error":
        return "is not a valid value for this FHIR element"
    return msg


def native_loc(loc: str) -> str:
    """`records.0.kinds` → `Consent (records.0.kinds)`: the FHIR source, then the field."""
    for prefix, (rtype, element) in FHIR_SOURCE.items():
        if loc == prefix or loc.startswith(prefix + "."):
            return f"{rtype}.{element} ({loc})" if element else f"{rtype} ({loc})"
    return loc


class Resources:
    """Resources of one submission, found by any reference form used in it."""

    def __init__(self) -> None:
        self._by_ref: dict[str, Any] = {}
        self._path: dict[int, str] = {}
        self.all: list[Any] = []

    def add(self, resource: Any, *refs: str, path: str = "") -> None:
        self.all.append(resource)
        rtype, rid = resource.get_resource_type(), resource.id
        self._path[id(resource)] = path or rtype
        for ref in (*refs, f"{rtype}/{rid}" if rid else ""):
            if ref:
                self._by_ref[ref] = resource
        # Not every resource type has `contained` (a bare `Resource` has not).
        for j, inner in enumerate(getattr(resource, "contained", None) or []):
            self.add(inner, f"#{inner.id}", path=f"{self._path[id(resource)]}.contained[{j}]")

    def path(self, resource: Any) -> str:
        """Where the resource is in the submission, as FHIRPath (`Bundle.entry[2].resource`)."""
        return self._path.get(id(resource), resource.get_resource_type())

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
        for i, entry in enumerate(parsed.entry or []):
            if entry.resource is not None:
                resources.add(
                    entry.resource, entry.fullUrl or "", path=f"Bundle.entry[{i}].resource"
                )
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
    # A reason may resolve to any resource (a bundle's entry can be anything): only
    # one with a code (Condition, Observation, DiagnosticReport) names a diagnosis.
    reasons = [res.get(r) for r in request.reasonReference or []]
    codes = [getattr(c, "code", None) for c in reasons if c is not None]
    diagnosis = next((_text(code) for code in codes if code), "")
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
        # The reference may resolve to a resource of another type (an entry that is
        # not an Organization, or one without a resourceType): refused, not followed.
        if org is None or org.get_resource_type() != "Organization" or not org.identifier:
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


def _question(request: Any, res: Resources) -> str:
    """The clinical question: the notes and the reasons' text; a request with neither
    (the published examples have none) asks for a second opinion on what it orders,
    for its reason's condition (documented default)."""
    notes = [str(n.text) for n in request.note or [] if n.text]
    reasons = [t for t in (_text(c) for c in request.reasonCode or []) if t]
    if notes or reasons:
        return "\n".join(notes + reasons)
    what = _text(request.code)
    conditions = [res.get(r) for r in request.reasonReference or []]
    why = [_text(c.code) for c in conditions if c is not None and getattr(c, "code", None)]
    if not what:
        return ""
    return f"Second opinion requested on {what}" + (f" ({', '.join(why)})" if why else "")


def _tier(request: Any) -> str:
    codings = request.code.coding or [] if request.code else []
    code = next((c.code for c in codings if c.system == TIER_SYSTEM), None)
    return str(code) if code else ServiceTier.SPECIALIST_OPINION.value


def _requester_email(request: Any, res: Resources) -> str:
    who = res.get(request.requester) if request.requester else None
    emails = [t.value for t in getattr(who, "telecom", None) or [] if t.system == "email"]
    return str(emails[0]) if emails else ""


# `intent` values that order the service; `proposal`, `plan`, `directive` and
# `option` only suggest or plan it and are refused with that reason.
ORDER_INTENTS = ("order", "original-order", "reflex-order", "filler-order", "instance-order")


def _codings(concepts: Any) -> list[dict[str, str]]:
    """The codes of CodeableConcepts (those with a code), clipped to the contract's bounds."""
    found = []
    for concept in concepts or []:
        for c in concept.coding or []:
            if c.code and c.system != TIER_SYSTEM:
                found.append(
                    {
                        "system": str(c.system or "")[:200],
                        "code": str(c.code)[:64],
                        "display": str(c.display or "")[:200],
                    }
                )
    return found


def _token(identifier: Any) -> str:
    """An Identifier as a FHIR search token, `system|value` (or the value alone)."""
    if identifier is None or not identifier.value:
        return ""
    return f"{identifier.system}|{identifier.value}" if identifier.system else str(identifier.value)


def request_reference(request: Any) -> str:
    """The integrator's own request, for the report's `basedOn`: the identifier as a
    token, else the requisition, else `ServiceRequest/<id>`."""
    ident = next((i for i in request.identifier or [] if i.value), None)
    token = _token(ident) or _token(request.requisition)
    return (token or (f"ServiceRequest/{request.id}" if request.id else ""))[:200]


def _external_id(request: Any) -> str:
    """The idempotency key: the first identifier's value, else the requisition's, else
    the ServiceRequest's id (documented default for requests without an identifier)."""
    ident = next((i.value for i in request.identifier or [] if i.value), None)
    if ident:
        return str(ident)
    if request.requisition is not None and request.requisition.value:
        return str(request.requisition.value)
    return str(request.id or "")


def earlier_opinions(request: Any, res: Resources, first: Any) -> list[dict[str, Any]]:
    """Opinions given before the one under review: the DiagnosticReports the request
    points at in `supportingInfo` (other than the first opinion's) or through the
    Provenance of `relevantHistory`. `basedOn` is the plan or order this request
    fulfils (in R4), never an earlier opinion."""
    found: list[Any] = [res.get(s) for s in request.supportingInfo or []]
    for h in request.relevantHistory or []:
        prov = res.get(h)
        if prov is not None and prov.get_resource_type() == "Provenance":
            found += [res.get(t) for t in prov.target or []]
    opinions, seen = [], {id(first)}
    for r in found:
        if r is None or r.get_resource_type() != "DiagnosticReport" or id(r) in seen:
            continue
        seen.add(id(r))
        ident = next((i.value for i in r.identifier or [] if i.value), None)
        reference = str(ident or (f"DiagnosticReport/{r.id}" if r.id else ""))
        if not reference:
            continue
        _, org = _performers(r, res)
        issued = r.issued.date().isoformat() if r.issued else None
        opinions.append(
            {
                "reference": reference[:128],
                "diagnosis": str(r.conclusion or "")[:2000],
                "institution": str(org.name or "")[:200] if org else "",
                "given_on": issued,
            }
        )
    return opinions[:20]


def _first_report(request: Any, res: Resources) -> Any:
    support = [r for r in (res.get(s) for s in request.supportingInfo or []) if r is not None]
    return next((r for r in support if r.get_resource_type() == "DiagnosticReport"), None)


def read_case(payload: Any) -> Reading:
    """Read a FHIR case: the mapped submission and every issue found, at once."""
    request, res = parse(payload)
    sr = res.path(request)
    issues: list[FieldError] = []
    if request.status != "active":
        issues.append(
            FieldError(
                loc=f"{sr}.status",
                msg=f"is '{request.status}': only an active request can be worked on",
                type="business-rule",
            )
        )
    if request.intent not in ORDER_INTENTS:
        issues.append(
            FieldError(
                loc=f"{sr}.intent",
                msg=f"is '{request.intent}': a second opinion needs an order "
                f"({', '.join(ORDER_INTENTS)}), not a proposal or a plan",
                type="business-rule",
            )
        )
    if not _external_id(request):
        issues.append(
            FieldError(
                loc=f"{sr}.identifier",
                msg="the request needs an identifier (or an id) to be followed and resubmitted",
                type="required",
            )
        )
    patient = res.get(request.subject)
    if patient is None or patient.get_resource_type() != "Patient":
        issues.append(
            FieldError(
                loc=f"{sr}.subject",
                msg="must reference a Patient carried in the submission (a Bundle entry or a "
                "contained resource): the patient's name, birth date and address are needed",
                type="required",
            )
        )
        patient = None
    records: list[dict[str, Any]] = []
    consents = res.of_type("Consent")
    if not consents:
        issues.append(
            FieldError(
                loc=sr,
                msg="no Consent: each provider holding the records needs a Consent whose "
                "organization is that provider (the patient's release)",
                type="required",
            )
        )
    for consent in consents:
        org_ref = (consent.organization or [None])[0]
        org = res.get(org_ref) if org_ref else None
        if org is None or org.get_resource_type() != "Organization" or not org.identifier:
            issues.append(
                FieldError(
                    loc=f"{res.path(consent)}.organization",
                    msg="must reference the providing Organization, with its identifier",
                    type="required",
                )
            )
    if patient is not None and not any(i.loc.endswith(".organization") for i in issues):
        records = map_records(patient, res)
    first = _first_report(request, res)
    opinion = map_first_opinion(request, res)
    if not opinion["diagnosis"]:
        issues.append(
            FieldError(
                loc=f"{sr}.supportingInfo",
                msg="no first opinion: reference the DiagnosticReport under review (its "
                "conclusion) in supportingInfo, or the Condition in reasonReference",
                type="required",
            )
        )
    conditions = [res.get(r) for r in request.reasonReference or []]
    condition_codes = [c.code for c in conditions if c is not None and getattr(c, "code", None)]
    diagnoses = _codings(request.reasonCode) + _codings(condition_codes)
    procedures = _codings([request.code] if request.code else []) + _codings(request.category)
    mapped = {
        "external_id": _external_id(request),
        "patient": map_patient(patient) if patient is not None else {},
        "question": _question(request, res),
        "first_opinion": opinion,
        "urgency": PRIORITY.get(request.priority or "routine", Urgency.ROUTINE).value,
        "service_tier": _tier(request),
        "records": records,
        "treating_clinician_email": _requester_email(request, res),
        "earlier_opinions": earlier_opinions(request, res, first),
        "diagnoses": diagnoses[:20],
        "procedures": procedures[:20],
        "body_sites": _codings(request.bodySite)[:10],
        "request_reference": request_reference(request),
    }
    # Where each native field's source is, so the native rules' findings point there.
    where = {
        "ServiceRequest": sr,
        "Patient": res.path(patient) if patient is not None else f"{sr}.subject",
        "Consent": res.path(consents[0]) if consents else sr,
        "DiagnosticReport": res.path(first) if first is not None else f"{sr}.supportingInfo",
    }
    covered = {i.loc for i in issues}
    covers = {
        native
        for native, loc in (
            ("external_id", f"{sr}.identifier"),
            ("patient", f"{sr}.subject"),
            ("first_opinion.diagnosis", f"{sr}.supportingInfo"),
        )
        if loc in covered
    }
    if patient is None or not consents or any(".organization" in i.loc for i in issues):
        covers.add("records")
    return Reading(mapped, issues, covers, where)


@dataclass
class Reading:
    """What a FHIR case says: the native submission it maps to (unvalidated), the
    issues found reading it, the native fields those issues already explain (so one
    problem is reported once), and where each resource is (FHIRPath)."""

    mapped: dict[str, Any]
    issues: list[FieldError]
    covers: set[str]
    where: dict[str, str]

    def located(self, native: str) -> str | None:
        """The FHIRPath of a native field's source, then the field: `Bundle.entry[1].
        resource.address (patient.jurisdiction)`; None when an issue already says it."""
        if any(native == c or native.startswith(c + ".") for c in self.covers):
            return None
        for prefix, (rtype, element) in FHIR_SOURCE.items():
            if native == prefix or native.startswith(prefix + "."):
                base = self.where.get(rtype, rtype)
                path = f"{base}.{element}" if element else base
                return f"{path} ({native})"
        return f"{self.where['ServiceRequest']} ({native})"


def to_submission(payload: Any) -> dict[str, Any]:
    """The native submission (unvalidated dict) a FHIR case maps to, or
    FhirMappingError listing every element that stands in the way at once."""
    reading = read_case(payload)
    if reading.issues:
        raise FhirMappingError(reading.issues)
    return reading.mapped


def is_fhir_content_type(content_type: str) -> bool:
    return bool(re.match(r"application/fhir\+json\b", content_type.strip().lower()))
