"""Every operation of every service's OpenAPI document declares what the
service really answers: each answer's status is declared for its operation,
with the answer's media type, and its body matches the declared schema.

The services run as processes (`running_stack`). Each operation is called the
ways an integrator's client meets it: without a key (401), with a key of a
role it is not for (403), with a body over the cap (413), and with inputs
generated from the document itself by schemathesis (valid and invalid:
404, 409, 422, 2xx), every answer checked by schemathesis' conformance checks
(status code, content type, response schema). Bounded: a fixed number of
generated examples per operation."""

from __future__ import annotations

from collections import Counter
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from deploy.local.demo import auth
from deploy.local.stack import SERVICES
from shared.http import PROBLEM
from tests.conftest import RunningStack

pytestmark = pytest.mark.integration
# One development key per role (deploy/local/dev-credentials.json); the tenant's
# are tenant B's, so that nothing generated here lands beside tenant A's data,
# which the security tier's checks use on the same stack.
ROLE_KEYS = ("other-int", "other-partner", "rev-gen-1", "ops")
# Examples per operation with a body (one without: a path or query string can hardly
# be invalid, and one example shows its answers); bounded, no shrinking.
EXAMPLES = {GenerationMode.POSITIVE: 3, GenerationMode.NEGATIVE: 2}
CHECKS = [status_code_conformance, content_type_conformance, response_schema_conformance]
METHODS = {"get", "put", "post", "patch", "delete"}


def declared(doc: dict[str, Any], path: str, method: str, resp: httpx.Response) -> str:
    """'' when the answer is declared for the operation with its media type, else why not."""
    responses = doc["paths"][path][method]["responses"]
    entry = responses.get(str(resp.status_code)) or responses.get("default")
    if entry is None:
        return f"status {resp.status_code} undeclared (declared: {sorted(responses)})"
    media = resp.headers.get("content-type", "").split(";")[0].strip()
    if media and media not in entry.get("content", {}):
        return f"{resp.status_code} as {media} undeclared ({sorted(entry.get('content', {}))})"
    return ""


def concrete(path: str) -> str:
    return path.replace("{", "x-").replace("}", "")


def probe(
    client: httpx.Client, base: str, doc: dict[str, Any], path: str, method: str
) -> tuple[list[str], str | None]:
    """The fixed probes of one operation; returns failures and the key it is for."""
    operation, failures = doc["paths"][path][method], []
    url = f"{base}{concrete(path)}"
    gated = bool(operation.get("security"))
    anonymous = client.request(method, url)
    if gated:
        if anonymous.status_code != 401 or anonymous.headers["content-type"] != PROBLEM:
            failures.append(f"no key: {anonymous.status_code}")
        failures.append(declared(doc, path, method, anonymous))
    answers = {k: client.request(method, url, headers=auth(k)) for k in ROLE_KEYS}
    allowed = [k for k, r in answers.items() if r.status_code != 403]
    for resp in answers.values():
        failures.append(declared(doc, path, method, resp))
        if gated and resp.status_code == 403:
            assert resp.headers["content-type"] == PROBLEM
    if gated and not allowed:
        failures.append("no role may call it")
    key: str | None = allowed[0] if gated and allowed else None
    if method in ("post", "put", "patch"):
        cap = 262_144 if not gated else 1_048_576
        big = client.request(
            method,
            url,
            content=b"{" + b" " * cap + b"}",
            headers={**(auth(key) if key else {}), "content-type": "application/json"},
        )
        if big.status_code != 413:
            failures.append(f"body over the cap: {big.status_code}")
        failures.append(declared(doc, path, method, big))
    return [f for f in failures if f], key


def off_roster(case: Any) -> None:
    """A generated reviewer is stored inactive: it is never offered a case of the
    tests that share the stack (the body stays valid for its schema)."""
    if not case.operation.path.startswith("/v1/reviewers"):
        return
    for reviewer in case.body if isinstance(case.body, list) else [case.body]:
        if isinstance(reviewer, dict):
            reviewer["active"] = False


def generated(operation: Any, base: str, headers: dict[str, str], seen: Counter[int]) -> list[str]:
    """schemathesis' examples of one operation, each answer checked against the document."""
    failures: list[str] = []
    for mode, examples in EXAMPLES.items():
        if not operation.body and mode is GenerationMode.NEGATIVE:
            continue
        count = examples if operation.body else 1

        @settings(
            max_examples=count,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode, headers=headers))
        def run(case: Any) -> None:
            off_roster(case)
            resp = case.call(base_url=base, headers=headers, timeout=15)
            seen[resp.status_code] += 1
            try:
                case.validate_response(resp, checks=CHECKS, headers=headers)
            except (Exception, BaseExceptionGroup) as exc:  # FailureGroup: failed checks
                lines = [line for line in str(exc).splitlines() if line.strip()][:4]
                failures.append(f"{resp.status_code}: {' / '.join(lines)}")

        try:
            run()
        except Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE  # nothing to violate
    return failures


def test_every_operation_declares_what_it_answers(running_stack: RunningStack) -> None:
    failures: list[str] = []
    seen: Counter[int] = Counter()
    operations = 0
    with httpx.Client(timeout=30) as client:
        for service in SERVICES:
            base = running_stack.urls[service]
            doc = client.get(f"{base}/openapi.json").raise_for_status().json()
            assert doc["components"]["securitySchemes"]["apiKey"] == {
                "type": "http",
                "scheme": "bearer",
                "description": doc["components"]["securitySchemes"]["apiKey"]["description"],
            }
            assert "HTTPValidationError" not in doc["components"]["schemas"]
            schema = schemathesis.openapi.from_dict(doc)
            for result in schema.get_all_operations():
                operation = result.ok()  # type: ignore[union-attr]
                path, method = operation.path, operation.method.lower()
                found, key = probe(client, base, doc, path, method)
                failures += [f"{service} {method.upper()} {path}: {f}" for f in found]
                headers = auth(key) if key else {}
                failures += [
                    f"{service} {method.upper()} {path}: {f}"
                    for f in generated(operation, base, headers, seen)
                ]
                operations += 1
    print(f"checked {operations} operations; generated answers {sorted(seen.items())}")
    assert not failures, "\n".join(failures[:40])
    assert operations >= 50
    # The generated inputs reached the routes, both accepted and refused.
    assert sum(n for s, n in seen.items() if 200 <= s < 300) > 10
    assert seen[422] > 10 and seen[404] > 5


def test_every_error_declared_is_problem_json_with_field_errors(
    running_stack: RunningStack,
) -> None:
    """The declared shape is the one `shared.http.problem` returns: a refused case
    answers a Problem whose `errors[]` name every refused field."""
    with httpx.Client(timeout=30) as client:
        base = running_stack.urls["intake"]
        doc = client.get(f"{base}/openapi.json").json()
        resp = client.post(f"{base}/v1/cases", json={"external_id": "x"}, headers=auth("demo-int"))
    assert resp.status_code == 422 and resp.headers["content-type"] == PROBLEM
    problem_schema = doc["components"]["schemas"]["Problem"]
    body = resp.json()
    assert set(problem_schema["required"]) <= set(body)
    assert set(body) <= set(problem_schema["properties"])
    field_error = doc["components"]["schemas"]["FieldError"]
    assert len(body["errors"]) > 1
    for err in body["errors"]:
        assert set(field_error["required"]) <= set(err) <= set(field_error["properties"])
    declared_422 = doc["paths"]["/v1/cases"]["post"]["responses"]["422"]["content"][PROBLEM]
    assert declared_422["schema"] == {"$ref": "#/components/schemas/Problem"}
