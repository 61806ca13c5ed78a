"""Scale-out by consumer group, against the real broker and database: two
processes of the assignment service (same consumer group, their own HTTP ports
and trace files) share the partitions of `records.complete` and together assign
a stream of cases; every case is handled by exactly one of them.

Which instance handled a case is read from the instance's own trace file: each
consumed message leaves a CONSUMER span whose message key is the case id."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from faststream.kafka import KafkaBroker
from pymongo import AsyncMongoClient

from deploy.local.stack import free_port, stop_pid, wait_ready
from shared.envelope import outbox_entry
from shared.events import FirstOpinionSource, RecordsComplete, RoutingContext
from shared.runtime import ensure_topics
from shared.store import OutboxRelay
from tests.conftest import eventually

REPO = Path(__file__).resolve().parents[2]
CASES = 30
TOPIC = RecordsComplete.topic


def handled(trace_file: Path, prefix: str) -> list[str]:
    """Case ids of `records.complete` messages this instance processed."""
    if not trace_file.exists():
        return []
    out = []
    for line in trace_file.read_text().splitlines():
        span = json.loads(line)
        attrs = span.get("attributes", {})
        key = str(attrs.get("messaging.kafka.message.key", ""))
        if (
            attrs.get("messaging.operation") == "process"
            and attrs.get("messaging.destination_publish.name") == TOPIC
            and key.startswith(prefix)
        ):
            out.append(key)
    return out


def assigned_partitions(log: Path, group: str) -> bool:
    """True once the instance's latest assignment for `group` is non-empty."""
    text = log.read_text(errors="replace") if log.exists() else ""
    lines = [ln for ln in text.splitlines() if "Setting newly assigned partitions" in ln]
    lines = [ln for ln in lines if f"for group {group}" in ln]
    return bool(lines) and "set()" not in lines[-1]


@pytest.fixture
def two_instances(infra: dict[str, Any], tmp_path: Path) -> Iterator[dict[str, Any]]:
    # A service name of its own: its consumer group and database are this test's only.
    name = f"assignment_so_{uuid.uuid4().hex[:6]}"
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP": infra["kafka_bootstrap"],
        "MONGO_URI": infra["mongo_uri"],
        "ASSIGNMENT_SERVICE_NAME": name,
        "ASSIGNMENT_MONGO_DATABASE": name,
        "KAFKA_SESSION_TIMEOUT_MS": "3000",
        "KAFKA_HEARTBEAT_INTERVAL_MS": "500",
        "PYTHONUNBUFFERED": "1",
    }
    instances: list[dict[str, Any]] = []
    try:
        for i in ("a", "b"):
            port = free_port()
            log = tmp_path / f"{i}.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "services.assignment"],
                    cwd=REPO,
                    env={**env, "ASSIGNMENT_HTTP_PORT": str(port), "TRACE_DIR": str(tmp_path / i)},
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            instances.append({"proc": proc, "log": log, "traces": tmp_path / i / f"{name}.jsonl"})
            wait_ready(f"http://127.0.0.1:{port}/readyz", f"instance {i}", log, timeout=60)
        yield {"name": name, "instances": instances}
    finally:
        for inst in instances:
            proc = inst["proc"]
            stop_pid(proc.pid)
            proc.wait(timeout=5)


def records_complete(case_id: str) -> RecordsComplete:
    routing = RoutingContext(
        subspecialties=["neuroradiology"],
        jurisdiction="US-CA",
        first_opinion=FirstOpinionSource(institution="Valley Clinic"),
    )
    return RecordsComplete(
        case_id=case_id,
        tenant_id="demo-health",
        routing=routing,
        manifest=[],
        completed_at=datetime.now(UTC),
    )


async def test_two_instances_share_partitions_and_never_handle_a_case_twice(
    infra: dict[str, Any], two_instances: dict[str, Any]
) -> None:
    name, (a, b) = two_instances["name"], two_instances["instances"]
    group = f"router.{name}.{TOPIC}"

    async def both_assigned() -> bool:
        return assigned_partitions(a["log"], group) and assigned_partitions(b["log"], group)

    await eventually(both_assigned, within=45)  # the group rebalanced over both
    await ensure_topics(infra["kafka_bootstrap"], [TOPIC], 3)
    prefix = f"case-so{uuid.uuid4().hex[:6]}-"
    case_ids = [f"{prefix}{i:03d}" for i in range(CASES)]
    broker = KafkaBroker(infra["kafka_bootstrap"])
    async with broker:
        await broker.start()
        relay = OutboxRelay(broker, "/it/scale-out", [])
        for case_id in case_ids:
            await relay.publish(outbox_entry(records_complete(case_id)))

    async def all_handled() -> bool:
        return len(set(handled(a["traces"], prefix)) | set(handled(b["traces"], prefix))) == CASES

    await eventually(all_handled, within=60)
    by_a, by_b = handled(a["traces"], prefix), handled(b["traces"], prefix)
    assert set(by_a) | set(by_b) == set(case_ids)
    assert not set(by_a) & set(by_b), "a case was handled by both instances"
    assert len(by_a) == len(set(by_a)) and len(by_b) == len(set(by_b))  # and once each
    assert by_a and by_b, "one instance handled everything: the partitions were not shared"

    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(infra["mongo_uri"])
    try:
        stored = await client[name]["assignments"].distinct(
            "case_id", {"case_id": {"$in": case_ids}}
        )
        assert set(stored) == set(case_ids)  # together they stored every case, in one database
    finally:
        await client.drop_database(name)
        await client.close()
