"""Every event is bounded by construction (docs/security.md): the contract's field
and list bounds give each topic a worst-case size below what the outbox relay
publishes, so no accepted input can produce an event the broker refuses."""

from __future__ import annotations

import json
import typing
from datetime import UTC, datetime
from enum import Enum
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from shared.bounds import _max_len, _split, max_json_bytes
from shared.events import TOPIC_MODELS, CaseRejected, CaseSubmission, CaseUnassignable, FieldError
from shared.store import MAX_EVENT_BYTES

WORST_CHAR = "\x00"  # escaped as \u0000: the most bytes a character takes in JSON


def _fill(tp: Any, metadata: list[Any]) -> Any:
    """The largest value the contract allows for a field of type `tp`."""
    tp, more = _split(tp)
    metadata = [*metadata, *more]
    origin = typing.get_origin(tp)
    if origin in (typing.Union, __import__("types").UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        return max(
            (_fill(a, metadata) for a in options), key=lambda v: len(json.dumps(v, default=str))
        )
    if isinstance(tp, type) and issubclass(tp, Enum):
        return max((m.value for m in tp), key=len)
    if tp is str:
        return WORST_CHAR * (_max_len(metadata) or 0)
    if tp in (int, float):
        return 10**15
    if tp is bool:
        return False
    if tp is datetime:
        return datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=UTC).isoformat()
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return worst_case(tp)
    if origin is list:
        (item,) = typing.get_args(tp)
        return [_fill(item, []) for _ in range(_max_len(metadata) or 0)]
    if origin is dict:
        _, value = typing.get_args(tp)
        n = _max_len(metadata) or 0
        return {f"{WORST_CHAR * 58}{i:06d}": _fill(value, []) for i in range(n)}
    raise AssertionError(f"no filler for {tp!r}")


def worst_case(model: type[BaseModel]) -> dict[str, Any]:
    return {
        name: _fill(info.annotation, list(info.metadata))
        for name, info in model.model_fields.items()
    }


@pytest.mark.parametrize("topic", sorted(TOPIC_MODELS))
def test_every_topic_has_a_worst_case_size_below_what_the_relay_publishes(topic: str) -> None:
    bound = max_json_bytes(TOPIC_MODELS[topic])  # raises on any unbounded field
    assert bound < MAX_EVENT_BYTES


@pytest.mark.parametrize("topic", sorted(TOPIC_MODELS))
def test_the_computed_bound_holds_for_the_largest_event_the_contract_allows(topic: str) -> None:
    body = worst_case(TOPIC_MODELS[topic])
    size = len(json.dumps(body, ensure_ascii=False).encode())
    assert size <= max_json_bytes(TOPIC_MODELS[topic])
    assert size < MAX_EVENT_BYTES


def _submission(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "external_id": "ext-1",
        "patient": {"name": "A B", "birth_date": "1970-01-01", "jurisdiction": "US-CA"},
        "question": "Is the diagnosis right?",
        "first_opinion": {"diagnosis": "x"},
        "records": [
            {"provider_id": "p1", "patient_id": "MRN-1", "kinds": ["imaging"], "authorized": True}
        ],
    }
    base.update(changes)
    return base


def test_the_reviews_oversized_submissions_are_refused_on_the_field() -> None:
    """The outside review's inputs: 240,000 affiliations (a 960 kB body) and a
    330,000-character value of 'é' (2 MB once escaped)."""
    with pytest.raises(ValidationError) as many:
        CaseSubmission.model_validate(
            _submission(first_opinion={"diagnosis": "x", "affiliations": ["a"] * 240_000})
        )
    assert any(e["loc"][:2] == ("first_opinion", "affiliations") for e in many.value.errors())
    with pytest.raises(ValidationError) as long:
        CaseSubmission.model_validate(
            _submission(first_opinion={"diagnosis": "x", "institution": "é" * 330_000})
        )
    assert long.value.errors()[0]["loc"] == ("first_opinion", "institution")


@pytest.mark.parametrize(
    "patient_id", ["1,Patient/2", "*", "12?", "a\\b", "../x", "a b", "", "x" * 65, "Patient/2"]
)
def test_a_patient_id_that_is_not_one_plain_value_is_refused(patient_id: str) -> None:
    records = [
        {"provider_id": "p1", "patient_id": patient_id, "kinds": ["imaging"], "authorized": True}
    ]
    with pytest.raises(ValidationError):
        CaseSubmission.model_validate(_submission(records=records))


def test_what_a_service_writes_from_unbounded_data_is_clipped_not_refused() -> None:
    roster = {f"rev-{n}": "at capacity " * 100 for n in range(1000)}
    event = CaseUnassignable(
        case_id="c1",
        tenant_id="t1",
        subspecialty="neuroradiology",
        reason="r" * 5000,
        excluded=roster,
    )
    assert len(event.excluded) == 100
    assert all(len(why) <= 300 for why in event.excluded.values())
    assert len(event.reason) == 1000 and event.reason.endswith("…")
    errors = [FieldError(loc="x" * 900, msg="m", type="t") for _ in range(400)]
    rejected = CaseRejected(case_id="c1", tenant_id="t1", external_id="e", errors=errors)
    assert len(rejected.errors) == 50 and len(rejected.errors[0].loc) == 200
