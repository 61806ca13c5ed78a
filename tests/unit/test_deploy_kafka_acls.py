"""The production Kafka users (deploy/k8s/base/kafka-service-users.yaml) follow
from the code: each service reads exactly what it subscribes to, joins only its
own groups, and writes only what it owns (one producer per topic, as
docs/architecture.md's ownership table says) plus its dead-letter topics."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy import kafka_acls
from shared.events import dead_letter_topic, partner_topic

ROOT = Path(__file__).resolve().parents[2]


def users(path: Path = kafka_acls.OUTPUT) -> dict[str, list[dict[str, Any]]]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == "KafkaUser"]
    return {d["metadata"]["name"]: d["spec"]["authorization"]["acls"] for d in docs}


def test_the_committed_file_is_what_the_code_implies() -> None:
    for path, make in kafka_acls.OUTPUTS.items():
        assert path.read_text() == make(), (
            f"run `python -m deploy.kafka_acls` ({path.name} is out of date)"
        )


def test_each_partner_tenant_reads_only_its_own_channel() -> None:
    found = users(kafka_acls.PARTNER_OUTPUT)
    tenants = kafka_acls.partner_tenants()
    assert set(found) == {f"partner-{t}" for t in tenants}
    for tenant in tenants:
        acls = found[f"partner-{tenant}"]
        assert {(a["resource"]["type"], a["resource"]["name"]) for a in acls} == {
            ("topic", f"partner.{tenant}."),
            ("group", f"partner.{tenant}."),
        }
        assert all(a["resource"]["patternType"] == "prefix" for a in acls)
        assert all(set(a["operations"]) <= {"Read", "Describe"} for a in acls)
        # The prefix ends at the tenant's dot: it covers no other tenant's channel.
        for other in tenants:
            if other != tenant:
                assert not partner_topic(other, "report.ready").startswith(f"partner.{tenant}.")


def test_a_tenant_id_that_could_widen_a_prefix_names_no_channel() -> None:
    for bad in ("acme.eu", "Acme", "acme_eu", "-acme", "acme-", "", "a" * 64, "acme*"):
        with pytest.raises(ValueError):
            partner_topic(bad, "report.ready")
    assert partner_topic("acme-eu", "report.ready") == "partner.acme-eu.report.ready"


def test_each_service_reads_what_it_consumes_and_writes_what_it_owns() -> None:
    found = users()
    assert set(found) == {f"router-{s.replace('_', '-')}" for s in kafka_acls.SERVICES}
    for service in kafka_acls.SERVICES:
        acls = found[f"router-{service.replace('_', '-')}"]
        reads = {a["resource"]["name"] for a in acls if "Read" in a["operations"]}
        writes = {a["resource"]["name"] for a in acls if "Write" in a["operations"]}
        consumed = set(kafka_acls.consumed_topics(service))
        assert reads == consumed | {f"router.{service}."}
        partner = {"partner."} if service in kafka_acls.PARTNER_PUBLISHERS else set()
        assert writes == set(kafka_acls.PRODUCES[service]) | partner | {
            dead_letter_topic(t) for t in consumed
        }
        assert not any(a["resource"]["name"] == "*" for a in acls)


def test_every_topic_has_one_producer_and_the_architecture_table_agrees() -> None:
    owners = Counter(t for topics in kafka_acls.PRODUCES.values() for t in topics)
    assert [t for t, n in owners.items() if n > 1] == []
    table = (ROOT / "docs" / "architecture.md").read_text()
    for service, topics in kafka_acls.PRODUCES.items():
        row = re.search(rf"^\| {service} \|.*$", table, re.M)
        assert row, service
        produces_cell = row.group(0).rstrip(" |").rsplit("|", 1)[-1]
        assert set(re.findall(r"`([a-z.]+)`", produces_cell)) == set(topics), service
