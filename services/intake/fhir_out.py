"""What intake answers FHIR clients with: an `OperationOutcome` for every refusal
(all issues at once, each with the FHIRPath `expression` of the element at fault
and readable wording), and the case's progress as a FHIR R4 `Task`, the workflow
resource integration engines poll (docs/intake.md, "FHIR out of intake").

Pure: built from the refusal's field errors and from the stored case."""

from __future__ import annotations

import re
from typing import Any

from services.intake.documents import CaseDocument
from services.intake.domain import waiting_reasons
from services.intake.progress import Audience, waiting_for

FHIR_JSON = "application/fhir+json"
STAGE_SYSTEM = "urn:secondopinion:case-stage"
ERROR_SYSTEM = "urn:secondopinion:error-type"

# OperationOutcome.issue.code (http://hl7.org/fhir/issue-type) per error type.
ISSUE_CODE = {
    "required": "required",
    "missing": "required",
    "business-rule": "business-rule",
    "unregistered_provider": "business-rule",
    "conflict": "conflict",
    "too_long": "too-long",
    "json_too_deep": "too-long",
    "resource_type": "not-supported",
    "json_invalid": "structure",
    "model_type": "structure",
    "extra_forbidden": "structure",
    "unauthorized": "security",
    "forbidden": "security",
    "not_found": "not-found",
}
# Task.status (http://hl7.org/fhir/task-status) per stage; businessStatus says the stage.
TASK_STATUS = {
    "received": "received",
    "held_for_review": "on-hold",
    "awaiting_authorization": "on-hold",
    "accepted": "accepted",
    "records_complete": "in-progress",
    "assigned": "in-progress",
    "report_submitted": "in-progress",
    "report_ready": "in-progress",
    "delivered": "completed",
    "declined": "rejected",
}
STAGE_WORDS = {
    "received": "Received",
    "held_for_review": "Held for human review",
    "awaiting_authorization": "Awaiting release authorization",
    "accepted": "Accepted; records being retrieved",
    "records_complete": "Records complete; finding a reviewer",
    "assigned": "Assigned to a reviewer",
    "report_submitted": "Opinion submitted; report being issued",
    "report_ready": "Report ready; being delivered",
    "delivered": "Report delivered",
    "declined": "Declined",
}
_FHIRPATH = re.compile(r"^[A-Z][A-Za-z]+(\.[A-Za-z_][A-Za-z0-9_]*(\[\d+\])?|\[\d+\])*$")


def _expression(loc: str) -> str | None:
    """The FHIRPath part of an error's location (`Bundle.entry[1].resource.address
    (patient.jurisdiction)` → `Bundle.entry[1].resource.address`), if it has one."""
    path = loc.split(" (", 1)[0].strip()
    path = re.sub(r"\.(\d+)(?=\.|$)", r"[\1]", path)  # Bundle.entry.0 → Bundle.entry[0]
    return path if _FHIRPATH.match(path) else None


def operation_outcome(
    status: int, title: str, detail: str, errors: list[dict[str, Any]]
) -> dict[str, Any]:
    """Every issue of a refusal, in one OperationOutcome."""
    issues = []
    for e in errors or [{"loc": "", "msg": detail, "type": title.lower().replace(" ", "_")}]:
        loc, msg, type_ = str(e.get("loc", "")), str(e.get("msg", "")), str(e.get("type", ""))
        code = ISSUE_CODE.get(type_, "conflict" if status == 409 else "invalid")
        expression = _expression(loc)
        field = loc.split(" (", 1)[1].rstrip(")") if " (" in loc else ""
        where = expression or loc
        text = f"{where}: {msg}" if where and where != "body" else msg
        if field:
            text += f" (case field {field})"
        issue: dict[str, Any] = {
            "severity": "error",
            "code": code,
            # The router's own error type (the `type` of problem+json's errors) and,
            # for machines, where the router located it (no submitted value).
            "details": {"coding": [{"system": ERROR_SYSTEM, "code": type_ or code}], "text": text},
            "diagnostics": loc or "body",
        }
        if expression:
            issue["expression"] = [expression]
        issues.append(issue)
    return {"resourceType": "OperationOutcome", "issue": issues}


def _identifier(token: str) -> dict[str, str]:
    system, _, value = token.rpartition("|")
    return {"system": system, "value": value} if system else {"value": value}


def task(case: CaseDocument, required: tuple[Audience, ...]) -> dict[str, Any]:
    """The case's progress as a FHIR R4 Task: `focus` the integrator's ServiceRequest,
    `for` the patient (by the integrator's own identifiers), status and businessStatus
    from the stage, what it waits for as `statusReason`, each stage reached as a note."""
    s = case.submission
    ref = s.request_reference or s.external_id
    focus: dict[str, Any] = {"type": "ServiceRequest"}
    if ref.startswith("ServiceRequest/"):
        focus["reference"] = ref
    else:
        focus["identifier"] = _identifier(ref)
    subject: dict[str, Any] = {"type": "Patient"}
    if s.patient.identifiers:
        first = s.patient.identifiers[0]
        subject["identifier"] = {"system": first.system, "value": first.value}
    else:
        subject["display"] = "the patient of the request"
    waits = waiting_for_case(case, required)
    resource: dict[str, Any] = {
        "resourceType": "Task",
        "id": case.id,
        "identifier": [{"system": "urn:secondopinion:case-id", "value": case.id}],
        "status": TASK_STATUS[case.stage],
        "businessStatus": {
            "coding": [
                {"system": STAGE_SYSTEM, "code": case.stage, "display": STAGE_WORDS[case.stage]}
            ],
            "text": STAGE_WORDS[case.stage],
        },
        "intent": "order",
        "priority": {"routine": "routine", "priority": "urgent", "urgent": "asap"}[
            case.urgency.value
        ],
        "code": {"text": "Second opinion"},
        "focus": focus,
        "for": subject,
        "authoredOn": case.created_at.isoformat(),
        "lastModified": case.updated_at.isoformat(),
        "note": [{"time": h.at.isoformat(), "text": f"stage {h.stage}"} for h in case.history],
    }
    if waits:
        resource["statusReason"] = {"text": "; ".join(waits)[:2000]}
    if case.progress.report_id:
        resource["output"] = [
            {
                "type": {"text": "second opinion report"},
                "valueIdentifier": {
                    "system": "urn:secondopinion:report-id",
                    "value": case.progress.report_id,
                },
            }
        ]
    return resource


def waiting_for_case(case: CaseDocument, required: tuple[Audience, ...]) -> list[str]:
    if case.stage in ("held_for_review", "awaiting_authorization"):
        return waiting_reasons(case.hold_reason, case.waiting_on_authorization)
    return waiting_for(case.stage, case.progress, required)
