"""Intake's own collections: `cases` (`CaseDocument`: the submitted case, its
stage, what it waits for) and `rejections` (`RejectionDocument`: submissions
refused, with their field errors but never the submitted values). Events leave
through the shared outbox API (shared/store.py), in the same write as the change
they announce. The store never reads the time: callers pass `now`."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pymongo import ASCENDING
from pymongo.asynchronous.collection import AsyncCollection

from services.intake.documents import (
    AuthorizationRecord,
    CaseDocument,
    RejectionDocument,
    ReviewRecord,
    Stage,
)
from services.intake.progress import Step, stage_rank
from shared.envelope import OutboxEntry
from shared.store import (
    WITHOUT_OUTBOX,
    Doc,
    insert_with_outbox,
    update_if,
    update_with_outbox,
)

WAITING = ["held_for_review", "awaiting_authorization"]


def _saved(model: CaseDocument | RejectionDocument | AuthorizationRecord | ReviewRecord) -> Doc:
    return model.model_dump(mode="python", by_alias=True)


class IntakeStore:
    def __init__(self, cases: AsyncCollection[Doc], rejections: AsyncCollection[Doc]) -> None:
        self.cases = cases
        self.rejections = rejections

    async def create_indexes(self) -> None:
        await self.cases.create_index([("tenant_id", ASCENDING), ("created_at", ASCENDING)])
        await self.cases.create_index([("tenant_id", ASCENDING), ("external_id", ASCENDING)])
        await self.rejections.create_index([("tenant_id", ASCENDING), ("at", ASCENDING)])

    async def get(self, case_id: str, *, unless_applied: str = "") -> CaseDocument | None:
        """The case; with `unless_applied`, None also when that event was applied to
        it already (a redelivery is skipped in the same read, before the case is
        parsed: after a consumer restart a whole batch comes again)."""
        query: Doc = {"_id": case_id}
        if unless_applied:
            query["applied"] = {"$ne": unless_applied}
        doc = await self.cases.find_one(query, WITHOUT_OUTBOX)
        return CaseDocument.model_validate(doc) if doc else None

    async def insert_case(self, case: CaseDocument, outbox: list[OutboxEntry]) -> bool:
        """Insert a new case with its first events; False if it already exists."""
        return await insert_with_outbox(self.cases, _saved(case), outbox)

    async def known_references(self, tenant_id: str, refs: list[str]) -> dict[str, str]:
        """reference → case id, for the tenant's cases named by case id or external id."""
        if not refs:
            return {}
        # Two indexed queries rather than one `$or`, which SecantusDB runs as a scan
        # of the whole collection.
        found: dict[str, str] = {}
        for field in ("_id", "external_id"):
            cursor = self.cases.find(
                {"tenant_id": tenant_id, field: {"$in": refs}}, {"external_id": 1}
            )
            for d in await cursor.to_list():
                found[d["_id"]] = d["_id"]
                found[d["external_id"]] = d["_id"]
        return {r: found[r] for r in refs if r in found}

    async def list_for_tenant(self, tenant_id: str, limit: int) -> list[CaseDocument]:
        cursor = self.cases.find(
            {"tenant_id": tenant_id},
            WITHOUT_OUTBOX,
            sort=[("created_at", ASCENDING)],
            limit=limit,
        )
        return [CaseDocument.model_validate(d) for d in await cursor.to_list()]

    async def record_authorization(
        self, case_id: str, entry: AuthorizationRecord, now: datetime
    ) -> CaseDocument | None:
        """Record one provider's release once; the case after it, or None if already on file."""
        provider = entry.provider_id
        recorded = await update_if(
            self.cases,
            {"_id": case_id, "authorized_providers": {"$ne": provider}},
            {
                "$addToSet": {"authorized_providers": provider},
                "$pull": {"waiting_on_authorization": provider},
                "$push": {"authorizations": _saved(entry)},
                "$set": {"updated_at": now},
            },
        )
        return await self.get(case_id) if recorded else None

    async def release_hold(
        self,
        case_id: str,
        review: ReviewRecord,
        next_stage: Stage,
        rank: int,
        outbox: list[OutboxEntry],
        now: datetime,
    ) -> bool:
        """Clear the human-review hold once; the case then waits only on authorizations."""
        held = {"_id": case_id, "stage": "held_for_review"}
        fields = {"hold_reason": "", "review": _saved(review), "stage_rank": rank}
        return await self._transition(held, next_stage, fields, outbox, now)

    async def _transition(
        self, condition: Doc, stage: Stage, fields: Doc, outbox: list[OutboxEntry], now: datetime
    ) -> bool:
        """Move a case matching `condition` to `stage` with its events, in one write;
        False if it no longer matches (someone else moved it first)."""
        update = {
            "$set": {**fields, "stage": stage, "updated_at": now},
            "$push": {"history": {"stage": stage, "at": now}},
        }
        return await update_with_outbox(self.cases, condition, update, outbox)

    async def decline(
        self, case_id: str, review: ReviewRecord, outbox: list[OutboxEntry], now: datetime
    ) -> bool:
        held = {"_id": case_id, "stage": "held_for_review"}
        return await self._transition(held, "declined", {"review": _saved(review)}, outbox, now)

    async def accept_if_ready(
        self, case_id: str, rank: int, outbox: list[OutboxEntry], now: datetime
    ) -> bool:
        """Move a waiting case to accepted with its case.accepted event, exactly once:
        the stage condition makes concurrent last authorizations emit one event."""
        ready = {
            "_id": case_id,
            "stage": {"$in": WAITING},
            "hold_reason": "",
            "waiting_on_authorization": {"$size": 0},
        }
        return await self._transition(ready, "accepted", {"stage_rank": rank}, outbox, now)

    async def save_progress(
        self,
        case: CaseDocument,
        event_id: str,
        step: Step,
        outbox: list[OutboxEntry],
        now: datetime,
        rerouted: Doc | None = None,
    ) -> bool:
        """Store what a downstream event changed (services/intake/progress.py) with its
        `case.status` events, once per event, if the case is still as it was read
        (stage and `progress_version`); False if it is not, or the event was applied.
        `rerouted`: the routing re-checked with the images (handlers._rerouted)."""
        version: Any = case.progress_version or {"$in": [0, None]}
        query = {"_id": case.id, "stage": case.stage, "progress_version": version}
        routing = dict(rerouted or {})
        reroute = routing.pop("reroute", None)
        update: Doc = {
            "$set": {
                "progress": step.progress.model_dump(mode="python"),
                "progress_version": case.progress_version + 1,
                "stage": step.stage,
                "stage_rank": stage_rank(step.stage),
                "updated_at": now,
                **routing,
            },
        }
        push: Doc = {}
        if step.reached:
            push["history"] = {"$each": [r.model_dump(mode="python") for r in step.reached]}
        if reroute is not None:
            push["reroutes"] = reroute
        if push:
            update["$push"] = push
        return await update_with_outbox(self.cases, query, update, outbox, event_id)

    async def applied(self, case_id: str, event_id: str) -> bool:
        """Whether the event was already applied to the case."""
        found = await self.cases.find_one({"_id": case_id, "applied": event_id}, {"_id": 1})
        return found is not None

    async def record_rejection(
        self, rejection: RejectionDocument, outbox: list[OutboxEntry]
    ) -> bool:
        """Record a refusal once (its id is the event id for Kafka); False if it was."""
        return await insert_with_outbox(self.rejections, _saved(rejection), outbox)
