"""The committed AsyncAPI document as a partner's tooling reads it:
`@asyncapi/parser` (tests/conformance/node, pinned in its lockfile) parses
docs/asyncapi.json with no diagnostic of severity error (nor warning), and the
parsed model has what a partner needs: a channel per topic plus the
parameterised per-tenant partner channels, the CloudEvents headers and the key
on every message, and the broker's security scheme."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from shared.contract import CONTRACT_FILE
from shared.events import PARTNER_TOPICS, TOPIC_MODELS
from tests.conftest import REPO

NODE_DIR = REPO / "tests" / "conformance" / "node"
# Spectral's DiagnosticSeverity.
ERROR, WARNING = 0, 1


@pytest.fixture(scope="module")
def node_parser() -> Path:
    """tests/conformance/node with its packages (make install runs the same `npm ci`)."""
    if not (NODE_DIR / "node_modules" / "@asyncapi" / "parser").is_dir():
        if not shutil.which("npm"):
            pytest.fail("npm is needed: run make install")
        subprocess.run(
            ["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=NODE_DIR,
            check=True,
            timeout=300,
        )
    return NODE_DIR


def parse(node_dir: Path, document: Path) -> dict[str, Any]:
    run = subprocess.run(
        ["node", str(node_dir / "asyncapi.mjs"), str(document)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    parsed: dict[str, Any] = json.loads(run.stdout)
    return parsed


@pytest.fixture(scope="module")
def parsed(node_parser: Path) -> dict[str, Any]:
    return parse(node_parser, CONTRACT_FILE)


def test_the_parser_finds_no_error_nor_warning(parsed: dict[str, Any]) -> None:
    serious = [d for d in parsed["diagnostics"] if d["severity"] in (ERROR, WARNING)]
    assert not serious, serious


def test_the_parser_would_catch_a_broken_document(node_parser: Path, tmp_path: Path) -> None:
    """The check can fail: a channel pointing at a message that does not exist."""
    broken = json.loads(CONTRACT_FILE.read_text())
    broken["channels"]["report.ready"]["messages"]["Message"]["$ref"] = "#/components/messages/x"
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(broken))
    errors = [d for d in parse(node_parser, path)["diagnostics"] if d["severity"] == ERROR]
    assert errors


def test_every_topic_and_each_tenants_partner_channel(parsed: dict[str, Any]) -> None:
    channels = {c["id"]: c for c in parsed["channels"]}
    assert set(TOPIC_MODELS) <= set(channels)
    for topic in PARTNER_TOPICS:
        partner = channels[f"partner.{topic}"]
        assert partner["address"] == f"partner.{{tenant}}.{topic}"
        assert partner["parameters"] == ["tenant"]


def test_every_message_has_its_headers_schema_and_key(parsed: dict[str, Any]) -> None:
    assert parsed["messages"] == len(TOPIC_MODELS)
    assert parsed["withHeaders"] == parsed["keyed"] == parsed["messages"]
    doc = json.loads(CONTRACT_FILE.read_text())
    headers = doc["components"]["schemas"]["CloudEventsHeaders"]
    assert {"ce_id", "ce_type", "ce_source", "ce_specversion", "ce_tenantid"} <= set(
        headers["required"]
    )
    links = doc["components"]["schemas"]["ReportLinks"]["properties"]
    assert all("Absolute URL" in p["description"] for p in links.values())


def test_the_broker_security_is_declared(parsed: dict[str, Any]) -> None:
    assert {"id": "scramSha512", "type": "scramSha512"} in parsed["securitySchemes"]
