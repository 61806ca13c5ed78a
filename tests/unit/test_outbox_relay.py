"""The outbox relay's pipelining, with a fake broker whose confirms the test
releases and a fake collection (the same relay runs against the real broker and
database in tests/integration/test_delivery.py)."""

import asyncio
from dataclasses import dataclass, field
from typing import Any

from pymongo import UpdateOne

from shared.envelope import outbox_entry
from shared.events import CaseRejected, FieldError
from shared.store import OutboxRelay


def entry(case_id: str) -> dict[str, Any]:
    event = CaseRejected(
        case_id=case_id,
        tenant_id="t1",
        external_id="x",
        errors=[FieldError(loc="a", msg="b", type="c")],
    )
    return outbox_entry(event).model_dump(mode="python")


@dataclass
class FakeBroker:
    """Every publish returns a future the test resolves: a confirm from the broker."""

    sent: list[tuple[str, str]] = field(default_factory=list)  # (key, event id)
    confirms: list[asyncio.Future[None]] = field(default_factory=list)

    async def publish(self, body: Any, *, key: bytes, headers: dict[str, str], **_: Any) -> Any:
        self.sent.append((key.decode(), headers["ce_id"]))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.confirms.append(future)
        return future

    def confirm_all(self, error: Exception | None = None) -> None:
        for future in self.confirms:
            if not future.done():
                future.set_exception(error) if error else future.set_result(None)


class Found:
    def __init__(self, docs: list[dict[str, Any]], gate: asyncio.Event | None) -> None:
        self._docs = docs
        self._gate = gate

    async def to_list(self, n: int) -> list[dict[str, Any]]:
        if self._gate is not None:  # the read is slow: the world moves on meanwhile
            await self._gate.wait()
        return self._docs[:n]


@dataclass
class FakeCollection:
    """Just what the relay uses: find pending outboxes, bulk-remove what was sent."""

    name: str = "cases"
    docs: dict[str, dict[str, Any]] = field(default_factory=dict)
    reads: int = 0
    read_gate: asyncio.Event | None = None

    def write(self, doc_id: str, *entries: dict[str, Any]) -> None:
        doc = self.docs.setdefault(doc_id, {"_id": doc_id, "outbox": []})
        doc["outbox"] = doc["outbox"] + list(entries)
        doc["has_outbox"] = True

    def find(self, query: dict[str, Any], _projection: Any) -> Found:
        self.reads += 1
        assert query == {"has_outbox": True}
        return Found([dict(d) for d in self.docs.values() if d["has_outbox"]], self.read_gate)

    async def bulk_write(self, ops: list[UpdateOne], ordered: bool) -> None:
        for op in ops:
            query: dict[str, Any] = op._filter  # type: ignore[assignment]
            update: dict[str, Any] = op._doc  # type: ignore[assignment]
            doc = self.docs[query["_id"]]
            if "$pull" in update:
                gone = set(update["$pull"]["outbox"]["id"]["$in"])
                doc["outbox"] = [e for e in doc["outbox"] if e["id"] not in gone]
            elif not doc["outbox"]:
                doc["has_outbox"] = False


def make_relay(broker: FakeBroker, coll: FakeCollection) -> OutboxRelay:
    return OutboxRelay(broker, "/t", [coll], sweep_seconds=60)  # type: ignore[list-item]


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def running(relay: OutboxRelay) -> asyncio.Task[None]:
    task = asyncio.create_task(relay.run())
    await settle()
    return task


@dataclass
class Rig:
    broker: FakeBroker
    coll: FakeCollection
    relay: OutboxRelay
    task: asyncio.Task[None]
    first: dict[str, Any]  # the entry c1 held when the relay started


async def relay_running_with_one_entry() -> Rig:
    broker, coll = FakeBroker(), FakeCollection()
    relay = make_relay(broker, coll)
    first = entry("c1")
    coll.write("c1", first)
    return Rig(broker, coll, relay, await running(relay), first)


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_new_entry_is_sent_while_earlier_confirms_are_pending() -> None:
    broker, coll = FakeBroker(), FakeCollection()
    relay = make_relay(broker, coll)
    coll.write("c1", entry("c1"))
    task = await running(relay)
    assert [k for k, _ in broker.sent] == ["c1"]  # sent, not confirmed yet

    coll.write("c2", entry("c2"))
    relay.wake()
    await settle()
    # Pipelined: c2 did not wait for c1's confirm and removal.
    assert [k for k, _ in broker.sent] == ["c1", "c2"]

    broker.confirm_all()
    await settle()
    assert all(not d["outbox"] and not d["has_outbox"] for d in coll.docs.values())
    await stop(task)


async def test_a_documents_later_entry_waits_for_its_earlier_one_to_be_confirmed() -> None:
    rig = await relay_running_with_one_entry()
    broker, coll, relay, first, second = rig.broker, rig.coll, rig.relay, rig.first, entry("c1")
    coll.write("c1", second)
    relay.wake()
    await settle()
    assert broker.sent == [("c1", first["id"])]  # second held back, first not resent

    broker.confirm_all()  # the confirm wakes the relay for the held-back entry
    await settle()
    assert broker.sent == [("c1", first["id"]), ("c1", second["id"])]
    broker.confirm_all()
    await settle()
    assert coll.docs["c1"]["outbox"] == [] and coll.docs["c1"]["has_outbox"] is False
    await stop(rig.task)


async def test_an_entry_confirmed_while_a_pass_was_reading_is_not_sent_again() -> None:
    rig = await relay_running_with_one_entry()
    broker, coll, relay, e = rig.broker, rig.coll, rig.relay, rig.first
    assert broker.sent == [("c1", e["id"])]

    coll.read_gate = asyncio.Event()
    relay.wake()  # a pass reads c1 (still holding e) and waits for its answer
    await settle()
    broker.confirm_all()  # meanwhile e is confirmed and removed
    await settle()
    assert coll.docs["c1"]["outbox"] == []
    coll.read_gate.set()  # the pass goes on with what it read before the removal
    await settle()
    assert broker.sent == [("c1", e["id"])]  # not published twice
    await stop(rig.task)


async def test_a_failed_send_keeps_the_documents_outbox_for_the_next_pass() -> None:
    rig = await relay_running_with_one_entry()
    broker, coll, relay, e = rig.broker, rig.coll, rig.relay, rig.first
    broker.confirm_all(error=ConnectionError("broker away"))
    await settle()
    assert coll.docs["c1"]["outbox"] == [e]  # nothing removed, nothing lost

    relay.wake()  # the sweep's turn
    await settle()
    assert broker.sent == [("c1", e["id"]), ("c1", e["id"])]
    broker.confirm_all()
    await settle()
    assert coll.docs["c1"]["outbox"] == []
    await stop(rig.task)


async def test_a_failed_send_beside_a_confirmed_one_is_still_sent_again() -> None:
    broker, coll = FakeBroker(), FakeCollection()
    relay = make_relay(broker, coll)
    lost, kept = entry("c1"), entry("c2")
    coll.write("c1", lost)
    coll.write("c2", kept)
    task = await running(relay)
    broker.confirms[0].set_exception(ConnectionError("broker away"))  # c1's send fails
    broker.confirms[1].set_result(None)  # c2's is confirmed, in the same pass
    await settle()
    assert coll.docs["c2"]["outbox"] == [] and coll.docs["c1"]["outbox"] == [lost]

    relay.wake()  # the sweep's turn: c1's entry goes out again
    await settle()
    assert broker.sent[-1] == ("c1", lost["id"])
    broker.confirm_all()
    await settle()
    assert coll.docs["c1"]["outbox"] == []
    await stop(task)


async def test_flush_returns_once_everything_is_confirmed() -> None:
    broker, coll = FakeBroker(), FakeCollection()
    relay = make_relay(broker, coll)
    coll.write("c1", entry("c1"), entry("c1"))
    flushing = asyncio.create_task(relay.flush())
    await settle()
    assert not flushing.done()  # waits for the broker
    broker.confirm_all()
    assert await flushing == 2
    assert coll.docs["c1"]["has_outbox"] is False
