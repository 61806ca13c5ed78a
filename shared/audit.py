"""The audit trail: who read or changed what, when, with what outcome.

Every authenticated API call is recorded by the service that answers it, in
its own `audit_events` collection, as a FHIR R4 `AuditEvent` following IHE
Basic Audit Log Patterns (BALP) for RESTful interactions:

* `type` is `rest` (audit-event-type) and `subtype` the interaction (`read`,
  `search-type`, `create`, `update`, `delete`, `operation`);
* `action` is C, R, U, D or E; `recorded` the service clock's time;
* `agent[0]` the caller (API key id as `who.identifier`, role, tenant), the
  requestor; `agent[1]` the service itself;
* `entity[0]` the case (by case id; never a name or other PHI), and the
  route's other identifier (report, assignment, subscription) when it has one;
* `outcome` 0 (success), 4 (the caller's error), 8 (the service's error).

The record is written *before* the route runs: an action whose audit record
cannot be written is refused (503, "send it again"). Its outcome is filled in
once the response is known; that is the only change ever made to a record,
and nothing deletes one except the retention TTL (`audit_retention_days`,
six years by default, as HIPAA asks of documentation). Operations read the
trail with `GET /v1/audit` on each service (shared.runtime).
"""

from __future__ import annotations

import uuid
from contextlib import suppress
from datetime import datetime, timedelta
from typing import Any

from pymongo import ASCENDING
from pymongo.asynchronous.collection import AsyncCollection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.auth import Principal
from shared.clock import Clock

Doc = dict[str, Any]
AUDIT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
INTERACTION = "http://hl7.org/fhir/restful-interaction"
ROLE_SYSTEM = "urn:secondopinion:role"
KEY_SYSTEM = "urn:secondopinion:api-key"
CASE_SYSTEM = "urn:secondopinion:case"
# The path parameters that name what a route reads or changes.
ENTITY_PARAMS = (
    "case_id",
    "report_id",
    "assignment_id",
    "addendum_id",
    "sub_id",
    "delivery_id",
    "reviewer_id",
)
# The key of the audit record's id in the request's ASGI state.
STATE_KEY = "audit_event_id"


def interaction(method: str, has_id: bool, path: str) -> tuple[str, str]:
    """(subtype, action) of an HTTP call, as BALP names them."""
    method = method.upper()
    if method == "GET":
        return ("read", "R") if has_id else ("search-type", "R")
    if method in ("PUT", "PATCH"):
        return "update", "U"
    if method == "DELETE":
        return "delete", "D"
    # A POST that creates a resource, or one that performs an operation on one.
    last = path.rstrip("/").rsplit("/", 1)[-1]
    if has_id and not last.startswith("{"):
        return "operation", "E"
    return "create", "C"


def outcome_code(status: int) -> str:
    if status < 400:
        return "0"
    return "4" if status < 500 else "8"


class AuditTrail:
    """The service's append-only audit collection."""

    def __init__(
        self,
        collection: AsyncCollection[Doc],
        service_name: str,
        clock: Clock,
        retention_days: int,
    ) -> None:
        self.collection = collection
        self.service_name = service_name
        self.clock = clock
        self.retention = timedelta(days=retention_days)

    async def create_indexes(self) -> None:
        await self.collection.create_index(
            "recorded_at", expireAfterSeconds=int(self.retention.total_seconds())
        )
        await self.collection.create_index([("case_id", ASCENDING), ("recorded_at", ASCENDING)])
        await self.collection.create_index([("key_id", ASCENDING), ("recorded_at", ASCENDING)])

    def event(
        self,
        principal: Principal,
        method: str,
        route: str,
        params: dict[str, str],
        source_address: str = "",
    ) -> Doc:
        """The AuditEvent (FHIR R4 JSON) of one call, before its outcome is known."""
        ids = {name: str(params[name]) for name in ENTITY_PARAMS if name in params}
        subtype, action = interaction(method, bool(ids), route)
        now = self.clock.now()
        entities: list[Doc] = [
            {
                "what": {"identifier": {"system": f"urn:secondopinion:{name}", "value": value}},
                "type": {
                    "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                    "code": "2",
                    "display": "System Object",
                },
                "description": f"{name} of {method.upper()} {route}",
            }
            for name, value in ids.items()
        ]
        entities.append(
            {
                "type": {
                    "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                    "code": "2",
                    "display": "System Object",
                },
                "query": None,
                "description": f"{method.upper()} {route}",
            }
        )
        agent_network = {"address": source_address, "type": "2"} if source_address else None
        resource: Doc = {
            "resourceType": "AuditEvent",
            "id": uuid.uuid4().hex,
            "type": {"system": AUDIT_TYPE, "code": "rest", "display": "RESTful Operation"},
            "subtype": [{"system": INTERACTION, "code": subtype}],
            "action": action,
            "recorded": now.isoformat(),
            "agent": [
                {
                    "type": {"coding": [{"system": ROLE_SYSTEM, "code": principal.role}]},
                    "who": {
                        "identifier": {"system": KEY_SYSTEM, "value": principal.key_id},
                        "display": f"{principal.role} of tenant {principal.tenant_id}",
                    },
                    "requestor": True,
                    **({"network": agent_network} if agent_network else {}),
                },
                {
                    "who": {"display": self.service_name},
                    "requestor": False,
                },
            ],
            "source": {
                "observer": {"display": self.service_name},
                "type": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                        "code": "4",
                        "display": "Application Server",
                    }
                ],
            },
            "entity": [{k: v for k, v in e.items() if v is not None} for e in entities],
        }
        return {
            "_id": resource["id"],
            "resource": resource,
            "recorded_at": now,
            "service": self.service_name,
            "tenant_id": principal.tenant_id,
            "key_id": principal.key_id,
            "role": principal.role,
            "case_id": ids.get("case_id", ""),
            "route": f"{method.upper()} {route}",
        }

    async def record(self, event: Doc) -> str:
        """Write the record (raises if it cannot be written: the call is refused)."""
        await self.collection.insert_one(event)
        return str(event["_id"])

    async def conclude(self, event_id: str, status: int) -> None:
        """Fill in the outcome, once."""
        code = outcome_code(status)
        await self.collection.update_one(
            {"_id": event_id, "resource.outcome": {"$exists": False}},
            {"$set": {"resource.outcome": code, "status": status}},
        )

    async def search(
        self,
        *,
        case_id: str = "",
        key_id: str = "",
        since: datetime | None = None,
        limit: int = 100,
    ) -> list[Doc]:
        query: Doc = {}
        if case_id:
            query["case_id"] = case_id
        if key_id:
            query["key_id"] = key_id
        if since is not None:
            query["recorded_at"] = {"$gte": since}
        cursor = self.collection.find(query, {"resource": 1}).sort("recorded_at", -1).limit(limit)
        return [d["resource"] async for d in cursor]


class AuditOutcome:
    """ASGI middleware: once a response's status is known, fill in the outcome of
    the call's audit record (written by the route's `Service.require` dependency)."""

    def __init__(self, app: ASGIApp, trail: AuditTrail) -> None:
        self.app = app
        self.trail = trail

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            event_id = scope.get("state", {}).get(STATE_KEY)
            if event_id:
                # If this fails the record stands as attempted: never hide a reply.
                with suppress(Exception):
                    await self.trail.conclude(event_id, status)
