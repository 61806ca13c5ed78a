"""A service started while the broker is down waits for it instead of exiting
(nothing would restart it on a laptop, and a crash loop in production)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from deploy.local.stack import free_port, stop_pid
from tests.conftest import REPO


def infra_cmd(state: Path, *args: str) -> None:
    env = {**os.environ, "LOCAL_STATE_DIR": str(state)}
    subprocess.run(
        [sys.executable, str(REPO / "deploy/local/infra.py"), *args], env=env, check=True
    )


def status(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=1).status_code
    except httpx.HTTPError:
        return None


def test_service_started_before_the_broker_becomes_ready_once_it_is_up(
    infra: dict[str, Any], stack_root: Path, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP": infra["kafka_bootstrap"],
        "MONGO_URI": infra["mongo_uri"],
        "TRACE_DIR": str(tmp_path),
        "ASSIGNMENT_HTTP_PORT": str(port),
        "ASSIGNMENT_MONGO_DATABASE": f"startup{port}",
    }
    infra_cmd(stack_root / "infra", "stop", "--only", "kafka")
    log = (tmp_path / "assignment.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.assignment"],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:  # the broker stays down for a while
            assert proc.poll() is None, "the service exited instead of waiting for the broker"
            time.sleep(0.5)
        assert status(f"http://127.0.0.1:{port}/readyz") != 200
        infra_cmd(stack_root / "infra", "start", "--only", "kafka")
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and status(f"http://127.0.0.1:{port}/readyz") != 200:
            assert proc.poll() is None
            time.sleep(0.5)
        assert status(f"http://127.0.0.1:{port}/readyz") == 200
        assert b"start-up waits" in (tmp_path / "assignment.log").read_bytes()
    finally:
        stop_pid(proc.pid)
        infra_cmd(stack_root / "infra", "start", "--only", "kafka")
