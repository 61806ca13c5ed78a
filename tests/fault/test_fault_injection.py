"""With a stream of cases in flight, SIGKILL each service in turn at random
moments and restart it, restart the broker, restart the database: every case
still reaches `delivered` exactly once — no case lost, no duplicate assignment,
report or webhook. Seeded by FAULT_SEED; the figures are printed and written to
test-artifacts/fault-report-<seed>.json."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer

from deploy.local import demo, seed, stack
from tests.conftest import REPO, RunningStack

CASES = int(os.environ.get("FAULT_CASES", "16"))
SEED = int(os.environ.get("FAULT_SEED", str(int(time.time()) % 10_000)))


class Faults:
    """Kills and restarts parts of the running system, counting what it did."""

    def __init__(self, running: RunningStack, rng: random.Random) -> None:
        self.running, self.rng = running, rng
        self.kills = self.restarts = 0

    def kill_service(self, name: str) -> None:
        pid = stack.read_pid(self.running.paths.pids / f"{name}.pid")
        assert pid and stack.pid_alive(pid), f"{name} not running"
        os.killpg(pid, signal.SIGKILL)
        while stack.pid_alive(pid):
            stack.reap(pid)
            time.sleep(0.05)
        self.kills += 1

    def restart_service(self, name: str) -> None:
        stack.start_service(name, self.running.paths, self.running.env())
        self.restarts += 1

    def restart_infra(self, part: str) -> None:
        env = {**os.environ, "LOCAL_STATE_DIR": str(self.running.paths.infra)}
        script = str(REPO / "deploy/local/infra.py")
        subprocess.run([sys.executable, script, "stop", "--only", part], env=env, check=True)
        time.sleep(self.rng.uniform(0.5, 2.0))  # the part stays down for a while, on purpose
        subprocess.run([sys.executable, script, "start", "--only", part], env=env, check=True)
        self.restarts += 1


class Integrator:
    """Submits cases and retries until the router takes them (as a real one would)."""

    def __init__(self, running: RunningStack, patients: tuple[str, str]) -> None:
        self.urls, self.infra, self.patients = running.urls, running.infra, patients
        self.submitted: list[str] = []

    def submit_all(self, count: int, gap: float) -> None:
        for i in range(count):
            self.submit(i)
            time.sleep(gap)

    def submit(self, i: int) -> None:
        external_id = f"fault-{SEED}-{i}"
        case = demo.sample_case(
            external_id,
            "Second opinion on brain MRI: enhancing lesion, cannot exclude glioma.",
            *self.patients,
            "Lone Star Radiology",
            "Possible glioma",
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if i % 2:
                    asyncio.run(demo.publish_case(self.infra["kafka_bootstrap"], demo.TENANT, case))
                    break
                r = httpx.post(
                    f"{self.urls['intake']}/v1/cases",
                    json=case,
                    headers=demo.auth("demo-int"),
                    timeout=10,
                )
                if r.status_code in (200, 201):
                    break
            except Exception:  # intake or broker down right now: retry
                pass
            time.sleep(0.5)
        else:
            raise AssertionError(f"could not submit {external_id}")
        self.submitted.append(external_id)


def reviewer_loop(urls: dict[str, str], stop: threading.Event) -> None:
    reviewed: set[str] = set()
    with httpx.Client(timeout=10) as client:
        while not stop.is_set():
            with contextlib.suppress(Exception):  # a service is down: try again later
                demo.play_reviewers(client, urls["reporting"], reviewed)
            stop.wait(0.5)


def case_stages(urls: dict[str, str], external_ids: set[str]) -> dict[str, dict[str, Any]]:
    try:
        resp = httpx.get(
            f"{urls['intake']}/v1/cases?limit=500", headers=demo.auth("demo-int"), timeout=10
        )
        return {c["external_id"]: c for c in resp.json() if c["external_id"] in external_ids}
    except Exception:
        return {}


async def topic_census(
    bootstrap: str, topics: list[str]
) -> dict[str, list[tuple[str, str, dict[str, Any]]]]:
    """Every message on `topics`: (key, ce_id, body), read from the beginning."""
    consumer = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap,
        group_id=f"census-{SEED}-{time.time_ns()}",
        auto_offset_reset="earliest",
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
    )
    await consumer.start()
    out: dict[str, list[tuple[str, str, dict[str, Any]]]] = defaultdict(list)
    idle = 0
    try:
        while idle < 5:
            batch = await consumer.getmany(timeout_ms=1000)
            idle = 0 if batch else idle + 1
            for tp, records in batch.items():
                for r in records:
                    headers = {k: v.decode() for k, v in r.headers}
                    body = json.loads(r.value) if r.value else {}
                    out[tp.topic].append(((r.key or b"").decode(), headers.get("ce_id", ""), body))
    finally:
        await consumer.stop()
    return out


def skipped_redeliveries(service_url: str) -> int:
    """What the idempotency guards of one (restarted) service skipped, from /metrics."""
    text = httpx.get(f"{service_url}/metrics", timeout=10).text
    return sum(
        int(float(line.split()[-1]))
        for line in text.splitlines()
        if line.startswith("router_redeliveries_skipped_total")
    )


def test_every_case_delivered_exactly_once_under_faults(
    running_stack: RunningStack, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    infra, urls = running_stack.infra, running_stack.urls
    imaging, clinic = seed.seed_patient(
        infra, f"MRN-F{SEED}", "Fault^Pat", "Fault", "Pat", "1961-04-12"
    )
    receiver = demo.WebhookReceiver(tmp_path / "webhooks.jsonl")
    sub = httpx.post(
        f"{urls['notify']}/v1/subscriptions",
        headers=demo.auth("demo-partner"),
        json={"url": receiver.url, "event_types": ["report.ready"]},
        timeout=10,
    )
    sub.raise_for_status()
    receiver.secret = sub.json()["secret"]

    stop = threading.Event()
    threading.Thread(target=reviewer_loop, args=(urls, stop), daemon=True).start()
    faults, integrator = Faults(running_stack, rng), Integrator(running_stack, (imaging, clinic))
    plan = [*rng.sample(list(stack.SERVICES), len(stack.SERVICES)), "kafka", "mongo"]
    started = time.monotonic()
    # Cases keep arriving while the faults happen, so kills land mid-flight.
    submitter = threading.Thread(target=integrator.submit_all, args=(CASES, rng.uniform(0.8, 1.5)))
    try:
        submitter.start()
        for target in plan:
            time.sleep(rng.uniform(0.3, 2.5))  # a random moment
            if target in ("kafka", "mongo"):
                faults.restart_infra(target)
            else:
                faults.kill_service(target)
                time.sleep(rng.uniform(0.2, 2.0))
                faults.restart_service(target)
        submitter.join(timeout=300)
        expected = set(integrator.submitted)
        deadline = time.monotonic() + 360
        stages: dict[str, dict[str, Any]] = {}
        while time.monotonic() < deadline:
            stages = case_stages(urls, expected)
            if len(stages) == len(expected) and all(
                c["stage"] == "delivered" for c in stages.values()
            ):
                break
            time.sleep(1)
    finally:
        stop.set()
    elapsed = time.monotonic() - started
    lagging = {k: v["stage"] for k, v in stages.items() if v["stage"] != "delivered"}
    assert len(stages) == CASES and not lagging, (
        f"not delivered: {lagging}, missing {expected - set(stages)}"
    )

    case_ids = {c["case_id"] for c in stages.values()}
    census = asyncio.run(
        topic_census(infra["kafka_bootstrap"], ["case.accepted", "case.assigned", "report.ready"])
    )
    # One assignment per needed subspecialty of a case (a case may need several).
    assignments: dict[tuple[str, str], set[str]] = defaultdict(set)
    reports: dict[str, set[str]] = defaultdict(set)
    for _, _, body in census["case.assigned"]:
        assignments[(body["case_id"], body["subspecialty"])].add(body["assignment_id"])
    for _, _, body in census["report.ready"]:
        reports[body["case_id"]].add(body["report_id"])
    hooks = receiver.by_case()
    for case_id in case_ids:
        needed = {k: v for k, v in assignments.items() if k[0] == case_id}
        assert needed, f"{case_id}: never assigned"
        assert all(len(v) == 1 for v in needed.values()), f"{case_id}: assignments {needed}"
        assert len(reports[case_id]) == 1, f"{case_id}: reports {reports[case_id]}"
        ids = {h["webhook_id"] for h in hooks.get(case_id, [])}
        assert len(ids) == 1, f"{case_id}: webhook ids {ids}"
        assert all(h["verified"] for h in hooks[case_id])

    skipped = sum(skipped_redeliveries(url) for url in urls.values())
    republished = sum(
        n - 1 for t in census.values() for n in Counter(ce for _, ce, _ in t).values() if n > 1
    )
    webhook_retries = sum(len(v) for v in hooks.values()) - len(case_ids)
    report = {
        "seed": SEED,
        "cases": CASES,
        "kills": faults.kills,
        "restarts": faults.restarts,
        "redeliveries_skipped_by_handlers": skipped,
        "republished_on_topics": republished,
        "webhook_retries_same_id": webhook_retries,
        "duplicates_suppressed": skipped + webhook_retries,
        "seconds": round(elapsed, 1),
    }
    out = REPO / "test-artifacts"
    out.mkdir(exist_ok=True)
    (out / f"fault-report-{SEED}.json").write_text(json.dumps(report, indent=1))
    print("\nfault tier:", json.dumps(report))
