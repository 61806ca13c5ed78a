"""The shared package: envelope, store guard, redaction, auth, event decoding."""

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from shared import auth
from shared.consumer import decode_event, validation_reason
from shared.envelope import EventMeta, ce_headers, outbox_entry
from shared.errors import PermanentError, ProviderUnavailable, UnknownEventType, is_retryable
from shared.events import ALL_TOPICS, TOPIC_MODELS, CaseRejected, CaseSubmission, FieldError
from shared.store import with_outbox
from shared.telemetry import redact_attributes


def rejected() -> CaseRejected:
    return CaseRejected(
        case_id="c1",
        tenant_id="t1",
        external_id="x",
        errors=[FieldError(loc="a", msg="b", type="c")],
    )


def test_every_topic_has_a_versioned_type_and_a_dead_letter_topic() -> None:
    for topic, model in TOPIC_MODELS.items():
        assert model.ce_type() == f"org.secondopinion.{topic}.v1"  # type: ignore[attr-defined]
        assert f"{topic}.dlq" in ALL_TOPICS


def test_headers_round_trip() -> None:
    h = ce_headers(event_id="e1", ce_type="org.x.v1", source="/s", tenant_id="t1")
    meta = EventMeta.from_headers({k: v.encode() for k, v in h.items()})
    assert (meta.event_id, meta.ce_type, meta.source, meta.tenant_id) == (
        "e1",
        "org.x.v1",
        "/s",
        "t1",
    )


def test_event_time_is_the_producers_and_defaults_when_absent_or_unreadable() -> None:
    sent = datetime(2026, 5, 6, 7, 8, 9, 123000, tzinfo=UTC)
    h = ce_headers(event_id="e1", ce_type="org.x.v1", source="/s", tenant_id="t1", time=sent)
    meta = EventMeta.from_headers({k: v.encode() for k, v in h.items()})
    fallback = datetime(2000, 1, 1, tzinfo=UTC)
    assert meta.occurred_at(fallback) == sent
    plus_two = EventMeta("e", "t", "s", "2026-05-06T09:08:09+02:00", "t1")
    assert plus_two.occurred_at(fallback) == sent.replace(microsecond=0)
    assert plus_two.occurred_at(fallback).tzinfo == timezone(timedelta(hours=2))
    naive = EventMeta("e", "t", "s", "2026-05-06T07:08:09", "t1")  # read as UTC
    assert naive.occurred_at(fallback) == sent.replace(microsecond=0)
    for bad in ("", "yesterday"):
        assert EventMeta("e", "t", "s", bad, "t1").occurred_at(fallback) == fallback


def test_missing_ce_headers_are_refused() -> None:
    with pytest.raises(UnknownEventType, match="ce_id"):
        EventMeta.from_headers({"ce_type": "x", "ce_source": "s", "ce_specversion": "1.0"})


def meta_for(ce_type: str, tenant: str = "t1") -> EventMeta:
    return EventMeta(event_id="e", ce_type=ce_type, source="s", time="", tenant_id=tenant)


def test_decode_refuses_unknown_version_bad_types_and_tenant_mismatch() -> None:
    body = rejected().model_dump_json().encode()
    assert decode_event(CaseRejected, meta_for(CaseRejected.ce_type()), body) == rejected()
    with pytest.raises(UnknownEventType):
        decode_event(CaseRejected, meta_for("org.secondopinion.case.rejected.v9"), body)
    with pytest.raises(PermanentError, match="errors"):
        bad = json.dumps({"case_id": "c1", "tenant_id": "t1", "external_id": "x", "errors": 5})
        decode_event(CaseRejected, meta_for(CaseRejected.ce_type()), bad.encode())
    with pytest.raises(PermanentError, match="tenant"):
        decode_event(CaseRejected, meta_for(CaseRejected.ce_type(), tenant="t2"), body)
    with pytest.raises(PermanentError):
        decode_event(CaseRejected, meta_for(CaseRejected.ce_type()), b"\xff\x00not json")


def test_validation_reason_never_quotes_the_input() -> None:
    with pytest.raises(ValidationError) as info:
        CaseSubmission.model_validate(
            {
                "external_id": "x",
                "patient": {"name": "Jane Secret-Name", "birth_date": "12/04/1961"},
            }
        )
    reason = validation_reason(info.value)
    assert "patient.birth_date" in reason
    assert "Jane Secret-Name" not in reason and "12/04/1961" not in reason


def test_guard_adds_applied_id_and_outbox_to_the_same_update() -> None:
    entry = outbox_entry(rejected())
    update = with_outbox({"$set": {"a": 1}, "$push": {"h": 1}}, [entry], "e1")
    assert update["$set"] == {"a": 1, "has_outbox": True}
    assert update["$push"]["h"] == 1
    assert update["$push"]["applied"]["$each"] == ["e1"]
    assert update["$push"]["outbox"]["$each"][0]["id"] == entry.id
    assert with_outbox({"$set": {"a": 1}}, []) == {"$set": {"a": 1}}


def test_redaction_removes_query_strings_and_statements() -> None:
    out = redact_attributes(
        {
            "http.url": "http://pacs/dicom-web/studies?PatientID=MRN-1001",
            "url.query": "PatientID=MRN-1001",
            "db.statement": "find {'name': 'Jane'}",
            "messaging.kafka.message.key": b"case-1",
            "http.method": "GET",
        }
    )
    assert out == {
        "http.url": "http://pacs/dicom-web/studies",
        "messaging.kafka.message.key": "case-1",
        "http.method": "GET",
    }


def test_api_keys_are_checked_against_their_hash() -> None:
    key, record = auth.issue("k1", "t1", "integrator", "t1")
    assert key not in record.model_dump_json()
    creds = auth.Credentials([record])
    assert creds.authenticate(key).tenant_id == "t1"
    for bad in ("k1.wrong", "k2." + key.split(".", 1)[1], "garbage", ""):
        with pytest.raises(auth.Unauthorized):
            creds.authenticate(bad)


def test_error_tree_classifies_transient_failures() -> None:
    from pymongo.errors import AutoReconnect

    assert is_retryable(ProviderUnavailable("down"))
    assert is_retryable(AutoReconnect("gone"))
    assert not is_retryable(PermanentError("bad"))
    assert not is_retryable(ValueError("bug"))
