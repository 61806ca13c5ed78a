"""Every service is built the same way (docs/architecture.md, "One shape for
every service"): nothing is built when its module is imported, and
`create_service(settings, clock)` returns the wired service reading time from
the clock it was given."""

from __future__ import annotations

import importlib
import json
import pathlib
import subprocess
import sys

import pytest

from shared.clock import ManualClock

SERVICES = ("intake", "records_fetch", "assignment", "reporting", "notify")
ROOT = pathlib.Path(__file__).resolve().parents[2]


IMPORT_ONLY = """
import importlib, json
report = {}
for name in %r:
    module = importlib.import_module(f"services.{name}.app")
    kinds = {"service", "store", "client", "ctx", "settings", "api", "broker"}
    report[name] = sorted(kinds & set(vars(module))) + (
        ["default service"] if module.default_service.built else []
    )
print(json.dumps(report))
"""


def test_importing_a_service_builds_no_service_client_or_store() -> None:
    # A fresh interpreter: this process has imported (and built) services already.
    out = subprocess.run(
        [sys.executable, "-c", IMPORT_ONLY % (SERVICES,)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    built = json.loads(out.stdout.strip().splitlines()[-1])
    assert built == {name: [] for name in SERVICES}


@pytest.mark.parametrize("name", SERVICES)
def test_create_service_wires_the_given_clock(name: str) -> None:
    clock = ManualClock()
    service = importlib.import_module(f"services.{name}.app").create_service(clock=clock)
    assert service.clock is clock
    assert service.settings.service_name == name
    assert service.broker.subscribers, f"{name} subscribes to nothing"


def test_no_wall_clock_is_read_outside_shared_clock() -> None:
    readers = [
        str(p.relative_to(ROOT))
        for folder in ("services", "shared")
        for p in (ROOT / folder).rglob("*.py")
        if p.name != "clock.py"
        and any(call in p.read_text(encoding="utf-8") for call in ("datetime.now(", "utcnow("))
    ]
    assert readers == []
