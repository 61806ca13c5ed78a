"""Intake's record of the downstream stages, on the real Mongo-wire server: the
stage shown only moves forward, an event that arrives late still joins the
history, and a redelivered event is recorded once (services/intake/store.py)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo.asynchronous.database import AsyncDatabase

from services.intake import domain, handlers
from services.intake.documents import CaseDocument
from services.intake.store import IntakeStore
from shared.clock import ManualClock
from shared.events import CaseSubmission
from shared.store import Doc
from tests.unit.test_intake_fhir import native_case

pytestmark = pytest.mark.integration


async def test_stages_move_forward_late_ones_join_history_and_redeliveries_count_once(
    db: AsyncDatabase[Doc],
) -> None:
    store = IntakeStore(db["cases"], db["rejections"])
    reached = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
    clock = ManualClock(reached - timedelta(days=1))
    submission = CaseSubmission.model_validate(native_case(f"it-{uuid.uuid4().hex[:10]}"))
    result = await handlers.submit_case(store, clock, "demo-health", submission)
    case_id = result.case_id
    assert result.stage == "accepted"
    clock.set(reached + timedelta(hours=1))  # intake hears of every stage later

    async def advance(stage: Any, event_id: str) -> CaseDocument:
        at = reached + timedelta(minutes=int(event_id[1:]))
        await store.advance_stage(
            case_id, event_id, stage, domain.stage_rank(stage), at, clock.now()
        )
        doc = await store.get(case_id)
        assert doc is not None
        return doc

    doc = await advance("records_complete", "e1")
    assert doc.stage == "records_complete"
    doc = await advance("report_ready", "e3")  # overtakes report_submitted
    assert doc.stage == "report_ready"
    doc = await advance("report_submitted", "e2")  # late: history only
    assert doc.stage == "report_ready"
    assert doc.stage_rank == domain.stage_rank("report_ready")
    doc = await advance("records_complete", "e1")  # redelivered
    downstream = doc.history[1:]  # after the submission's own "accepted"
    assert [h.stage for h in doc.history] == [
        "accepted",
        "records_complete",
        "report_ready",
        "report_submitted",
    ]
    # Dated when the stage was reached (the event's time), recorded when heard of.
    minutes = [round((h.at - reached).total_seconds() / 60) for h in downstream]
    assert minutes == [1, 3, 2]
    assert all(h.recorded_at == clock.now() for h in downstream)
    assert doc.created_at == reached - timedelta(days=1)
