"""Property-based fuzzing of every service's HTTP API from its own OpenAPI
document (schemathesis 4, driven by hypothesis), with valid credentials of
the role each operation is for: whatever the body, path, query or headers, no
answer is a 5xx. Positive (schema-valid) and negative (schema-violating)
inputs; bounded: `EXAMPLES` per operation and mode, no shrinking.

The schema is fetched inside the test, so collecting this file needs no
running stack. The `canary` case is finished first, so that roster changes
made by the fuzzer cannot strand it.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from deploy.local.demo import dev_key
from deploy.local.stack import SERVICES
from tests.conftest import RunningStack
from tests.security.conftest import Canary

pytestmark = pytest.mark.security
EXAMPLES = {GenerationMode.POSITIVE: 12, GenerationMode.NEGATIVE: 6}
SKIP = {"/healthz", "/readyz", "/metrics"}


def key_for(service: str, path: str) -> str:
    """The development key of the role the operation is meant for."""
    if path.startswith("/v1/reviewer") or path.endswith(("/opinion", "/draft", "/addenda")):
        return "rev-gen-1"
    if service == "assignment" or path.endswith(("/review", "/override", "/received")):
        return "ops"
    if service in ("notify", "reporting"):
        return "demo-partner"
    return "demo-int"


def fuzz_operation(
    operation: Any, base: str, headers: dict[str, str], statuses: Counter[int]
) -> list[str]:
    failures: list[str] = []
    for mode, examples in EXAMPLES.items():

        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode, headers=headers))
        def run(case: Any) -> None:
            resp = case.call(base_url=base, headers=headers, timeout=15)
            statuses[resp.status_code] += 1
            if resp.status_code >= 500:
                failures.append(f"{resp.status_code}: {case.as_curl_command(headers=headers)}")

        try:
            run()
        except Unsatisfiable:
            # Nothing to violate (e.g. no parameters besides our fixed credentials).
            assert mode is GenerationMode.NEGATIVE
    return failures


def test_no_operation_of_any_service_answers_5xx(
    running_stack: RunningStack, canary: Canary
) -> None:
    started, failures, counted = time.monotonic(), [], 0
    statuses: Counter[int] = Counter()
    for service in SERVICES:
        base = running_stack.urls[service]
        raw = httpx.get(f"{base}/openapi.json", timeout=10).raise_for_status().json()
        schema = schemathesis.openapi.from_dict(raw)
        for result in schema.get_all_operations():
            operation = result.ok()  # type: ignore[union-attr]  # Err: an invalid schema
            if operation.path in SKIP:
                continue
            headers = {"Authorization": f"Bearer {dev_key(key_for(service, operation.path))}"}
            failures += [
                f"{service} {operation.method.upper()} {operation.path} {f}"
                for f in fuzz_operation(operation, base, headers, statuses)
            ]
            counted += 1
    elapsed = time.monotonic() - started
    print(f"fuzzed {counted} operations in {elapsed:.1f}s; statuses {sorted(statuses.items())}")
    assert not failures, "\n".join(failures[:20])
    # The credentials worked: requests reached the handlers, not only the auth check.
    assert sum(n for s, n in statuses.items() if 200 <= s < 300) > 20
    assert statuses[401] == 0
    assert counted >= 30
    # The suite's time is kept by the fixed number of examples (EXAMPLES), not by a
    # wall-clock assertion: a busy machine must not fail a test about 5xx answers.
