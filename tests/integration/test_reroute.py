"""Routing re-checked when the images are known, on the real broker and database
(docs/clinical-rules.md, "The images"): a case whose words say "chest CT" and
nothing of the heart, whose study turns out to be BodyPartExamined=HEART. Intake
reads records.complete from its real topic, adds cardiac imaging with the reason
(case status and `case.rerouted` on Kafka); that very event, handed to
assignment's handlers on the real database, opens the cardiac imaging slot and
withdraws the unaccepted one no longer needed, whichever of records.complete and
case.rerouted assignment reads first."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from services.assignment import handlers as assignment
from shared.events import (
    CaseRerouted,
    ManifestItem,
    RecordKind,
    RecordsComplete,
    RoutingContext,
    StudySummary,
)
from tests.browser.assignment_service import OPS, InProcessAssignment, event_meta
from tests.conftest import eventually
from tests.integration.test_intake_api import DEMO, Intake, emit, ext, intake
from tests.unit.test_intake_fhir import native_case

pytestmark = pytest.mark.integration
__all__ = ["intake"]

HEART_CT = StudySummary(
    study_uid="1.2.826.0.1.3680043.8.498.1",
    modality="CT",
    study_date="20261101",
    description="CT CARDIAC CALCIUM SCORE",
    instances=120,
    body_part="HEART",
)
CARDIAC_IMAGER = {
    "reviewer_id": "rev-cardiac-1",
    "name": "Dr. Heart",
    "subspecialties": ["cardiac_imaging"],
    "licensed_jurisdictions": ["US-CA"],
}
RADIOLOGIST = {
    "reviewer_id": "rev-rad-1",
    "name": "Dr. General",
    "subspecialties": ["radiology", "thoracic_imaging"],
    "licensed_jurisdictions": ["US-CA"],
}


@pytest_asyncio.fixture(loop_scope="session")
async def inproc(infra: dict[str, Any], tmp_path: Path) -> AsyncIterator[InProcessAssignment]:
    svc = InProcessAssignment(infra, tmp_path, datetime.now(UTC))
    try:
        await svc.load_roster()
        for r in (CARDIAC_IMAGER, RADIOLOGIST):
            got = await svc.http.put(f"/v1/reviewers/{r['reviewer_id']}", json=r, headers=OPS)
            assert got.status_code == 200, got.text
        yield svc
    finally:
        await svc.close()


def records_complete(case_id: str, routing: dict[str, Any]) -> RecordsComplete:
    """records_fetch's event: the routing of case.accepted and the studies retrieved."""
    return RecordsComplete(
        case_id=case_id,
        tenant_id="demo-health",
        routing=RoutingContext.model_validate(routing),
        manifest=[
            ManifestItem(kind=RecordKind.IMAGING, present=True, count=120, studies=[HEART_CT])
        ],
        completed_at=datetime.now(UTC),
    )


async def rerouted_case(it: Intake, name: str, question: str) -> tuple[RecordsComplete, Any]:
    """A case submitted over HTTP, its records.complete published on the real topic,
    and the case.rerouted intake publishes in answer."""
    body = native_case(
        ext(it, name),
        question=question,
        first_opinion={"diagnosis": "See the report", "institution": "Valley Imaging"},
        service_tier="imaging_reread",
    )
    r = await it.http.post("/v1/cases", json=body, headers=DEMO)
    assert r.status_code in (200, 201), r.text
    case_id = r.json()["case_id"]
    (accepted,) = await it.wait_for("case.accepted", case_id)
    complete = records_complete(case_id, accepted["body"]["routing"])
    await emit(it, complete, "records.complete")
    (rerouted,) = await it.wait_for("case.rerouted", case_id)
    return complete, rerouted


async def test_a_chest_ct_that_is_a_heart_study_brings_in_cardiac_imaging(
    intake: Intake, inproc: InProcessAssignment
) -> None:
    it = intake
    question = "Please re-read my chest CT: the report says it is normal, I still have pain."
    complete, rerouted = await rerouted_case(it, "heart", question)
    case_id = complete.case_id
    assert complete.routing.subspecialties == ["thoracic_imaging"]  # from the words alone
    event = CaseRerouted.model_validate(rerouted["body"])
    assert event.routing.subspecialties == ["thoracic_imaging", "cardiac_imaging"]
    assert "dicom BodyPartExamined HEART" in event.added["cardiac_imaging"]
    assert event.removed == {}

    # The case status says what changed, when, and why.
    async def status() -> dict[str, Any] | None:
        got = (await it.http.get(f"/v1/cases/{case_id}", headers=DEMO)).json()
        return dict(got) if got["stage"] == "records_complete" else None

    got = await eventually(status, within=30)
    assert [s["name"] for s in got["subspecialties"]] == ["thoracic_imaging", "cardiac_imaging"]
    (change,) = got["reroutes"]
    assert change["images"] == "CT HEART (CT CARDIAC CALCIUM SCORE)"
    assert [a["name"] for a in change["added"]] == ["cardiac_imaging"]
    assert "'heart' in the images" in change["added"][0]["reason"]
    assert any(f["source"] == "dicom BodyPartExamined HEART" for f in got["findings"])

    # Assignment: records.complete first (slots by the first routing), then the reroute.
    store, policy, now = inproc.store, inproc.policy, inproc.clock.now()
    await assignment.assign_case(store, policy, now, complete, event_meta())
    await assignment.reroute_case(store, policy, now, event, event_meta())
    again = await assignment.reroute_case(store, policy, now, event, event_meta())
    assert again == []  # redelivered: nothing more
    r = await inproc.http.get(f"/v1/cases/{case_id}/assignments", headers=OPS)
    slots = {a["subspecialty"]: a for a in r.json()}
    assert set(slots) == {"thoracic_imaging", "cardiac_imaging"}
    assert slots["cardiac_imaging"]["state"] == "offered"
    assert slots["cardiac_imaging"]["reviewer_id"] == "rev-cardiac-1"


async def test_a_generic_re_read_loses_the_general_radiologist_to_the_site_reader(
    intake: Intake, inproc: InProcessAssignment
) -> None:
    """The words name no site ("my scan"): a general radiologist is offered it. The
    images say heart: cardiac imaging is added and the unaccepted general offer is
    withdrawn (case.reassigned `withdrawn`); read in the other order, assignment
    opens only the cardiac slot."""
    it = intake
    complete, rerouted = await rerouted_case(it, "generic", "Please re-read my scan.")
    case_id = complete.case_id
    assert complete.routing.subspecialties == ["radiology"]
    event = CaseRerouted.model_validate(rerouted["body"])
    assert event.routing.subspecialties == ["cardiac_imaging"]
    assert "no longer needed once the images were known" in event.removed["radiology"]

    store, policy, now = inproc.store, inproc.policy, inproc.clock.now()
    await assignment.assign_case(store, policy, now, complete, event_meta())
    await assignment.reroute_case(store, policy, now, event, event_meta())
    r = await inproc.http.get(f"/v1/cases/{case_id}/assignments", headers=OPS)
    states = {a["subspecialty"]: (a["state"], a["reason"]) for a in r.json()}
    assert states["cardiac_imaging"][0] == "offered"
    assert states["radiology"][0] == "withdrawn"
    assert "no longer needed once the images were known" in states["radiology"][1]
    (withdrawn,) = await inproc.emitted("case.reassigned", case_id)
    assert withdrawn["withdrawn"] is True and withdrawn["from_reviewer_id"] == "rev-rad-1"

    # The other order: case.rerouted read before records.complete.
    other = complete.model_copy(update={"case_id": f"case-it-{uuid.uuid4().hex[:12]}"})
    first = event.model_copy(update={"case_id": other.case_id})
    assert await assignment.reroute_case(store, policy, now, first, event_meta()) == []
    await assignment.assign_case(store, policy, now, other, event_meta())
    r = await inproc.http.get(f"/v1/cases/{other.case_id}/assignments", headers=OPS)
    assert [a["subspecialty"] for a in r.json()] == ["cardiac_imaging"]
