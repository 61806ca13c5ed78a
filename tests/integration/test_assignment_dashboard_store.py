"""The dashboard's summary of reported work, computed by the real Mongo-wire
server (services/assignment/store.py `reported_summary`): counts per tier and
turnaround percentiles per subspecialty, from the turnaround window only."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pymongo.asynchronous.database import AsyncDatabase

from services.assignment.store import AssignmentStore
from shared.store import Doc

pytestmark = pytest.mark.integration


def reported(i: int, subspecialty: str, hours: float, at: datetime) -> Doc:
    return {
        "_id": f"case-{i}:{subspecialty}",
        "state": "reported",
        "subspecialty": subspecialty,
        "routing": {"service_tier": "imaging_reread" if i % 2 else "multi_specialist"},
        "reported_at": at,
        "turnaround_hours": hours,
    }


async def test_reported_work_is_summarised_by_the_database(db: AsyncDatabase[Doc]) -> None:
    store = AssignmentStore(db["reviewers"], db["assignments"])
    now = datetime.now(UTC)
    docs = [reported(i, "neuroradiology", float(i), now) for i in range(1, 11)]
    docs += [reported(i, "body_imaging", 2.0, now) for i in range(1, 4)]
    docs.append(reported(99, "neuroradiology", 500.0, now - timedelta(days=200)))  # too old
    docs.append({**reported(98, "neuroradiology", 1.0, now), "state": "accepted"})  # open
    await store.assignments.insert_many(docs)

    summary = await store.reported_summary(now - timedelta(days=90))

    assert summary.by_tier == {"imaging_reread": 7, "multi_specialist": 6}
    body, neuro = summary.turnaround
    assert (body.subspecialty, body.count, body.median_hours, body.p90_hours) == (
        "body_imaging",
        3,
        2.0,
        2.0,
    )
    assert (neuro.subspecialty, neuro.count) == ("neuroradiology", 10)
    assert 5.0 <= neuro.median_hours <= 6.0 and 9.0 <= neuro.p90_hours <= 10.0
