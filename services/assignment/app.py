"""assignment's wiring: roster loading, the records.complete and report.submitted
subscribers, and the roster API."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import Depends
from pydantic import TypeAdapter

from services.assignment import handlers
from services.assignment.domain import Reviewer
from services.assignment.settings import AssignmentSettings
from services.assignment.store import AssignmentStore
from shared.auth import Principal, require
from shared.envelope import EventMeta
from shared.events import RecordsComplete, ReportSubmitted
from shared.runtime import Service

settings = AssignmentSettings()
service = Service(
    settings,
    title="Second-opinion assignment",
    description="Matches cases to independent subspecialists and keeps the review SLA.",
)
store = AssignmentStore(
    service.collection("reviewers"), service.collection("assignments", outbox=True)
)
operations = require(service.credentials, "operations")
api = service.api
app = service.asyncapi


@service.on_startup
async def load_roster() -> None:
    await store.create_indexes()
    if settings.roster_file.exists():
        roster = TypeAdapter(list[Reviewer]).validate_python(
            json.loads(settings.roster_file.read_text())
        )
        await store.upsert_reviewers(roster)


@api.get("/v1/reviewers", response_model=list[Reviewer], tags=["roster"])
async def list_reviewers(_: Annotated[Principal, Depends(operations)]) -> list[Reviewer]:
    return await store.roster()


@service.consumer.on(RecordsComplete)
async def on_records_complete(event: RecordsComplete, meta: EventMeta) -> None:
    service.emitted(await handlers.assign_case(store, settings, event, meta))


@service.consumer.on(ReportSubmitted)
async def on_report_submitted(event: ReportSubmitted, meta: EventMeta) -> None:
    await handlers.close_assignment(store, event, meta)
