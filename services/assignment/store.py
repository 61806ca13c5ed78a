"""assignment's own collections: `reviewers` (the roster), `assignments` (one
document per needed subspecialty of a case, with its clock, the keys of its
fired timers, and its outbox) and `case_routes` (a case's routing as intake last
re-checked it, case.rerouted).

Every change of an assignment is one conditional `update_one` on its
`version`: the state change, the applied event id and the events to emit land
in one write, and a concurrent or repeated change (a second timer loop, a
redelivery) loses the race instead of acting twice. This is how a timer is
claimed: firing it and emitting its event are the same write.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from services.assignment.dashboard import ReportedSummary, Turnaround
from services.assignment.domain import ACTIVE_STATES, OPEN_STATES, Assignment, Reviewer
from shared.envelope import OutboxEntry
from shared.events import RoutingContext
from shared.store import WITHOUT_OUTBOX, Doc, insert_with_outbox, update_with_outbox

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _doc(a: Assignment) -> Doc:
    """The assignment as stored (enums in the routing context as plain strings)."""
    return {**a.model_dump(mode="python"), "routing": a.routing.model_dump(mode="json")}


class AssignmentStore:
    def __init__(self, reviewers: AsyncCollection[Doc], assignments: AsyncCollection[Doc]) -> None:
        self.reviewers = reviewers
        self.assignments = assignments
        # The latest routing intake sent per case (case.rerouted), whichever of it and
        # records.complete arrives first.
        self.routes: AsyncCollection[Doc] = assignments.database["case_routes"]

    async def create_indexes(self) -> None:
        await self.assignments.create_index([("reviewer_id", 1), ("state", 1)])
        await self.assignments.create_index("case_id")
        await self.assignments.create_index("assignment_id")
        await self.assignments.create_index("next_fire_at")
        # The load per reviewer and the open work are read by state alone.
        await self.assignments.create_index("state")
        await self.assignments.create_index("history.assignment_id")
        # The re-offer queue: unassignable assignments, least recently tried first.
        await self.assignments.create_index([("state", 1), ("tried_at", 1), ("_id", 1)])

    # ------------------------------------------------------------ roster

    async def upsert_reviewers(self, roster: list[Reviewer]) -> None:
        for r in roster:
            await self.reviewers.replace_one(
                {"_id": r.reviewer_id},
                {"_id": r.reviewer_id, **r.model_dump(mode="json")},
                upsert=True,
            )

    async def reviewer(self, reviewer_id: str) -> Reviewer | None:
        doc = await self.reviewers.find_one({"_id": reviewer_id}, {"_id": 0})
        return Reviewer.model_validate(doc) if doc else None

    async def roster(self, *, include_inactive: bool = False) -> list[Reviewer]:
        query: Doc = {} if include_inactive else {"active": True}
        docs = await self.reviewers.find(query, {"_id": 0}).sort("_id").to_list()
        return [Reviewer.model_validate(d) for d in docs]

    async def active_load(self) -> dict[str, int]:
        pipeline: list[Doc] = [
            {"$match": {"state": {"$in": list(ACTIVE_STATES)}}},
            {"$group": {"_id": "$reviewer_id", "n": {"$sum": 1}}},
        ]
        cursor = await self.assignments.aggregate(pipeline)
        return {d["_id"]: d["n"] async for d in cursor}

    # ------------------------------------------------------------ routes

    async def save_route(self, case_id: str, routing: RoutingContext, at: datetime) -> None:
        """Keep the case's routing as of `at`, unless a later one is already kept
        (two records.complete with other studies: the last re-check wins)."""
        doc = {"_id": case_id, "routing": routing.model_dump(mode="json"), "at": at}
        with contextlib.suppress(DuplicateKeyError):  # one as recent or newer is kept
            await self.routes.update_one(
                {"_id": case_id, "at": {"$lt": at}}, {"$set": doc}, upsert=True
            )

    async def route(self, case_id: str) -> RoutingContext | None:
        doc = await self.routes.find_one({"_id": case_id})
        return RoutingContext.model_validate(doc["routing"]) if doc else None

    # ------------------------------------------------------------ assignments

    async def insert(self, a: Assignment, event_id: str, outbox: Sequence[OutboxEntry]) -> bool:
        """Create the assignment with its first events; False if it already exists."""
        doc: Doc = {"_id": a.slot_id, **_doc(a), "version": 1}
        return await insert_with_outbox(self.assignments, doc, outbox, event_id)

    async def load(self, slot_id: str) -> tuple[Assignment, int, list[str]] | None:
        """The assignment, its version and the event ids it has applied."""
        doc = await self.assignments.find_one({"_id": slot_id}, {"outbox": 0, "has_outbox": 0})
        if doc is None:
            return None
        return Assignment.model_validate(doc), doc["version"], doc.get("applied", [])

    async def save(
        self,
        a: Assignment,
        version: int,
        outbox: Sequence[OutboxEntry] = (),
        event_id: str | None = None,
    ) -> bool:
        """Write `a` if nobody changed it since `version` was read (and `event_id`
        was not applied yet), together with its outgoing events."""
        return await update_with_outbox(
            self.assignments,
            {"_id": a.slot_id, "version": version},
            {"$set": {**_doc(a), "version": version + 1}},
            outbox,
            event_id,
        )

    async def slot_ids_of_case(self, case_id: str) -> list[str]:
        docs = await self.assignments.find({"case_id": case_id}, {"_id": 1}).to_list()
        return [d["_id"] for d in docs]

    async def slot_of_assignment(self, assignment_id: str) -> str | None:
        # Two indexed lookups rather than one `$or`, which SecantusDB runs as a scan
        # of the whole collection.
        for field in ("assignment_id", "history.assignment_id"):
            doc = await self.assignments.find_one({field: assignment_id}, {"_id": 1})
            if doc:
                return str(doc["_id"])
        return None

    async def due(self, now: datetime, limit: int = 100) -> list[str]:
        docs = (
            # The lower bound keeps the index walk off the assignments with no timer
            # (next_fire_at null): SecantusDB's range includes them without it.
            await self.assignments.find({"next_fire_at": {"$gte": EPOCH, "$lte": now}}, {"_id": 1})
            .sort("next_fire_at")
            .to_list(limit)
        )
        return [d["_id"] for d in docs]

    async def find(self, query: Doc, limit: int = 1000) -> list[Assignment]:
        docs = await self.assignments.find(query, WITHOUT_OUTBOX).to_list(limit)
        return [Assignment.model_validate(d) for d in docs]

    async def any_waiting(self) -> bool:
        """Whether any assignment waits for a reviewer (`unassignable`)."""
        return await self.assignments.find_one({"state": "unassignable"}, {"_id": 1}) is not None

    async def least_recently_tried(self, subspecialties: list[str], limit: int) -> list[Assignment]:
        """Unassignable assignments of these subspecialties, those whose last try is
        oldest first (a retry that fails moves one to the back), so a bounded batch
        per pass reaches every one in turn and none that can never be assigned
        keeps its place."""
        query: Doc = {"state": "unassignable", "subspecialty": {"$in": subspecialties}}
        cursor = (
            self.assignments.find(query, WITHOUT_OUTBOX)
            .sort([("tried_at", 1), ("_id", 1)])
            .limit(limit)
        )
        return [Assignment.model_validate(d) for d in await cursor.to_list(limit)]

    async def open_assignments(self) -> list[Assignment]:
        """The work in flight (bounded by the reviewers' capacity and the queue)."""
        return await self.find({"state": {"$in": list(OPEN_STATES)}}, limit=10000)

    async def reported_summary(self, since: datetime) -> ReportedSummary:
        """Reported assignments since `since`, counted and summarised by the database, so
        the service never holds one document per case ever reviewed. Percentiles are
        the database's (`$percentile`, MongoDB 7+: approximate; SecantusDB: nearest
        rank)."""
        pipeline: list[Doc] = [
            {"$match": {"state": "reported", "reported_at": {"$gte": since}}},
            {
                "$facet": {
                    "tiers": [{"$group": {"_id": "$routing.service_tier", "n": {"$sum": 1}}}],
                    "turnaround": [
                        {"$match": {"turnaround_hours": {"$ne": None}}},
                        {
                            "$group": {
                                "_id": "$subspecialty",
                                "n": {"$sum": 1},
                                "q": {
                                    "$percentile": {
                                        "input": "$turnaround_hours",
                                        "p": [0.5, 0.9],
                                        "method": "approximate",
                                    }
                                },
                            }
                        },
                    ],
                }
            },
        ]
        cursor = await self.assignments.aggregate(pipeline)
        (facets,) = await cursor.to_list(1)
        return ReportedSummary(
            by_tier={t["_id"]: t["n"] for t in facets["tiers"]},
            turnaround=[
                Turnaround(
                    subspecialty=t["_id"],
                    count=t["n"],
                    median_hours=round(t["q"][0], 2),
                    p90_hours=round(t["q"][1], 2),
                )
                for t in sorted(facets["turnaround"], key=lambda t: t["_id"])
            ],
        )

    async def for_reviewer(self, reviewer_id: str) -> list[Assignment]:
        return await self.find({"reviewer_id": reviewer_id, "state": {"$in": list(ACTIVE_STATES)}})

    async def busy_on_case(self, case_id: str, except_slot: str) -> dict[str, str]:
        """Reviewers holding another open part of the same case."""
        docs: list[dict[str, Any]] = await self.assignments.find(
            {
                "case_id": case_id,
                "_id": {"$ne": except_slot},
                "state": {"$in": list(ACTIVE_STATES)},
            },
            {"reviewer_id": 1, "subspecialty": 1},
        ).to_list()
        return {d["reviewer_id"]: d["subspecialty"] for d in docs if d.get("reviewer_id")}
