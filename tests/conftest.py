"""Test fixtures shared by the tiers.

Unit tests need nothing. Integration and end-to-end tests get the real parts
from `infra`: a private stack of the embedded infrastructure (Tansu on
SeaweedFS, SecantusDB, Orthanc, the FHIR peer) on free loopback ports, started
once per test session by deploy/local/infra.py and stopped at the end. Set
ROUTER_TEST_STATE to the state directory of an already running stack (started
with LOCAL_STATE_DIR=... LOCAL_PORTS=auto) to reuse it across runs.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings as hypothesis_settings

from deploy.local import stack

REPO = Path(__file__).resolve().parents[1]
# The tests run the services in development mode (the local stack's keys, http://
# and loopback endpoints, an unauthenticated local broker); production fails closed
# without these (shared/settings.py). A test of production behaviour says so itself.
os.environ.setdefault("DEV_MODE", "true")
os.environ.setdefault("CREDENTIALS_FILE", str(REPO / "deploy" / "local" / "dev-credentials.json"))

# Property-based tests (hypothesis, schemathesis) explore new inputs on every
# local run; CI replays a fixed set so that a landing never hinges on luck.
# Loaded here, before the test modules build their `settings`, so they inherit it.
hypothesis_settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    hypothesis_settings.load_profile("ci")


def _infra(command: str, state: Path) -> None:
    env = {**os.environ, "LOCAL_STATE_DIR": str(state), "LOCAL_PORTS": "auto"}
    subprocess.run(
        [sys.executable, str(REPO / "deploy/local/infra.py"), command], env=env, check=True
    )


@pytest.fixture(scope="session")
def stack_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The state directory of the test stack (infra in ./infra, services beside)."""
    reuse = os.environ.get("ROUTER_TEST_STATE")
    return Path(reuse) if reuse else tmp_path_factory.mktemp("stack")


@pytest.fixture(scope="session")
def infra(stack_root: Path) -> Iterator[dict[str, Any]]:
    """Endpoints of the running real infrastructure."""
    state = stack_root / "infra"
    reused = bool(os.environ.get("ROUTER_TEST_STATE")) and (state / "endpoints.json").exists()
    if not reused:
        _infra("start", state)
    try:
        yield json.loads((state / "endpoints.json").read_text())
    finally:
        if not reused:
            _infra("stop", state)


async def eventually(
    check: Callable[[], Awaitable[Any]], within: float = 30.0, interval: float = 0.2
) -> Any:
    """Poll `check` until it returns a truthy value (bounded; no fixed sleeps)."""
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {within}s (last value: {last!r})")


@dataclass
class RunningStack:
    paths: stack.Paths
    info: dict[str, Any]

    @property
    def urls(self) -> dict[str, str]:
        return dict(self.info["urls"])

    @property
    def infra(self) -> dict[str, str]:
        return dict(self.info["infra"])

    def env(self) -> dict[str, str]:
        ports = {k: int(v) for k, v in self.info["ports"].items()}
        return stack.service_env(self.paths, self.infra, ports)


@pytest.fixture(scope="session")
def running_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    root = tmp_path_factory.mktemp("faultstack")
    os.environ["LOCAL_PORTS"] = "auto"
    try:
        paths = stack.Paths(Path(root))
        yield RunningStack(paths, stack.up(paths))
    finally:
        stack.down(stack.Paths(Path(root)))
        os.environ.pop("LOCAL_PORTS", None)
        # Keep the services' logs of the run for whoever reads a failure.
        logs = Path(root) / "services" / "logs"
        if logs.exists():
            shutil.copytree(logs, REPO / "test-artifacts" / "stack-logs", dirs_exist_ok=True)
