"""The published contract for integrators and partners: an AsyncAPI 3.0
document generated from the topic models of shared/events.py.

    python -m shared.contract            # rewrite docs/asyncapi.json
    python -m shared.contract --check    # exit 1 if the committed file is stale

Each channel is one topic, keyed by case_id, carrying a CloudEvents 1.0
binary-mode event whose ``ce_type`` names the topic and schema version.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from faststream import FastStream
from faststream.kafka import KafkaBroker
from faststream.specification import AsyncAPI

from shared.events import TOPIC_MODELS, dead_letter_topic
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
    document: dict[str, object] = json.loads(spec.to_specification().to_json())
    return document


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
