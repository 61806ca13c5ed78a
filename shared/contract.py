"""The published contract for integrators and partners: an AsyncAPI 3.0
document generated from the topic models of shared/events.py.

    python -m shared.contract            # rewrite docs/asyncapi.json
    python -m shared.contract --check    # exit 1 if the committed file is stale

Each channel is one topic, keyed by case_id, carrying a CloudEvents 1.0
binary-mode event whose ``ce_type`` names the topic and schema version.
FastStream writes the channels and payload schemas from the topic models; this
module adds what it does not know: the CloudEvents headers as a schema, the
message key (Kafka message binding), the production server and its security
(SASL SCRAM-SHA-512 over TLS, as deploy/k8s deploys it) and the per-tenant
partner channels (`partner.{tenant}.<topic>`, shared.events.PARTNER_TOPICS).
docs/contracts.md is the integrator's and partner's reading of it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from faststream import FastStream
from faststream.kafka import KafkaBroker
from faststream.specification import AsyncAPI

from shared.envelope import REQUIRED_HEADERS
from shared.events import (
    PARTNER_PREFIX,
    PARTNER_TOPICS,
    TENANT_ID_PATTERN,
    TOPIC_MODELS,
    dead_letter_topic,
)
from shared.settings import REPO_ROOT

CONTRACT_FILE = REPO_ROOT / "docs" / "asyncapi.json"
ENVELOPE = (
    "Message key: case_id (case.submitted: the integrator's external_id). CloudEvents 1.0 "
    "binary mode: headers ce_specversion=1.0, ce_id, ce_type={ce_type}, ce_source, ce_time, "
    "ce_tenantid, content-type=application/json, traceparent (W3C). Messages that cannot be "
    "processed are moved to {dlq} with a dlq_reason header."
)


def build_contract() -> dict[str, object]:
    broker = KafkaBroker("kafka:9092", description="Second-opinion case router topics")
    for topic in sorted(TOPIC_MODELS):
        model = TOPIC_MODELS[topic]
        doc = (model.__doc__ or "").strip()
        envelope = ENVELOPE.format(ce_type=model.ce_type(), dlq=dead_letter_topic(topic))  # type: ignore[attr-defined]
        broker.publisher(
            topic, schema=model, title=topic, description=f"{doc}\n\n{envelope}".strip()
        )
    spec = AsyncAPI(broker, title="Second-opinion case router", version="1.0.0")
    FastStream(broker, specification=spec)
    document: dict[str, Any] = json.loads(spec.to_specification().to_json())
    add_envelope(document)
    add_security(document)
    add_partner_channels(document)
    return document


# The binary-mode CloudEvents headers every message carries (shared/envelope.py).
CLOUDEVENTS_HEADERS: dict[str, Any] = {
    "title": "CloudEventsHeaders",
    "description": (
        "CloudEvents 1.0 Kafka protocol binding, binary content mode: the event's "
        "attributes are record headers (UTF-8), the data is the record value."
    ),
    "type": "object",
    # What a consumer refuses an event without (the router's events carry all of
    # the properties below but dlq_reason).
    "required": list(REQUIRED_HEADERS),
    "properties": {
        "ce_specversion": {"type": "string", "const": "1.0"},
        "ce_id": {
            "type": "string",
            "maxLength": 128,
            "description": "Unique per event; a consumer skips an id it has processed.",
        },
        "ce_type": {
            "type": "string",
            "pattern": r"^org\.secondopinion\.[a-z_.]+\.v[0-9]+$",
            "description": "The topic and the payload schema's major version.",
        },
        "ce_source": {
            "type": "string",
            "maxLength": 256,
            "description": "URI-reference of the emitting service or integrator.",
        },
        "ce_time": {
            "type": "string",
            "format": "date-time",
            "description": "When the event happened (always set by the router).",
        },
        "ce_tenantid": {
            "type": "string",
            "pattern": TENANT_ID_PATTERN,
            "description": "The tenant the case belongs to (CloudEvents extension).",
        },
        "content-type": {"type": "string", "const": "application/json"},
        "traceparent": {
            "type": "string",
            "pattern": "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
            "description": "W3C Trace Context of the emitting operation.",
        },
        "dlq_reason": {
            "type": "string",
            "description": "Only on a dead-letter topic: why the message was not processed.",
        },
    },
}
KAFKA_BINDING = "0.4.0"


def _message_key(topic: str) -> dict[str, Any]:
    if topic == "case.submitted":
        return {
            "type": "string",
            "maxLength": 128,
            "description": "The integrator's external_id (orders one case's submissions).",
        }
    return {
        "type": "string",
        "maxLength": 128,
        "description": "case_id: every event of one case is on one partition, in order.",
    }


def add_envelope(document: dict[str, Any]) -> None:
    """Each message: the CloudEvents headers (its own ce_type fixed) and its key."""
    components = document["components"]
    components["schemas"]["CloudEventsHeaders"] = CLOUDEVENTS_HEADERS
    for topic, model in TOPIC_MODELS.items():
        message = components["messages"][f"{topic}:Message"]
        message.pop("correlationId", None)  # FastStream's own header, not ours
        message["headers"] = {
            "allOf": [
                {"$ref": "#/components/schemas/CloudEventsHeaders"},
                {
                    "type": "object",
                    "properties": {"ce_type": {"type": "string", "const": model.ce_type()}},  # type: ignore[attr-defined]
                },
            ]
        }
        message["contentType"] = "application/json"
        message["bindings"] = {
            "kafka": {"bindingVersion": KAFKA_BINDING, "key": _message_key(topic)}
        }


def add_security(document: dict[str, Any]) -> None:
    """The deployed broker: the TLS listener, SASL SCRAM-SHA-512, one Kafka user
    per service and per partner tenant (deploy/kafka_acls.py)."""
    components = document["components"]
    components["securitySchemes"] = {
        "scramSha512": {
            "type": "scramSha512",
            "description": (
                "SASL SCRAM-SHA-512 over TLS (security.protocol=SASL_SSL). A partner "
                "tenant's user may read only topics and consumer groups under "
                "`partner.<tenant>.`; each service's user only what it consumes and "
                "produces (deploy/k8s/base/kafka-*-users.yaml)."
            ),
        }
    }
    servers = document["servers"]
    servers["development"]["description"] = (
        "The local broker of `make run` (deploy/local): PLAINTEXT, no authentication."
    )
    servers["production"] = {
        "host": "kafka-kafka-bootstrap.kafka.svc:9093",
        "protocol": "kafka-secure",
        "protocolVersion": "3.9",
        "description": "The deployed cluster's TLS listener (deploy/k8s/base/config.yaml).",
        "security": [{"$ref": "#/components/securitySchemes/scramSha512"}],
    }
    for channel in document["channels"].values():
        channel["servers"] = [
            {"$ref": "#/servers/development"},
            {"$ref": "#/servers/production"},
        ]


def add_partner_channels(document: dict[str, Any]) -> None:
    """`partner.{tenant}.<topic>`: the tenant's own copy of each partner-facing
    event, the only topics a partner's Kafka user may read."""
    for topic in PARTNER_TOPICS:
        name = f"{PARTNER_PREFIX}{topic}"
        message = f"{topic}:Message"
        document["channels"][name] = {
            "address": f"{PARTNER_PREFIX}{{tenant}}.{topic}",
            "title": name,
            "description": (
                f"One partner tenant's `{topic}` events, and no other tenant's: the same "
                f"messages as `{topic}` (same key, headers and payload), published by the "
                "router's outbox for the tenant of each case. The tenant's Kafka user reads "
                f"it with a consumer group under `{PARTNER_PREFIX}{{tenant}}.` "
                '(docs/contracts.md, "Consuming a partner channel").'
            ),
            "parameters": {
                "tenant": {
                    "description": (
                        f"The partner's tenant id ({TENANT_ID_PATTERN}; no dot, so no "
                        "tenant's prefix covers another's channel)."
                    ),
                    "examples": ["demo-health"],
                }
            },
            "messages": {"Message": {"$ref": f"#/components/messages/{message}"}},
            "servers": [{"$ref": "#/servers/development"}, {"$ref": "#/servers/production"}],
        }
        document["operations"][name] = {
            "action": "send",
            "title": f"Publish {name}",
            "channel": {"$ref": f"#/channels/{name}"},
            "messages": [{"$ref": f"#/channels/{name}/messages/Message"}],
            "security": [{"$ref": "#/components/securitySchemes/scramSha512"}],
        }


def render() -> str:
    return json.dumps(build_contract(), indent=1, sort_keys=True) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    text = render()
    if args.check:
        current = CONTRACT_FILE.read_text() if CONTRACT_FILE.exists() else ""
        sys.exit(0 if current == text else 1)
    Path(CONTRACT_FILE).parent.mkdir(parents=True, exist_ok=True)
    CONTRACT_FILE.write_text(text)


if __name__ == "__main__":
    main()
