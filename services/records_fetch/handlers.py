"""records_fetch's handlers.

* `open_case`: an accepted case → its release requests (one per provider) and
  its requirements stored, due for retrieval now; `records.requested` out.
  The Kafka consumer returns at once: retrieval runs in the background (handed
  straight to a free worker when there is one, else found by the loop).
* `run_due`: the background loop's step: one due case → a retrieval attempt →
  the completeness manifest → `records.complete`, or `records.incomplete` and a
  re-request scheduled with backoff (until the cap, then a human decides).
* `override`: operations completes a case by hand, with a reason.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from services.records_fetch import domain, retrieval
from services.records_fetch.retrieval import Retrieval
from services.records_fetch.review_pacs import IMPORT_FAILURES, ReviewImportFailed
from services.records_fetch.store import CLAIMABLE, FetchStore
from shared.auth import Principal
from shared.envelope import EventMeta, OutboxEntry, outbox_entry
from shared.errors import Conflict, NotFound
from shared.events import (
    CaseAccepted,
    ImageLink,
    RecordsComplete,
    RecordsIncomplete,
    RecordsRequested,
    RoutingContext,
)
from shared.store import Doc
from shared.telemetry import attach_traceparent, current_traceparent, detach, quiet

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Opened:
    """What opening a case gave: the events to publish (none for a repeat), and the
    case as stored when this process holds its claim and is to retrieve it now."""

    entries: list[OutboxEntry]
    claimed: Doc | None = None


async def open_case(
    store: FetchStore, event: CaseAccepted, meta: EventMeta, claim_seconds: float | None = None
) -> Opened:
    """Record the case's release requests and requirements; retrieval is due now.

    With `claim_seconds`, the case is created already claimed by the caller (a free
    retrieval worker), which starts at once instead of waking a worker to find and
    claim it: two database round trips off every case's path. A crash before the
    retrieval ends leaves the case to the lease, like any other claim."""
    tp = current_traceparent()
    now = store.clock.now()
    routing = event.routing
    requirements = domain.requirements_for(routing.service_tier, routing.subspecialties)
    outbox = [
        outbox_entry(
            RecordsRequested(
                case_id=event.case_id,
                tenant_id=event.tenant_id,
                provider_id=r.provider_id,
                kinds=r.kinds,
            ),
            traceparent=tp,
        )
        for r in event.records
    ]
    new_case: Doc = {
        "tenant_id": event.tenant_id,
        "routing": routing.model_dump(mode="json"),
        "records": [r.model_dump(mode="json") for r in event.records],
        "providers": [
            {"provider_id": r.provider_id, "kinds": r.kinds, "state": "requested", "reason": ""}
            for r in event.records
        ],
        "requirements": [r.value for r in requirements],
        "state": "requested",
        "attempt": 0,
        "due_at": now,
        "lease_until": now,
        "progress": {"expected": 0, "received": 0, "corrupt": 0},
        "traceparent": tp,
        "created_at": now,
    }
    if claim_seconds is not None:
        lease = now + timedelta(seconds=claim_seconds)
        new_case |= {"state": "retrieving", "lease_until": lease, "updated_at": now}
    if not await store.open(event.case_id, meta.event_id, new_case, outbox):
        return Opened([])
    claimed = {"_id": event.case_id, **new_case} if claim_seconds is not None else None
    return Opened(outbox, claimed)


async def run_due(ctx: Retrieval, policy: domain.RetryPolicy, lease_seconds: float) -> bool:
    """Run one due case's retrieval attempt; False when nothing is due."""
    with quiet():  # the poll is not part of any case's trace
        doc = await ctx.store.claim_due(lease_seconds)
    if doc is None:
        return False
    await run_claimed(ctx, policy, doc, lease_seconds)
    return True


async def run_claimed(
    ctx: Retrieval, policy: domain.RetryPolicy, doc: Doc, lease_seconds: float
) -> None:
    """One retrieval attempt of a case this worker holds, under the case's trace."""
    token = attach_traceparent(doc.get("traceparent", ""))
    renewing = asyncio.create_task(_keep_lease(ctx.store, doc["_id"], lease_seconds))
    try:
        attempt = await retrieval.run_attempt(ctx, doc)
        await conclude(ctx, policy, attempt)
    finally:
        renewing.cancel()
        detach(token)


async def _keep_lease(store: FetchStore, case_id: str, lease_seconds: float) -> None:
    """Hold the claim while a long study downloads. The lease is short so that a
    worker killed mid-retrieval delays the case by one lease, not by the longest
    retrieval we allow for."""
    while True:
        await asyncio.sleep(lease_seconds / 3)
        with quiet():
            await store.extend_lease(case_id, lease_seconds)


async def current_manifest(
    store: FetchStore,
    doc: Doc,
    unreachable: dict[str, str] | None = None,
    instances: dict[str, Doc] | None = None,
    identifier_refused: dict[str, str] | None = None,
) -> domain.CompletenessManifest:
    if instances is None:
        instances = await store.instance_states(doc["_id"])
    facts = retrieval.facts_from(doc, instances, unreachable or {}, identifier_refused)
    requirements = [domain.Requirement(r) for r in doc["requirements"]]
    return domain.build_manifest(requirements, facts)


async def conclude(
    ctx: Retrieval, policy: domain.RetryPolicy, attempt: retrieval.CaseAttempt
) -> None:
    """Complete the case, or report what is missing and schedule the re-request."""
    doc = attempt.doc
    manifest = await current_manifest(
        ctx.store, doc, attempt.unreachable, attempt.instances, attempt.identifier_refused
    )
    retrieved, progress = attempt.take_pending()  # the providers' results, in this one write
    now = ctx.store.clock.now()
    if manifest.complete and ctx.review is not None:
        try:
            instances = await ctx.store.instance_states(doc["_id"])
            images = await ctx.review.import_case(ctx.store, ctx.archive, doc, instances, now)
        except ReviewImportFailed as exc:
            await _import_later(ctx, policy, doc, manifest, retrieved, progress, str(exc), now)
            return
    else:
        images = []
    fields: Doc = {
        **retrieved,
        "manifest": manifest.model_dump(mode="json"),
        "lease_until": now,
    }
    if manifest.complete:
        event: Any = _complete_event(doc, manifest, now, images=images)
        fields |= {"state": "complete", "due_at": None, "completed_at": event.completed_at}
    else:
        event, next_at = _incomplete_event(doc, manifest, policy, now)
        fields |= {
            "state": "incomplete" if next_at else "awaiting_override",
            "attempt": event.attempt,
            "due_at": next_at,
        }
    entry = outbox_entry(event, traceparent=doc.get("traceparent", ""))
    # Only from a retrieving state: an override that landed meanwhile wins.
    await ctx.store.finish_if(doc["_id"], CLAIMABLE, fields, [*progress, entry])


async def _import_later(
    ctx: Retrieval,
    policy: domain.RetryPolicy,
    doc: Doc,
    manifest: domain.CompletenessManifest,
    retrieved: Doc,
    progress: list[OutboxEntry],
    why: str,
    now: datetime,
) -> None:
    """The records are complete but the review PACS did not take them: try again
    with backoff (it is our own system: no human decision, no limit; an alert
    watches records_fetch_review_import_failures_total)."""
    n = int(doc.get("import_attempt", 0)) + 1
    log.warning("import into the review PACS failed (attempt %d): %s", n, why)
    IMPORT_FAILURES.inc()
    fields: Doc = {
        **retrieved,
        "manifest": manifest.model_dump(mode="json"),
        "state": "importing",
        "import_attempt": n,
        "import_error": why,
        "due_at": now + policy.delay(n),
        "lease_until": now,
    }
    await ctx.store.finish_if(doc["_id"], CLAIMABLE, fields, progress)


def _complete_event(
    doc: Doc,
    manifest: domain.CompletenessManifest,
    now: datetime,
    override_reason: str = "",
    images: list[ImageLink] | None = None,
) -> RecordsComplete:
    return RecordsComplete(
        case_id=doc["_id"],
        tenant_id=doc["tenant_id"],
        routing=RoutingContext.model_validate(doc["routing"]),
        manifest=manifest.items,
        completed_at=now,
        override_reason=override_reason,
        images=images or [],
    )


def _incomplete_event(
    doc: Doc, manifest: domain.CompletenessManifest, policy: domain.RetryPolicy, now: datetime
) -> tuple[RecordsIncomplete, datetime | None]:
    attempt = int(doc.get("attempt", 0)) + 1
    next_at = policy.next_retry(attempt, now)
    event = RecordsIncomplete(
        case_id=doc["_id"],
        tenant_id=doc["tenant_id"],
        missing=manifest.missing,
        attempt=attempt,
        next_retry_at=next_at,
        gave_up=next_at is None,
    )
    return event, next_at


def visible_case(doc: Doc | None, principal: Principal) -> Doc:
    """The case if this caller may see it; another tenant's case does not exist for them."""
    if doc is None or (principal.role != "operations" and doc["tenant_id"] != principal.tenant_id):
        raise NotFound("no such case")
    return doc


async def override(
    store: FetchStore, case_id: str, principal: Principal, reason: str
) -> list[OutboxEntry]:
    """A human completes the case without the missing items; the reason travels with it."""
    doc = visible_case(await store.get(case_id), principal)
    manifest = await current_manifest(store, doc)
    event = _complete_event(doc, manifest, store.clock.now(), override_reason=reason)
    entry = outbox_entry(event, traceparent=doc.get("traceparent", ""))
    audit = {
        "action": "override",
        "by": principal.key_id,
        "reason": reason,
        "at": event.completed_at,
    }
    fields: Doc = {
        "state": "complete",
        "due_at": None,
        "completed_at": event.completed_at,
        "manifest": manifest.model_dump(mode="json"),
    }
    done = await store.finish_if(case_id, [*CLAIMABLE, "awaiting_override"], fields, [entry], audit)
    if not done:
        raise Conflict("records for this case are already complete")
    return [entry]


async def mark_glass_slides_received(
    store: FetchStore, case_id: str, provider_id: str, principal: Principal
) -> None:
    """Operations logs the physical slides as arrived; the case is re-checked now."""
    doc = visible_case(await store.get(case_id), principal)
    if provider_id not in doc.get("glass_slides", {}):
        raise NotFound("no glass slides were requested from this provider")
    now = store.clock.now()
    fields = {
        f"glass_slides.{provider_id}.state": "received",
        f"glass_slides.{provider_id}.received_at": now,
        "due_at": now,
    }
    done = await store.finish_if(
        case_id, [*CLAIMABLE, "awaiting_override"], {**fields, "state": "incomplete"}, []
    )
    if not done:
        raise Conflict("records for this case are already complete")


def progress_view(doc: Doc) -> dict[str, Any]:
    """What the run command's table and an integrator's dashboard show."""
    manifest = doc.get("manifest") or {}
    return {
        "case_id": doc["_id"],
        "state": doc["state"],
        "attempt": doc.get("attempt", 0),
        "next_retry_at": (
            doc.get("due_at") if doc["state"] in ("incomplete", "importing") else None
        ),
        # Complete, but the review PACS has not taken the images yet (retried).
        "import_error": doc.get("import_error", "") if doc["state"] == "importing" else "",
        "instances": doc.get("progress", {}),
        "providers": [
            {k: p.get(k) for k in ("provider_id", "kinds", "state", "reason")}
            for p in doc.get("providers", [])
        ],
        "missing": [i for i in manifest.get("items", []) if not i.get("present")],
        # Resources or instances a provider returned for another patient: not kept.
        "refused": doc.get("refused", []),
    }


INSTANCE_FIELDS = ("provider_id", "study_uid", "series_uid", "sop_uid", "state", "sha256", "size")


def manifest_view(doc: Doc, instances: list[Doc]) -> dict[str, Any]:
    """The full manifest for a reviewer's workstation or an integrator's audit."""
    return {
        **progress_view(doc),
        "requirements": doc.get("requirements", []),
        "manifest": doc.get("manifest"),
        "studies": doc.get("studies", []),
        "instances": [
            {**{k: i.get(k) for k in INSTANCE_FIELDS}, **_instance_checks(i)} for i in instances
        ],
        "clinical": doc.get("clinical", []),
        "glass_slides": doc.get("glass_slides", {}),
        "override": next((a for a in doc.get("audit", []) if a["action"] == "override"), None),
    }


def _instance_checks(i: Doc) -> dict[str, Any]:
    return {k: i.get(k) for k in ("modality", "body_part", "study_date", "problems")}
