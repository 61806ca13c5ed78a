"""The committed AsyncAPI contract matches the topic models."""

from shared.contract import CONTRACT_FILE, build_contract, render
from shared.events import PARTNER_TOPICS, TOPIC_MODELS


def test_every_topic_is_a_channel_with_its_schema() -> None:
    doc = build_contract()
    channels = doc["channels"]
    assert isinstance(channels, dict)
    assert set(channels) == set(TOPIC_MODELS) | {f"partner.{t}" for t in PARTNER_TOPICS}
    assert "ce_type=org.secondopinion.case.accepted.v1" in channels["case.accepted"]["description"]


def test_committed_contract_is_up_to_date() -> None:
    assert CONTRACT_FILE.read_text() == render(), "run: python -m shared.contract"
