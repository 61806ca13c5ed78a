"""Intake's record of the downstream stages, on the real Mongo-wire server
(services/intake/progress.py through handlers.follow and the store): an event that
overtakes its predecessor waits and the history has no gap, a redelivered event is
applied once, events of one case applied at the same moment all land, and every
stage reached leaves one `case.status` in the outbox."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from pymongo.asynchronous.database import AsyncDatabase

from services.intake import handlers, progress
from services.intake.store import IntakeStore
from shared.clock import ManualClock
from shared.envelope import EventMeta
from shared.events import CaseSubmission
from shared.store import Doc
from tests.unit.test_intake_fhir import native_case
from tests.unit.test_intake_progress import EVENTS, notice

pytestmark = pytest.mark.integration
PARTNER = progress.DeliveryPolicy()


def meta(event_id: str, at: datetime) -> EventMeta:
    return EventMeta(
        event_id=event_id, ce_type="x", source="/it", time=at.isoformat(), tenant_id="demo-health"
    )


async def test_stages_in_order_without_gaps_redeliveries_once_and_status_events(
    db: AsyncDatabase[Doc],
) -> None:
    store = IntakeStore(db["cases"], db["rejections"])
    reached = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
    clock = ManualClock(reached - timedelta(days=1))
    submission = CaseSubmission.model_validate(native_case(f"it-{uuid.uuid4().hex[:10]}"))
    result = await handlers.submit_case(store, clock, "demo-health", submission)
    case_id = result.case_id
    clock.set(reached + timedelta(hours=1))  # intake hears of every stage later

    async def follow(name: str, minute: int, event_id: str | None = None) -> list[str]:
        event = EVENTS[name].model_copy(update={"case_id": case_id, "tenant_id": "demo-health"})
        at = reached + timedelta(minutes=minute)
        out = await handlers.follow(
            store, clock, event, meta(event_id or name, at), lambda _: PARTNER
        )
        return [e.topic for e in out]

    assert await follow("records.complete", 1) == ["case.status"]
    # Read at the same moment on their own topics: both land (version-guarded writes).
    await asyncio.gather(follow("case.assigned", 2), follow("records.incomplete", 2))
    assert await follow("report.ready", 4) == []  # overtook report.submitted: waits
    assert await follow("report.submitted", 3) == ["case.status", "case.status"]
    assert await follow("report.submitted", 3) == []  # redelivered
    # ... and skipped in the read, before the case is parsed or the stage applied.
    assert await store.get(case_id, unless_applied="report.submitted") is None
    assert await store.get(case_id, unless_applied="not-applied") is not None
    n = notice("report.ready", "dead_letter").model_copy(
        update={"case_id": case_id, "tenant_id": "demo-health"}
    )
    await handlers.follow(
        store, clock, n, meta("dl", reached + timedelta(minutes=5)), lambda _: PARTNER
    )
    doc = await store.get(case_id)
    assert doc is not None
    assert doc.stage == "report_ready"
    assert [h.stage for h in doc.history] == [
        "accepted",
        "records_complete",
        "assigned",
        "report_submitted",
        "report_ready",
    ]
    minutes = [round((h.at - reached).total_seconds() / 60) for h in doc.history[1:]]
    assert minutes == [1, 2, 3, 4]
    assert all(h.recorded_at == clock.now() for h in doc.history[1:])
    assert doc.progress.assignment.reviewer_id == "rev-1"
    assert doc.progress.records.state == "complete"  # incomplete after complete changes nothing
    assert doc.progress.delivery["partner"].report == "failed"
    stored = await db["cases"].find_one({"_id": case_id})
    assert stored is not None
    statuses = [e["body"]["stage"] for e in stored["outbox"] if e["topic"] == "case.status"]
    assert statuses == ["accepted", *[h.stage for h in doc.history[1:]]]
