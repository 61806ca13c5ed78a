"""A generated client is enough to integrate: `openapi-python-client` (the
dev extra's pinned version) generates a Python client from each service's live
OpenAPI document, with no warning (every operation, body and answer usable),
and one case is driven end to end with nothing else: the partner subscribes at
notify, the integrator submits at intake, the reviewers answer at reporting,
the integrator reads the records progress, the operations role the assignments,
the partner the FHIR report and the PDF, and intake's status and FHIR Task say
`delivered`, each call authenticated by the generated `AuthenticatedClient`
(HTTP bearer, as the documents' security scheme says).

The services run as processes (`running_stack`); only the PACS/FHIR peer's
seeding and the partner's webhook endpoint are the project's own helpers."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from deploy.local import seed
from deploy.local.demo import REVIEWERS, WebhookReceiver, dev_key, opinion, sample_case
from deploy.local.stack import SERVICES
from tests.conftest import RunningStack

pytestmark = pytest.mark.integration

GENERATOR = Path(sys.executable).parent / "openapi-python-client"
# No formatter run on the output (nothing is committed); the PDF route's
# `application/pdf` read as bytes, the generator's documented override.
CONFIG = {
    "post_hooks": [],
    "content_type_overrides": {"application/pdf": "application/octet-stream"},
}
DELIVERY_TIMEOUT = 120.0
# The one defect of the pinned generator these documents meet: an operation with
# a required body in several media types (intake's POST /v1/cases: native JSON or
# FHIR) is annotated `... | Unset` without importing `Unset` (openapi-python-client
# issue 1451, fix proposed upstream). Patched here, and only where it occurs:
# the test fails if it shows anywhere else.
MULTI_BODY_OPERATIONS = {"generated_intake_client/api/cases/submit_case_v1_cases_post.py"}


def import_unset_where_missing(out: Path, package: str) -> set[str]:
    patched = set()
    for module in (out / package / "api").rglob("*.py"):
        text = module.read_text()
        if "Unset" in text and not re.search(r"^from \.\.\.types import .*\bUnset\b", text, re.M):
            module.write_text(
                text.replace("from ...types import ", "from ...types import Unset, ", 1)
            )
            patched.add(module.relative_to(out).as_posix())
    return patched


def generate(service: str, base_url: str, out: Path) -> ModuleType:
    """The service's client package, generated from the document it serves."""
    document = httpx.get(f"{base_url}/openapi.json", timeout=30)
    assert document.status_code == 200
    spec, config = out / f"{service}.openapi.json", out / "config.json"
    spec.write_bytes(document.content)
    config.write_text(json.dumps(CONFIG))
    package = f"generated_{service}_client"
    run = subprocess.run(
        [
            str(GENERATOR),
            "generate",
            "--path",
            str(spec),
            "--config",
            str(config),
            "--meta",
            "none",
            "--output-path",
            str(out / package),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    said = run.stdout + run.stderr
    assert run.returncode == 0, said
    assert "warning" not in said.lower(), f"{service}: {said}"
    assert import_unset_where_missing(out, package) <= MULTI_BODY_OPERATIONS
    return importlib.import_module(package)


@pytest.fixture(scope="module")
def clients(
    running_stack: RunningStack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, ModuleType]]:
    out = tmp_path_factory.mktemp("generated")
    sys.path.insert(0, str(out))
    try:
        yield {s: generate(s, running_stack.urls[s], out) for s in SERVICES}
    finally:
        sys.path.remove(str(out))
        for name in [m for m in sys.modules if m.startswith("generated_")]:
            del sys.modules[name]


def op(package: ModuleType, path: str) -> Any:
    """One operation module of a generated package, e.g. `api.cases.submit_case_v1_cases_post`."""
    return importlib.import_module(f"{package.__name__}.api.{path}")


def authenticated(package: ModuleType, base_url: str, key_id: str) -> Any:
    return package.AuthenticatedClient(
        base_url=base_url,
        token=dev_key(key_id),
        raise_on_unexpected_status=True,
        timeout=httpx.Timeout(30.0),
    )


def test_a_case_end_to_end_with_generated_clients_only(
    running_stack: RunningStack, clients: dict[str, ModuleType], tmp_path: Path
) -> None:
    urls = running_stack.urls
    intake_pkg, notify_pkg, reporting_pkg = (
        clients["intake"],
        clients["notify"],
        clients["reporting"],
    )
    integrator = authenticated(intake_pkg, urls["intake"], "demo-int")
    partner = authenticated(notify_pkg, urls["notify"], "demo-partner")

    # Without the bearer the generated client is refused (the scheme is what it sends).
    anonymous = intake_pkg.Client(base_url=urls["intake"])
    refused = op(intake_pkg, "cases.list_cases_v1_cases_get").sync_detailed(client=anonymous)
    assert refused.status_code == 401
    assert refused.parsed.__class__.__name__ == "Problem"

    receiver = WebhookReceiver(tmp_path / "webhooks.jsonl")
    subscription_in = importlib.import_module(f"{notify_pkg.__name__}.models").SubscriptionIn
    created = op(
        notify_pkg, "subscriptions.create_subscription_v1_subscriptions_post"
    ).sync_detailed(
        client=partner,
        body=subscription_in.from_dict({"url": receiver.url, "event_types": ["report.ready"]}),
    )
    assert created.status_code == 201, created.content
    receiver.secret = created.parsed.secret
    subscription_id = created.parsed.subscription_id
    try:
        run_id = uuid.uuid4().hex[:8]
        imaging, clinic = seed.seed_patient(
            running_stack.infra, f"MRN-GEN-{run_id}", "Gen^Jane", "Gen", "Jane", "1961-04-12"
        )
        case = sample_case(
            f"generated-{run_id}",
            "Second opinion on brain MRI: enhancing lesion in the posterior fossa, "
            "report says cannot exclude low-grade glioma.",
            imaging,
            clinic,
            "Lone Star Radiology",
            "Possible low-grade glioma",
        )
        models = importlib.import_module(f"{intake_pkg.__name__}.models")
        submitted = op(intake_pkg, "cases.submit_case_v1_cases_post").sync_detailed(
            client=integrator, body=models.CaseSubmission.from_dict(case)
        )
        assert submitted.status_code == 201, submitted.content
        case_id = submitted.parsed.case_id

        status = drive(clients, urls, case_id)
        assert status.stage == "delivered"
        assert status.external_id == case["external_id"]
        stages = [h.additional_properties["stage"] for h in status.history]
        for stage in ("accepted", "records_complete", "assigned", "report_ready", "delivered"):
            assert stage in stages, stages
        partner_delivery = status.delivery.additional_properties["partner"]
        assert str(partner_delivery.report.value) == "delivered"
        assert status.report_id

        # The workflow resource, through the generated client.
        task = op(intake_pkg, "cases.case_task_v_1_fhir_task_case_id_get").sync_detailed(
            case_id, client=integrator
        )
        assert task.status_code == 200, task.content
        resource = task.parsed.to_dict()
        assert resource["resourceType"] == "Task" and resource["status"] == "completed"
        assert resource["focus"]["type"] == "ServiceRequest"

        # The records and the assignment, each at its own service.
        records = op(clients["records_fetch"], "records.get_progress_v1_cases_case_id_progress_get")
        progress = records.sync_detailed(
            case_id,
            client=authenticated(clients["records_fetch"], urls["records_fetch"], "demo-int"),
        )
        assert progress.status_code == 200, progress.content
        list_assignments = op(
            clients["assignment"], "operations.case_assignments_v1_cases_case_id_assignments_get"
        )
        ops_client = authenticated(clients["assignment"], urls["assignment"], "ops")
        assignments = list_assignments.sync_detailed(case_id, client=ops_client)
        assert assignments.status_code == 200, assignments.content
        assert assignments.parsed and all(a.case_id == case_id for a in assignments.parsed)

        # The partner's report: FHIR (application/fhir+json) and PDF (bytes).
        reader = authenticated(reporting_pkg, urls["reporting"], "demo-partner")
        fhir = op(reporting_pkg, "reports.get_fhir_v1_reports_report_id_fhir_get").sync_detailed(
            status.report_id, client=reader
        )
        assert fhir.status_code == 200, fhir.content
        report = fhir.parsed.to_dict()
        assert report["resourceType"] == "DiagnosticReport"
        assert report["basedOn"][0]["identifier"]["value"] == case["external_id"]
        pdf = op(reporting_pkg, "reports.get_pdf_v1_reports_report_id_pdf_get").sync_detailed(
            status.report_id, client=reader
        )
        assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF-")

        # One report.ready message per signed report (one per needed reviewer), each
        # verified; a retry would repeat its webhook-id, never add another. The
        # other reviewers' reports may still be on their way (the case is
        # delivered with the first): both sides are read until they agree.
        # (a slot withdrawn once the images were known has no report)
        deadline = time.monotonic() + 60
        while True:
            hooks = receiver.by_case().get(case_id, [])
            reports = {h["payload"]["data"]["report_id"] for h in hooks}
            listed = list_assignments.sync_detailed(case_id, client=ops_client).parsed or []
            reported = [a for a in listed if str(a.state.value) == "reported"]
            if len(reports) == len(reported) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert hooks and all(h["verified"] for h in hooks), hooks
        assert len({h["webhook_id"] for h in hooks}) == len(reports), hooks
        assert len(reports) == len(reported), (reports, listed)
        assert status.report_id in reports
    finally:
        gone = op(
            notify_pkg, "subscriptions.delete_subscription_v1_subscriptions_sub_id_delete"
        ).sync_detailed(subscription_id, client=partner)
        assert gone.status_code in (200, 204), gone.content


def drive(clients: dict[str, ModuleType], urls: dict[str, str], case_id: str) -> Any:
    """Each reviewer answers what is offered to them (reporting's generated
    client) until intake's status (intake's generated client) says delivered."""
    reporting_pkg, intake_pkg = clients["reporting"], clients["intake"]
    offered = op(reporting_pkg, "reviewer.my_assignments_v1_reviewer_assignments_get")
    answer = op(reporting_pkg, "reviewer.submit_case_opinion_v1_cases_case_id_opinion_post")
    read = op(intake_pkg, "cases.case_status_v1_cases_case_id_get")
    draft = importlib.import_module(f"{reporting_pkg.__name__}.models").OpinionDraft
    reviewers = {r: authenticated(reporting_pkg, urls["reporting"], r) for r in REVIEWERS}
    integrator = authenticated(intake_pkg, urls["intake"], "demo-int")
    deadline, answered, status = time.monotonic() + DELIVERY_TIMEOUT, set[str](), None
    while time.monotonic() < deadline:
        for reviewer, client in reviewers.items():
            if reviewer in answered:
                continue
            mine = offered.sync_detailed(client=client)
            for assignment in mine.parsed if mine.status_code == 200 else []:
                if assignment.case_id != case_id:
                    continue
                sent = answer.sync_detailed(case_id, client=client, body=draft.from_dict(opinion()))
                assert sent.status_code in (201, 409), sent.content
                answered.add(reviewer)
        resp = read.sync_detailed(case_id, client=integrator)
        assert resp.status_code == 200, resp.content
        status = resp.parsed
        if status.stage == "delivered":
            return status
        time.sleep(0.5)
    raise AssertionError(f"not delivered in {DELIVERY_TIMEOUT}s: {status!r}")
