"""records_fetch's own collections.

* ``fetches``: one document per case: the release requests per provider and
  their state, the case's requirements, what QIDO promised per study, the
  clinical summaries, the physical items (glass slides), the manifest, the
  re-request schedule (``due_at``, ``attempt``) and the outbox.
* ``instances``: one document per (case, DICOM instance): its retrieval state,
  checksum and archive location, and what validation found. A retry skips the
  instances already received, so a PACS that comes back is not asked twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from services.records_fetch.domain import InstanceState
from shared.envelope import OutboxEntry
from shared.store import REDELIVERIES_SKIPPED, Doc, claim_one, update_if

CLAIMABLE = ["requested", "retrieving", "incomplete"]


def instance_id(case_id: str, sop_uid: str) -> str:
    return f"{case_id}/{sop_uid}"


def _with_outbox(update: Doc, outbox: list[OutboxEntry]) -> Doc:
    if outbox:
        update.setdefault("$push", {})["outbox"] = {
            "$each": [e.model_dump(mode="python") for e in outbox]
        }
        update.setdefault("$set", {})["has_outbox"] = True
    return update


class FetchStore:
    def __init__(self, fetches: AsyncCollection[Doc], instances: AsyncCollection[Doc]) -> None:
        self.fetches = fetches
        self.instances = instances

    async def create_indexes(self) -> None:
        await self.fetches.create_index([("state", 1), ("due_at", 1)])
        await self.instances.create_index([("case_id", 1), ("state", 1)])

    async def open(self, case_id: str, event_id: str, doc: Doc, outbox: list[OutboxEntry]) -> bool:
        """Create the case's document with its first events; False if it exists (a
        case is opened once, whatever event redelivers or repeats its acceptance)."""
        record = {
            "_id": case_id,
            **doc,
            "applied": [event_id],
            "outbox": [e.model_dump(mode="python") for e in outbox],
            "has_outbox": bool(outbox),
        }
        try:
            await self.fetches.insert_one(record)
        except DuplicateKeyError:
            REDELIVERIES_SKIPPED.inc()
            return False
        return True

    async def get(self, case_id: str) -> Doc | None:
        return await self.fetches.find_one({"_id": case_id}, {"outbox": 0, "applied": 0})

    async def claim_due(self, lease_seconds: float) -> Doc | None:
        """Take one case whose retrieval is due, for `lease_seconds` (one worker at a time),
        and mark it as being retrieved. Returns the case as claimed."""
        now = datetime.now(UTC)
        claim = {
            "lease_until": now + timedelta(seconds=lease_seconds),
            "state": "retrieving",
            "updated_at": now,
        }
        doc = await claim_one(
            self.fetches,
            {"state": {"$in": CLAIMABLE}, "due_at": {"$lte": now}, "lease_until": {"$lte": now}},
            [("due_at", 1)],
            {"$set": claim},
        )
        return {**doc, **claim} if doc else None

    async def extend_lease(self, case_id: str, lease_seconds: float) -> None:
        until = datetime.now(UTC) + timedelta(seconds=lease_seconds)
        await self.fetches.update_one({"_id": case_id}, {"$set": {"lease_until": until}})

    async def update(
        self, case_id: str, fields: Doc, outbox: Sequence[OutboxEntry] = (), **ops: Doc
    ) -> None:
        """Set `fields` (dotted paths allowed) and append events, in one write."""
        update: Doc = {"$set": {**fields, "updated_at": datetime.now(UTC)}, **ops}
        await self.fetches.update_one({"_id": case_id}, _with_outbox(update, list(outbox)))

    async def finish_if(
        self,
        case_id: str,
        states: list[str],
        fields: Doc,
        outbox: list[OutboxEntry],
        audit: Doc | None = None,
    ) -> bool:
        """Move the case to its next state only if it is still in one of `states`."""
        update: Doc = {"$set": {**fields, "updated_at": datetime.now(UTC)}}
        if audit:
            update["$push"] = {"audit": audit}
        return await update_if(
            self.fetches, {"_id": case_id, "state": {"$in": states}}, _with_outbox(update, outbox)
        )

    # ---------------------------------------------------------------- instances

    async def instance_states(self, case_id: str) -> dict[str, Doc]:
        docs = await self.instances.find({"case_id": case_id}).to_list(None)
        return {d["sop_uid"]: d for d in docs}

    async def record_instance(self, case_id: str, sop_uid: str, fields: dict[str, Any]) -> None:
        now = datetime.now(UTC)
        await self.instances.update_one(
            {"_id": instance_id(case_id, sop_uid)},
            {
                "$set": {**fields, "case_id": case_id, "sop_uid": sop_uid, "updated_at": now},
                "$inc": {"retrievals": 1 if fields.get("state") != InstanceState.PENDING else 0},
            },
            upsert=True,
        )
