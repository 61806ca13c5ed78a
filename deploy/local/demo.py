"""The local demo: bring the system up, push sample cases through, show them.

    python -m deploy.local.demo          # stays up until Ctrl-C, then stops everything
    python -m deploy.local.demo --once   # exits (and stops everything) once all are delivered

It seeds the PACS and the FHIR peer with a demo patient's records, registers a
partner webhook receiver, submits one case over HTTP and one straight onto the
`case.submitted` topic, plays the assigned reviewers, and prints a live table
of each case's stage until every case is delivered to the partner.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from standardwebhooks import Webhook

from deploy.local import seed, stack

TENANT = "demo-health"
HERE = Path(__file__).resolve().parent


def dev_key(key_id: str) -> str:
    """The documented development key of deploy/local/dev-credentials.json."""
    return f"{key_id}.dev-secret-{key_id}"


def auth(key_id: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {dev_key(key_id)}"}


class WebhookReceiver:
    """A partner's endpoint on loopback: verifies each delivery's signature."""

    def __init__(self, log_path: Path) -> None:
        self.secret = ""
        self.deliveries: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._log = log_path
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                receiver.record(dict(self.headers), body)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/second-opinions"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def record(self, headers: dict[str, str], body: bytes) -> None:
        lowered = {k.lower(): v for k, v in headers.items()}
        try:
            payload = Webhook(self.secret).verify(body, lowered)
            verified = True
        except Exception:
            payload, verified = json.loads(body or b"{}"), False
        entry = {"webhook_id": lowered.get("webhook-id"), "verified": verified, "payload": payload}
        with self._lock:
            self.deliveries.append(entry)
            with self._log.open("a") as f:
                f.write(json.dumps(entry) + "\n")

    def by_case(self) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        with self._lock:
            for d in self.deliveries:
                out.setdefault(d["payload"].get("data", {}).get("case_id", "?"), []).append(d)
        return out


def sample_case(
    external_id: str,
    question: str,
    imaging_patient: str,
    clinic_patient: str,
    institution: str,
    diagnosis: str,
) -> dict[str, Any]:
    return {
        "external_id": external_id,
        "patient": {
            "name": "Jane Demo-Patient",
            "birth_date": "1961-04-12",
            "sex": "female",
            "jurisdiction": "US-CA",
            "identifiers": [{"system": "urn:demo:mrn", "value": imaging_patient}],
        },
        "question": question,
        "first_opinion": {
            "diagnosis": diagnosis,
            "treatment_plan": "Surgical resection",
            "report_text": "Findings are nonspecific; cannot exclude neoplasm.",
            "clinician_id": "npi-1234567890",
            "clinician_name": "Dr. First Reader",
            "institution": institution,
            "affiliations": [institution],
        },
        "urgency": "priority",
        "service_tier": "imaging_reread",
        "records": [
            {
                "provider_id": "st-mary-imaging",
                "patient_id": imaging_patient,
                "kinds": ["imaging"],
                "authorized": True,
            },
            {
                "provider_id": "st-mary-clinic",
                "patient_id": clinic_patient,
                "kinds": ["notes", "reports", "labs", "treatments"],
                "authorized": True,
            },
        ],
    }


def opinion() -> dict[str, Any]:
    return {
        "agrees_with_diagnosis": False,
        "diagnosis": "Subacute infarct rather than neoplasm",
        "diagnosis_rationale": (
            "Gyriform enhancement and restricted diffusion in an arterial territory."
        ),
        "agrees_with_treatment_plan": False,
        "would_do_differently": "Defer resection; repeat MRI with perfusion in 6 weeks.",
        "information_that_would_change_opinion": "Growth or new enhancement on follow-up imaging.",
        "recommended_next_steps": ["MRI with perfusion in 6 weeks", "Neurology referral"],
        "concordance": "changed_diagnosis",
        "imaging": {
            "findings": "Gyriform enhancement in the left MCA territory without mass effect.",
            "original_wording": "cannot exclude low-grade glioma",
            "reference": "revised",
            "assessment": "Diagnosis changes from possible neoplasm to subacute infarct.",
        },
    }


async def publish_case(bootstrap: str, tenant: str, case: dict[str, Any]) -> None:
    """What an integrator does on Kafka: a binary-mode CloudEvent on case.submitted."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
    await producer.start()
    try:
        headers = [
            ("ce_specversion", b"1.0"),
            ("ce_id", str(uuid.uuid4()).encode()),
            ("ce_type", b"org.secondopinion.case.submitted.v1"),
            ("ce_source", b"/demo/integrator"),
            ("ce_tenantid", tenant.encode()),
            ("content-type", b"application/json"),
        ]
        body = json.dumps({"tenant_id": tenant, "submission": case}).encode()
        await producer.send_and_wait(
            "case.submitted", body, key=case["external_id"].encode(), headers=headers
        )
    finally:
        await producer.stop()


# Every reviewer of the demo roster (each has a development key in
# dev-credentials.json): a case assigned to any of them is played.
REVIEWERS = [r["reviewer_id"] for r in json.loads((HERE / "roster.json").read_text())]


def play_reviewers(
    client: httpx.Client,
    reporting_url: str,
    done: set[str],
    viewers: dict[str, str] | None = None,
) -> None:
    """Each reviewer submits an opinion on every case assigned to them (noting, in
    `viewers`, the review PACS viewer link the assignment gives for the images)."""
    for reviewer in REVIEWERS:
        resp = client.get(f"{reporting_url}/v1/reviewer/assignments", headers=auth(reviewer))
        for a in resp.json() if resp.status_code == 200 else []:
            if viewers is not None and a.get("images"):
                viewers.setdefault(a["case_id"], a["images"][0]["viewer_url"])
            if a["case_id"] in done:
                continue
            r = client.post(  # by assignment: a reviewer may hold two on one case
                f"{reporting_url}/v1/assignments/{a['assignment_id']}/opinion",
                json=opinion(),
                headers=auth(reviewer),
            )
            if r.status_code in (201, 409):
                done.add(a["case_id"])


def records_progress(
    client: httpx.Client, urls: dict[str, str], cases: list[dict[str, Any]]
) -> dict[str, str]:
    """'received/expected inst' per case from records_fetch (blank until it has the case)."""
    out: dict[str, str] = {}
    for c in cases:
        r = client.get(
            f"{urls['records_fetch']}/v1/cases/{c['case_id']}/progress", headers=auth("demo-int")
        )
        if r.status_code == 200:
            inst = r.json()["instances"]
            out[c["case_id"]] = f"{inst.get('received', 0)}/{inst.get('expected', 0)} inst"
    return out


def render(
    cases: list[dict[str, Any]],
    receiver: WebhookReceiver,
    urls: dict[str, str],
    records: dict[str, str] | None = None,
    viewers: dict[str, str] | None = None,
) -> str:
    hooks = receiver.by_case()
    records = records or {}
    lines = [
        f"{'external id':<24} {'case id':<26} {'subspecialty':<26} {'stage':<18} "
        f"{'records':<11} webhooks"
    ]
    for c in cases:
        subs = ",".join(s["name"] for s in c["subspecialties"])[:25]
        n = len(hooks.get(c["case_id"], []))
        rec = records.get(c["case_id"], "")
        lines.append(
            f"{c['external_id']:<24} {c['case_id']:<26} {subs:<26} {c['stage']:<18} {rec:<11} {n}"
        )
    lines.append(
        f"API docs: {urls['intake']}/docs  {urls['reporting']}/docs  {urls['notify']}/docs"
    )
    lines.append(f"SLA dashboard: {urls['assignment']}/dashboard#key={dev_key('ops')}")
    for c in cases:
        if link := (viewers or {}).get(c["case_id"]):
            lines.append(f"Images of {c['case_id']} (review PACS viewer): {link}")
    return "\n".join(lines)


def run_demo(stack_info: dict[str, Any], state: Path, timeout: float) -> bool:
    urls, infra = stack_info["urls"], stack_info["infra"]
    run_id = time.strftime("%H%M%S")
    imaging_patient, clinic_patient = seed.seed_patient(
        infra, f"MRN-{run_id}", "Demo^Jane", "Demo-Patient", "Jane", "1961-04-12"
    )
    receiver = WebhookReceiver(state / "webhooks.jsonl")
    with httpx.Client(timeout=30) as client:
        sub = client.post(
            f"{urls['notify']}/v1/subscriptions",
            headers=auth("demo-partner"),
            json={"url": receiver.url, "event_types": ["report.ready"]},
        )
        sub.raise_for_status()
        receiver.secret = sub.json()["secret"]
        http_case = sample_case(
            f"demo-{run_id}-http",
            "Second opinion on brain MRI: enhancing lesion in the posterior "
            "fossa, report says cannot exclude low-grade glioma.",
            imaging_patient,
            clinic_patient,
            "Lone Star Radiology",
            "Possible low-grade glioma",
        )
        client.post(
            f"{urls['intake']}/v1/cases", json=http_case, headers=auth("demo-int")
        ).raise_for_status()
        kafka_case = sample_case(
            f"demo-{run_id}-kafka",
            "Second opinion on prostate MRI: concerning lesion in left peripheral zone, PSA 6.4.",
            imaging_patient,
            clinic_patient,
            "Valley Urology",
            "PI-RADS 4 lesion, likely prostate cancer",
        )
        asyncio.run(publish_case(infra["kafka_bootstrap"], TENANT, kafka_case))
        return watch(
            client, urls, receiver, {http_case["external_id"], kafka_case["external_id"]}, timeout
        )


def watch(
    client: httpx.Client,
    urls: dict[str, str],
    receiver: WebhookReceiver,
    expected: set[str],
    timeout: float,
) -> bool:
    """Play the reviewers and print the table until every case is delivered."""
    deadline, last = time.monotonic() + timeout, ""
    reviewed: set[str] = set()
    viewers: dict[str, str] = {}
    while time.monotonic() < deadline:
        play_reviewers(client, urls["reporting"], reviewed, viewers)
        cases = [
            c
            for c in client.get(f"{urls['intake']}/v1/cases", headers=auth("demo-int")).json()
            if c["external_id"] in expected
        ]
        table = render(cases, receiver, urls, records_progress(client, urls, cases), viewers)
        if table != last:
            print(f"\n[{time.strftime('%H:%M:%S')}]\n{table}", flush=True)
            last = table
        if len(cases) == len(expected) and all(c["stage"] == "delivered" for c in cases):
            print(
                "\nAll sample cases delivered; partner webhooks verified:",
                all(d["verified"] for d in receiver.deliveries),
                flush=True,
            )
            return True
        time.sleep(0.5)
    print("Timed out waiting for delivery; see .run/services/logs/", file=sys.stderr)
    return False


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--once", action="store_true", help="stop everything once the cases are delivered"
    )
    parser.add_argument("--timeout", type=float, default=180.0)
    args = parser.parse_args()
    paths = stack.state_paths()
    print("Starting infrastructure and services (first run installs them)...", flush=True)
    ok = False
    try:
        info = stack.up(paths)
        ok = run_demo(info, paths.root, args.timeout)
        if not args.once:
            print("\nSystem is up. Traces: .run/traces/*.jsonl. Press Ctrl-C to stop.", flush=True)
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        # A second Ctrl-C (a person waiting for Tansu and SeaweedFS to stop, up to
        # 10 s each) used to interrupt the stop half-way: the broker was stopped,
        # SeaweedFS, stopped last, was left running. From here on SIGINT is ignored,
        # by this process and (inherited) by the `infra.py stop` it runs.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        print("Stopping services and infrastructure (this takes a few seconds)...", flush=True)
        stack.down(paths)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
