"""Intake's record of the downstream stages, on the real Mongo-wire server: the
stage shown only moves forward, an event that arrives late still joins the
history, and a redelivered event is recorded once (services/intake/store.py)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo.asynchronous.database import AsyncDatabase

from services.intake import domain
from services.intake.store import IntakeStore
from shared.store import Doc

pytestmark = pytest.mark.integration


async def test_stages_move_forward_late_ones_join_history_and_redeliveries_count_once(
    db: AsyncDatabase[Doc],
) -> None:
    store = IntakeStore(db["cases"], db["rejections"])
    case_id = f"case-it-{uuid.uuid4().hex[:10]}"
    await store.cases.insert_one(
        {"_id": case_id, "stage": "accepted", "stage_rank": domain.stage_rank("accepted")}
    )

    reached = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)

    async def advance(stage: str, event_id: str) -> dict[str, Any]:
        at = reached + timedelta(minutes=int(event_id[1:]))
        await store.advance_stage(case_id, event_id, stage, domain.stage_rank(stage), at)
        doc = await store.get(case_id)
        assert doc is not None
        return doc

    doc = await advance("records_complete", "e1")
    assert doc["stage"] == "records_complete"
    doc = await advance("report_ready", "e3")  # overtakes report_submitted
    assert doc["stage"] == "report_ready"
    doc = await advance("report_submitted", "e2")  # late: history only
    assert doc["stage"] == "report_ready"
    assert doc["stage_rank"] == domain.stage_rank("report_ready")
    doc = await advance("records_complete", "e1")  # redelivered
    assert [h["stage"] for h in doc["history"]] == [
        "records_complete",
        "report_ready",
        "report_submitted",
    ]
    # Dated when the stage was reached (the event's time), recorded when heard of.
    minutes = [
        round((h["at"].replace(tzinfo=UTC) - reached).total_seconds() / 60) for h in doc["history"]
    ]
    assert minutes == [1, 3, 2]
    assert all(h["recorded_at"].replace(tzinfo=UTC) > reached for h in doc["history"])
