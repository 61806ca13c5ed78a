"""The assignment service for integration and browser tests: as a real process
(its own database, a free port, an injected clock: a file holding an ISO
instant), with helpers to publish onto and read from the real broker; or in
process (`InProcessAssignment`: the same routes over ASGI on the real database,
a ManualClock, the events read from the outbox), for tests that exercise
handlers rather than the process's life (restarts, consumer groups)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from contextlib import suppress
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from pydantic import BaseModel

from services.assignment.app import create_service
from services.assignment.settings import AssignmentSettings
from services.assignment.store import AssignmentStore
from shared.clock import ManualClock
from shared.envelope import EventMeta, ce_headers
from shared.runtime import Service
from shared.store import connect

REPO = Path(__file__).resolve().parents[2]
OPS = {"Authorization": "Bearer ops.dev-secret-ops"}


def reviewer_auth(reviewer_id: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {reviewer_id}.dev-secret-{reviewer_id}"}


def roomy_roster(workdir: Path) -> Path:
    """The demo roster with capacity to spare. The consumer group outlives a test's
    process: messages a killed process handled but had not yet committed reach the
    next process of the group again (at-least-once), in its fresh database, where
    they would count against a reviewer's capacity. Capacity is not under test here."""
    roster = json.loads((REPO / "deploy" / "local" / "roster.json").read_text())
    for r in roster:
        r["capacity"] = 1000
    path = workdir / "roster.json"
    path.write_text(json.dumps(roster))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class AssignmentProcess:
    """Start, kill and restart `python -m services.assignment` on the real infra."""

    def __init__(self, infra: dict[str, Any], workdir: Path, **env: str) -> None:
        self.infra = infra
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.clock_file = workdir / "clock.txt"
        self.log = workdir / "assignment.log"
        self.database = f"it_assign_{uuid.uuid4().hex[:8]}"
        self.env = {
            "ASSIGNMENT_ROSTER_FILE": str(roomy_roster(workdir)),
            **os.environ,
            "KAFKA_BOOTSTRAP": infra["kafka_bootstrap"],
            "MONGO_URI": infra["mongo_uri"],
            "TRACE_DIR": str(workdir / "traces"),
            "ASSIGNMENT_HTTP_PORT": str(self.port),
            "ASSIGNMENT_MONGO_DATABASE": self.database,
            "ASSIGNMENT_CLOCK_FILE": str(self.clock_file),
            "ASSIGNMENT_TIMER_POLL_SECONDS": "0.3",
            "ASSIGNMENT_OUTBOX_SWEEP_SECONDS": "0.5",
            # A killed consumer's group membership must expire quickly on restart.
            "KAFKA_SESSION_TIMEOUT_MS": "2000",
            "KAFKA_HEARTBEAT_INTERVAL_MS": "500",
            "PYTHONUNBUFFERED": "1",
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def set_clock(self, instant: datetime) -> None:
        tmp = self.clock_file.with_suffix(".tmp")
        tmp.write_text(instant.isoformat())
        tmp.replace(self.clock_file)  # atomic: the service never reads half a line

    def start(self, timeout: float = 60.0) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "services.assignment"],
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            with suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        raise AssertionError(f"assignment not ready: {self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, as after a crash."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def ticks(self) -> float:
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        for line in text.splitlines():
            if line.startswith("assignment_timer_ticks_total "):
                return float(line.split()[1])
        return 0.0

    async def drop_database(self) -> None:
        client, _ = connect(self.infra["mongo_uri"], self.database)
        await client.drop_database(self.database)
        await client.close()


async def publish(bootstrap: str, event: BaseModel) -> None:
    """What another service's outbox relay does: a CloudEvent keyed by case id."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
    await producer.start()
    try:
        headers = ce_headers(
            event_id=str(uuid.uuid4()),
            ce_type=event.ce_type(),  # type: ignore[attr-defined]
            source="/it/records_fetch",
            tenant_id=event.tenant_id,  # type: ignore[attr-defined]
        )
        await producer.send_and_wait(
            event.topic,  # type: ignore[attr-defined]
            event.model_dump_json().encode(),
            key=event.case_id.encode(),  # type: ignore[attr-defined]
            headers=[(k, v.encode()) for k, v in headers.items()],
        )
    finally:
        await producer.stop()


class TopicLog:
    """Everything published on some topics, grouped by (topic, case id)."""

    def __init__(self, bootstrap: str, topics: list[str]) -> None:
        self.consumer = AIOKafkaConsumer(
            *topics, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
        )
        self.seen: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> TopicLog:
        await self.consumer.start()
        self.task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *_: object) -> None:
        if self.task:
            self.task.cancel()
            with suppress(asyncio.CancelledError):
                await self.task
        await self.consumer.stop()

    async def _run(self) -> None:
        async for msg in self.consumer:
            key = (msg.key or b"").decode()
            self.seen[(msg.topic, key)].append(json.loads(msg.value))

    def of(self, topic: str, case_id: str) -> list[dict[str, Any]]:
        return list(self.seen.get((topic, case_id), []))


class InProcessAssignment:
    """`create_service` with a ManualClock on the real database: requests go
    through the service's own routes (httpx over ASGI, no port, no process), and
    events are handed to the handlers the subscribers call. Nothing is published:
    `emitted` reads what the service wrote to its outbox."""

    def __init__(self, infra: dict[str, Any], workdir: Path, start: datetime) -> None:
        self.database = f"it_assign_{uuid.uuid4().hex[:8]}"
        self.settings = AssignmentSettings(
            mongo_uri=infra["mongo_uri"],
            kafka_bootstrap=infra["kafka_bootstrap"],
            mongo_database=self.database,
            trace_dir=workdir / "traces",
            roster_file=roomy_roster(workdir),
        )
        self.clock = ManualClock(start)
        self.service: Service = create_service(self.settings, self.clock)
        self.store = AssignmentStore(self.service.db["reviewers"], self.service.db["assignments"])
        self.policy = self.settings.policy()
        self.http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.service.api), base_url="http://assignment"
        )

    async def load_roster(self) -> None:
        """What start-up does: indexes, then the roster file through the import API."""
        await self.store.create_indexes()
        roster = json.loads(self.settings.roster_file.read_text())
        r = await self.http.post("/v1/reviewers/import", json=roster, headers=OPS)
        assert r.status_code == 200, r.text

    async def emitted(self, topic: str, case_id: str) -> list[dict[str, Any]]:
        """Bodies of the events written for `case_id` on `topic`, oldest first."""
        docs = await self.store.assignments.find({"case_id": case_id}, {"outbox": 1}).to_list()
        entries = [e for d in docs for e in d.get("outbox", []) if e["topic"] == topic]
        return [e["body"] for e in sorted(entries, key=lambda e: e["created_at"])]

    async def close(self) -> None:
        await self.http.aclose()
        await self.service.client.drop_database(self.database)
        await self.service.client.close()


def event_meta() -> EventMeta:
    """The CloudEvents attributes of a consumed message, as a subscriber gets them."""
    return EventMeta(
        event_id=str(uuid.uuid4()), ce_type="t", source="/it", time="", tenant_id="demo-health"
    )
