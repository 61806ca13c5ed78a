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
from datetime import timedelta
from typing import Any

from pymongo import UpdateOne
from pymongo.asynchronous.collection import AsyncCollection

from services.records_fetch.domain import InstanceState
from shared.clock import SYSTEM_CLOCK, Clock
from shared.envelope import OutboxEntry
from shared.store import (
    WITHOUT_OUTBOX,
    Doc,
    claim_one,
    insert_with_outbox,
    update_with_outbox,
    with_outbox,
)

# importing: the records are complete; the review PACS has yet to take the images.
CLAIMABLE = ["requested", "retrieving", "incomplete", "importing"]


def instance_id(case_id: str, sop_uid: str) -> str:
    return f"{case_id}/{sop_uid}"


class FetchStore:
    def __init__(
        self,
        fetches: AsyncCollection[Doc],
        instances: AsyncCollection[Doc],
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.fetches = fetches
        self.instances = instances
        self.clock = clock  # every instant the store writes, and the handlers read

    async def create_indexes(self) -> None:
        await self.fetches.create_index([("state", 1), ("due_at", 1)])
        await self.instances.create_index([("case_id", 1), ("state", 1)])

    async def open(self, case_id: str, event_id: str, doc: Doc, outbox: list[OutboxEntry]) -> bool:
        """Create the case's document with its first events; False if it exists (a
        case is opened once, whatever event redelivers or repeats its acceptance)."""
        return await insert_with_outbox(self.fetches, {"_id": case_id, **doc}, outbox, event_id)

    async def get(self, case_id: str) -> Doc | None:
        return await self.fetches.find_one({"_id": case_id}, WITHOUT_OUTBOX)

    async def claim_due(self, lease_seconds: float) -> Doc | None:
        """Take one case whose retrieval is due, for `lease_seconds` (one worker at a time),
        and mark it as being retrieved. Returns the case as claimed."""
        now = self.clock.now()
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
        until = self.clock.now() + timedelta(seconds=lease_seconds)
        await self.fetches.update_one({"_id": case_id}, {"$set": {"lease_until": until}})

    async def update(
        self, case_id: str, fields: Doc, outbox: Sequence[OutboxEntry] = (), **ops: Doc
    ) -> None:
        """Set `fields` (dotted paths allowed) and append events, in one write."""
        update: Doc = {"$set": {**fields, "updated_at": self.clock.now()}, **ops}
        await self.fetches.update_one({"_id": case_id}, with_outbox(update, outbox))

    async def finish_if(
        self,
        case_id: str,
        states: list[str],
        fields: Doc,
        outbox: list[OutboxEntry],
        audit: Doc | None = None,
    ) -> bool:
        """Move the case to its next state only if it is still in one of `states`."""
        update: Doc = {"$set": {**fields, "updated_at": self.clock.now()}}
        if audit:
            update["$push"] = {"audit": audit}
        return await update_with_outbox(
            self.fetches, {"_id": case_id, "state": {"$in": states}}, update, outbox
        )

    # ---------------------------------------------------------------- instances

    async def instance_states(self, case_id: str) -> dict[str, Doc]:
        docs = await self.instances.find({"case_id": case_id}).to_list(None)
        return {d["sop_uid"]: d for d in docs}

    async def record_instance(self, case_id: str, sop_uid: str, fields: dict[str, Any]) -> None:
        now = self.clock.now()
        await self.instances.update_one(
            {"_id": instance_id(case_id, sop_uid)},
            {
                "$set": {**fields, "case_id": case_id, "sop_uid": sop_uid, "updated_at": now},
                "$inc": {"retrievals": 1 if fields.get("state") != InstanceState.PENDING else 0},
            },
            upsert=True,
        )

    async def record_instances(self, case_id: str, batch: Sequence[tuple[str, Doc]]) -> None:
        """Several instances' records in one round trip (a committed series batch)."""
        if not batch:
            return
        now = self.clock.now()
        ops = [
            UpdateOne(
                {"_id": instance_id(case_id, sop_uid)},
                {
                    "$set": {**fields, "case_id": case_id, "sop_uid": sop_uid, "updated_at": now},
                    "$inc": {"retrievals": 1},
                },
                upsert=True,
            )
            for sop_uid, fields in batch
        ]
        await self.instances.bulk_write(ops, ordered=False)
