"""Driving cases through the running pipeline: submit over HTTP at a given rate,
play the reviewers, receive the partner webhooks, and read each case's stage
history back from intake. All times are wall-clock epoch seconds on this host
(the services write their history timestamps with the same clock)."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from deploy.local import seed
from deploy.local.demo import REVIEWERS, WebhookReceiver, auth, opinion, sample_case

TENANT = "demo-health"


class TimedReceiver(WebhookReceiver):
    """The demo's verifying receiver, also noting when each case's webhook arrived."""

    def __init__(self, log_path: Path) -> None:
        self.arrived: dict[str, float] = {}
        super().__init__(log_path)

    def record(self, headers: dict[str, str], body: bytes) -> None:
        now = time.time()
        super().record(headers, body)
        case_id = json.loads(body or b"{}").get("data", {}).get("case_id", "?")
        self.arrived.setdefault(case_id, now)


@dataclass
class Run:
    """What one load phase saw, per case id."""

    label: str
    submitted: dict[str, float] = field(default_factory=dict)
    reported: dict[str, float] = field(default_factory=dict)
    history: dict[str, dict[str, float]] = field(default_factory=dict)
    delivered: dict[str, float] = field(default_factory=dict)
    started: float = 0.0
    errors: int = 0


def bench_case(run_id: str, i: int, imaging_patient: str, clinic_patient: str) -> dict[str, Any]:
    return sample_case(
        f"bench-{run_id}-{i:06d}",
        "Second opinion on brain MRI: enhancing lesion in the posterior fossa, "
        "report says cannot exclude low-grade glioma.",
        imaging_patient,
        clinic_patient,
        "Lone Star Radiology",
        "Possible low-grade glioma",
    )


REVIEWER_POLL_SECONDS = 0.5


SUBMIT_TRIES = 3


class Driver:
    def __init__(self, urls: dict[str, str], receiver: TimedReceiver, patients: tuple[str, str]):
        self.urls = urls
        self.receiver = receiver
        self.patients = patients
        self.client = httpx.AsyncClient(
            timeout=60, limits=httpx.Limits(max_connections=32, max_keepalive_connections=32)
        )
        # Assignments answered (every reviewer of a case reports, as in a real
        # multi-reviewer case; one opinion per case left the others open for ever).
        self._reviewed: set[str] = set()

    async def close(self) -> None:
        await self.client.aclose()
        self.receiver.server.shutdown()

    @classmethod
    async def subscribed(
        cls, urls: dict[str, str], infra: dict[str, Any], root: Path, mrn: str, birth: str
    ) -> Driver:
        """Seed one patient's records, start the verifying webhook receiver and
        subscribe it to report.ready: what every harness run needs first."""
        patients = seed.seed_patient(infra, mrn, "Bench^Pat", "Bench-Patient", "Pat", birth)
        driver = cls(urls, TimedReceiver(root / "webhooks.jsonl"), patients)
        try:
            sub = await driver.client.post(
                f"{urls['notify']}/v1/subscriptions",
                headers=auth("demo-partner"),
                json={"url": driver.receiver.url, "event_types": ["report.ready"]},
            )
            sub.raise_for_status()
        except BaseException:
            await driver.close()
            raise
        driver.receiver.secret = sub.json()["secret"]
        return driver

    async def submit_one(self, run: Run, case: dict[str, Any], gate: asyncio.Semaphore) -> None:
        async with gate:
            t = time.time()
            for _ in range(SUBMIT_TRIES):
                # A pooled connection the server closed as idle just as it was reused
                # (seen once in 6,718 cases), or a 503 (a dependency briefly away): the
                # case's idempotency key makes sending it again safe.
                try:
                    resp = await self.client.post(
                        f"{self.urls['intake']}/v1/cases", json=case, headers=auth("demo-int")
                    )
                except httpx.TransportError:
                    continue
                if resp.status_code != 503:
                    break
                await asyncio.sleep(float(resp.headers.get("Retry-After", "1")))
            else:
                run.errors += 1
                return
            if resp.status_code in (200, 201):
                run.submitted[resp.json()["case_id"]] = t
            else:
                run.errors += 1

    async def submit(self, run: Run, run_id: str, n: int, rate: float | None) -> None:
        """Open loop: case i is sent at start + i/rate (all at once when rate is None)."""
        gate = asyncio.Semaphore(16)
        run.started = time.time()
        t0 = time.monotonic()
        tasks = []
        for i in range(n):
            if rate:
                await asyncio.sleep(max(0.0, t0 + i / rate - time.monotonic()))
            case = bench_case(run_id, i, *self.patients)
            tasks.append(asyncio.create_task(self.submit_one(run, case, gate)))
        await asyncio.gather(*tasks)

    async def _review(self, run: Run, reviewer: str, case_id: str, assignment_id: str) -> None:
        try:
            # Addressed by assignment: one reviewer can hold two of a case (a
            # haematopathologist is also a pathologist), which the case-addressed
            # route refuses with 409 (that 409 read as "done" left them open).
            resp = await self.client.post(
                f"{self.urls['reporting']}/v1/assignments/{assignment_id}/opinion",
                json=opinion(),
                headers=auth(reviewer),
            )
        except httpx.HTTPError:
            self._reviewed.discard(assignment_id)  # try again on the next pass
            return
        if resp.status_code in (201, 409):  # 409: this assignment was reported already
            run.reported.setdefault(case_id, time.time())
        else:
            self._reviewed.discard(assignment_id)

    async def play_reviewers(self, run: Run, stop: asyncio.Event) -> None:
        """Each reviewer opens their list and submits an opinion on every new assignment.
        A failed request must not end the loop: the cases would wait forever.
        Lists are read twice a second: often enough for the figures (the report
        hop starts at the opinion's submission), rarely enough that the harness
        is not the database's main load (at 10/s it was)."""
        while not stop.is_set():
            for reviewer in REVIEWERS:
                try:
                    resp = await self.client.get(
                        f"{self.urls['reporting']}/v1/reviewer/assignments",
                        headers=auth(reviewer),
                    )
                except httpx.HTTPError:
                    continue
                fresh = [
                    (a["case_id"], a["assignment_id"])
                    for a in (resp.json() if resp.status_code == 200 else [])
                    if a["assignment_id"] not in self._reviewed
                ]
                self._reviewed.update(a for _, a in fresh)
                await asyncio.gather(*(self._review(run, reviewer, c, a) for c, a in fresh))
            await asyncio.sleep(REVIEWER_POLL_SECONDS)

    async def wait_delivered(self, run: Run, within: float) -> bool:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if all(c in self.receiver.arrived for c in run.submitted):
                break
            await asyncio.sleep(0.25)
        run.delivered = {
            c: self.receiver.arrived[c] for c in run.submitted if c in self.receiver.arrived
        }
        return len(run.delivered) == len(run.submitted)

    async def read_history(self, run: Run) -> None:
        gate = asyncio.Semaphore(8)

        async def one(case_id: str) -> None:
            async with gate:
                resp = await self.client.get(
                    f"{self.urls['intake']}/v1/cases/{case_id}", headers=auth("demo-int")
                )
            if resp.status_code == 200:
                run.history[case_id] = {
                    h["stage"]: datetime.fromisoformat(h["at"]).timestamp()
                    for h in resp.json()["history"]
                }

        await asyncio.gather(*(one(c) for c in run.submitted))

    async def phase(
        self, label: str, run_id: str, n: int, rate: float | None, within: float
    ) -> Run:
        """Submit n cases, review them, wait for every webhook, read the histories."""
        run = Run(label)
        stop = asyncio.Event()
        reviewers = asyncio.create_task(self.play_reviewers(run, stop))
        try:
            await self.submit(run, run_id, n, rate)
            await self.wait_delivered(run, within)
        finally:
            stop.set()
            await reviewers
        await self.read_history(run)
        return run
