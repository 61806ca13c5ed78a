"""End to end: the README's run command (`python -m deploy.local.demo --once`)
on a private state directory. All five services run as processes on their own
infrastructure; the test then reads what a person would look at: the partner's
received webhooks and the traces."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from deploy.local.stack import SERVICES, pid_alive
from tests.conftest import REPO

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def demo_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], Path]:
    state = tmp_path_factory.mktemp("demo")
    env = {**os.environ, "LOCAL_STATE_DIR": str(state), "LOCAL_PORTS": "auto"}
    proc = subprocess.run(
        [sys.executable, "-m", "deploy.local.demo", "--once", "--timeout", "180"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=420,
    )
    return proc, state


def spans(state: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for f in (state / "traces").glob("*.jsonl")
        for line in f.read_text().splitlines()
    ]


def test_sample_cases_reach_delivered(
    demo_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    proc, _ = demo_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "All sample cases delivered; partner webhooks verified: True" in proc.stdout


def test_exactly_one_verified_webhook_per_case(
    demo_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    _, state = demo_run
    hooks = [json.loads(line) for line in (state / "webhooks.jsonl").read_text().splitlines()]
    per_case: dict[str, int] = defaultdict(int)
    for h in hooks:
        assert h["verified"] is True
        assert h["payload"]["type"] == "report.ready"
        per_case[h["payload"]["data"]["case_id"]] += 1
    assert len(per_case) == 2, per_case  # one case over HTTP, one over Kafka
    assert set(per_case.values()) == {1}


def test_each_case_is_one_trace_across_all_five_services(
    demo_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    _, state = demo_run
    hooks = [json.loads(line) for line in (state / "webhooks.jsonl").read_text().splitlines()]
    case_ids = {h["payload"]["data"]["case_id"] for h in hooks}
    services_by_trace: dict[str, set[str]] = defaultdict(set)
    trace_of_case: dict[str, set[str]] = defaultdict(set)
    for s in spans(state):
        services_by_trace[str(s["trace_id"])].add(str(s["service"]))
        key = s["attributes"].get("messaging.kafka.message.key")
        if key in case_ids:
            trace_of_case[str(key)].add(str(s["trace_id"]))
    for case_id in case_ids:
        [trace_id] = trace_of_case[case_id]  # every Kafka span of the case: one trace
        assert services_by_trace[trace_id] == set(SERVICES)


def test_no_phi_in_traces(demo_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    _, state = demo_run
    text = "".join(f.read_text() for f in (state / "traces").glob("*.jsonl"))
    for phi in ("Demo-Patient", "Demo^Jane", "1961-04-12", "MRN-"):
        assert phi not in text


def test_nothing_left_running(demo_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    _, state = demo_run
    started = [int(p) for p in (state / "started-pids.txt").read_text().split()]
    assert len(started) >= len(SERVICES) + 4  # five services and the infrastructure
    assert [pid for pid in started if pid_alive(pid)] == []
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(state) not in out
