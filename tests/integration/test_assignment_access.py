"""Issue 15, finding 8: a reviewer cannot tell that another reviewer's assignment
exists. Someone else's assignment answers 404 with the very body a missing one
gets, for accept and decline alike. In process, on the real database."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import pytest_asyncio

from services.assignment import handlers
from shared.events import FirstOpinionSource, ManifestItem, RecordsComplete, RoutingContext
from tests.browser.assignment_service import InProcessAssignment, event_meta, reviewer_auth

pytestmark = pytest.mark.integration
START = datetime(2026, 11, 16, 9, tzinfo=ZoneInfo("America/New_York"))


@pytest_asyncio.fixture(loop_scope="session")
async def inproc(infra: dict[str, Any], tmp_path: Path) -> AsyncIterator[InProcessAssignment]:
    svc = InProcessAssignment(infra, tmp_path, START)
    try:
        await svc.load_roster()
        yield svc
    finally:
        await svc.close()


async def offered_to_neuro_1(svc: InProcessAssignment) -> str:
    case_id = f"case-it-{uuid.uuid4().hex[:12]}"
    event = RecordsComplete(
        case_id=case_id,
        tenant_id="demo-health",
        routing=RoutingContext(
            subspecialties=["neuroradiology"],
            service_tier="imaging_reread",
            jurisdiction="US-CA",
            first_opinion=FirstOpinionSource(institution="Lone Star Radiology"),
        ),
        manifest=[ManifestItem(kind="imaging", present=True, count=1)],
        completed_at=START,
    )
    await handlers.assign_case(svc.store, svc.policy, svc.clock.now(), event, event_meta())
    (a,) = await svc.store.find({"case_id": case_id})
    assert a.reviewer_id == "rev-neuro-1"
    return a.assignment_id


@pytest.mark.parametrize("answer", ["accept", "decline"])
async def test_another_reviewers_assignment_answers_as_a_missing_one(
    inproc: InProcessAssignment, answer: str
) -> None:
    theirs = await offered_to_neuro_1(inproc)
    missing = str(uuid.uuid4())
    intruder = reviewer_auth("rev-neuro-2")

    async def ask(assignment_id: str) -> tuple[int, str]:
        url = f"/v1/reviewer/assignments/{assignment_id}/{answer}"
        r = await inproc.http.post(url, json={}, headers=intruder)
        return r.status_code, r.text.replace(assignment_id, "<id>")

    assert await ask(theirs) == await ask(missing)
    assert (await ask(theirs))[0] == 404
    # Nothing changed: the owner still has the offer and can answer it.
    url = f"/v1/reviewer/assignments/{theirs}/accept"
    r = await inproc.http.post(url, headers=reviewer_auth("rev-neuro-1"))
    assert r.status_code == 200 and r.json()["state"] == "accepted"


async def test_an_earlier_reviewer_still_learns_the_assignment_moved_on(
    inproc: InProcessAssignment,
) -> None:
    """The reviewer who declined it knew it: for them it is a conflict, not a 404."""
    mine = await offered_to_neuro_1(inproc)
    url = f"/v1/reviewer/assignments/{mine}/decline"
    r = await inproc.http.post(url, json={}, headers=reviewer_auth("rev-neuro-1"))
    assert r.status_code == 200
    r = await inproc.http.post(url, json={}, headers=reviewer_auth("rev-neuro-1"))
    assert r.status_code == 409
