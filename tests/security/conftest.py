"""Security tier: the whole system as processes (`running_stack` of
tests/conftest.py), attacked from the outside.

`canary` pushes one case with distinctive PHI (name "Zelda Phi-Canary", born
1933-03-03, a fresh MRN) from submission to a delivered, signed webhook. The
tenancy tests use what it created (case, report, subscription, deliveries) as
tenant A's data, and test_zz_phi_scan.py searches every log, span file and
/metrics page of the run for its PHI.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from deploy.local import seed
from deploy.local.demo import WebhookReceiver, auth, opinion, play_reviewers, sample_case
from tests.conftest import RunningStack

CANARY_NAME = "Zelda Phi-Canary"
CANARY_FAMILY, CANARY_GIVEN = "Phi-Canary", "Zelda"
CANARY_DICOM_NAME = "Phi-Canary^Zelda"
CANARY_BIRTH = "1933-03-03"
CANARY_MRN = f"MRN-ZC{uuid.uuid4().hex[:8]}"
TENANT_A, TENANT_B = "demo-health", "other-clinic"
DELIVERY_TIMEOUT = 120.0

__all__ = ["auth", "opinion"]


@dataclass
class Canary:
    """What the PHI-bearing run created, all belonging to tenant A (demo-health)."""

    case_id: str
    external_id: str
    report_id: str
    subscription_id: str
    delivery_ids: list[str]
    clinic_patient_id: str
    receiver: WebhookReceiver
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


def canary_case(external_id: str, clinic_patient: str) -> dict[str, Any]:
    case = sample_case(
        external_id,
        "Second opinion on brain MRI: enhancing lesion in the posterior fossa, "
        "report says cannot exclude low-grade glioma.",
        CANARY_MRN,
        clinic_patient,
        "Canary Imaging Group",
        "Possible low-grade glioma",
    )
    case["patient"] = {
        **case["patient"],
        "name": CANARY_NAME,
        "birth_date": CANARY_BIRTH,
        "identifiers": [{"system": "urn:demo:mrn", "value": CANARY_MRN}],
    }
    return case


def drive_to_delivery(client: httpx.Client, urls: dict[str, str], case_id: str) -> None:
    """Play the reviewers until intake reports the case delivered (bounded)."""
    deadline, reviewed, stage = time.monotonic() + DELIVERY_TIMEOUT, set[str](), ""
    while time.monotonic() < deadline:
        play_reviewers(client, urls["reporting"], reviewed)
        resp = client.get(f"{urls['intake']}/v1/cases/{case_id}", headers=auth("demo-int"))
        stage = resp.json().get("stage", "") if resp.status_code == 200 else ""
        if stage == "delivered":
            return
        time.sleep(0.5)
    raise AssertionError(f"canary case not delivered in {DELIVERY_TIMEOUT}s (stage {stage!r})")


@pytest.fixture(scope="session")
def canary(running_stack: RunningStack, tmp_path_factory: pytest.TempPathFactory) -> Canary:
    started = time.monotonic()
    urls, infra = running_stack.urls, running_stack.infra
    _, clinic = seed.seed_patient(
        infra, CANARY_MRN, CANARY_DICOM_NAME, CANARY_FAMILY, CANARY_GIVEN, CANARY_BIRTH
    )
    receiver = WebhookReceiver(Path(tmp_path_factory.mktemp("canary")) / "webhooks.jsonl")
    external_id = f"canary-{uuid.uuid4().hex[:8]}"
    with httpx.Client(timeout=30) as client:
        sub = client.post(
            f"{urls['notify']}/v1/subscriptions",
            headers=auth("demo-partner"),
            json={"url": receiver.url, "event_types": ["report.ready"]},
        )
        assert sub.status_code == 201, sub.text
        receiver.secret = sub.json()["secret"]
        resp = client.post(
            f"{urls['intake']}/v1/cases",
            json=canary_case(external_id, clinic),
            headers=auth("demo-int"),
        )
        assert resp.status_code == 201, resp.text
        case_id = resp.json()["case_id"]
        drive_to_delivery(client, urls, case_id)
        hooks = receiver.by_case().get(case_id, [])
        assert len(hooks) == 1 and hooks[0]["verified"], hooks
        deliveries = client.get(
            f"{urls['notify']}/v1/deliveries",
            params={"case_id": case_id},
            headers=auth("demo-partner"),
        ).json()
    return Canary(
        case_id=case_id,
        external_id=external_id,
        report_id=hooks[0]["payload"]["data"]["report_id"],
        subscription_id=sub.json()["subscription_id"],
        delivery_ids=[d["delivery_id"] for d in deliveries],
        clinic_patient_id=clinic,
        receiver=receiver,
        seconds=time.monotonic() - started,
    )
