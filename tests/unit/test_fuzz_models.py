"""Property tests of the case, opinion and event models against hostile input.

For arbitrary JSON (and, for events, arbitrary bytes) every entry point either
accepts the input or raises its documented error — pydantic `ValidationError`
for the models themselves, `shared.errors.PermanentError` (InvalidInput,
UnknownEventType) for intake's validation paths and `shared.consumer.decode_event`
— and never anything else. The error texts the services hand on (dead-letter
reasons, problem+json field errors) never quote a submitted value: the inputs
are seeded with a PHI canary and the texts are searched for it. Field *names*
(e.g. an unknown key in `extra_forbidden`) are echoed on purpose and are not
values, so generated keys never carry the canary.
"""

from __future__ import annotations

import json
from datetime import date
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from deploy.local.demo import opinion, sample_case
from services.intake import domain as intake_domain
from services.intake import handlers as intake_handlers
from services.reporting.domain import Addendum, ImagingReview, OpinionDraft, complete_opinion
from shared.consumer import decode_event, validation_reason
from shared.envelope import EventMeta
from shared.errors import InvalidInput, PermanentError, UnknownEventType
from shared.events import TOPIC_MODELS, CaseSubmission
from tests.unit.test_intake_fhir import fhir_bundle

CANARY = "Zelda Phi-Canary"
CANARY_DATE = "1933-03-03"
FUZZ = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)

# Values that carry PHI-like content, mixed with arbitrary ones.
phi_text = st.one_of(
    st.just(CANARY),
    st.just(CANARY_DATE),
    st.text(max_size=30).map(lambda s: f"{CANARY}{s}"),
    st.text(max_size=30).map(lambda s: f"{s}{CANARY_DATE}"),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=40),
    st.from_regex(r"\A\d{4}-\d{2}-\d{2}\Z"),  # the schema's date shape, real or not
    phi_text,
)
keys = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)),
    max_leaves=15,
)


def mutate(data: st.DataObject, doc: Any) -> Any:
    """`doc` with one node (found by a random walk) replaced, deleted or extended."""
    if isinstance(doc, dict) and doc and data.draw(st.booleans()):
        key = data.draw(st.sampled_from(sorted(doc)))
        return {**doc, key: mutate(data, doc[key])}
    if isinstance(doc, list) and doc and data.draw(st.booleans()):
        i = data.draw(st.integers(0, len(doc) - 1))
        return [*doc[:i], mutate(data, doc[i]), *doc[i + 1 :]]
    op = data.draw(st.sampled_from(["replace", "delete", "add"]))
    if op == "delete" and isinstance(doc, dict) and doc:
        key = data.draw(st.sampled_from(sorted(doc)))
        return {k: v for k, v in doc.items() if k != key}
    if op == "add" and isinstance(doc, dict):
        return {**doc, data.draw(keys): data.draw(json_values)}
    return data.draw(json_values)


def no_phi(*texts: object) -> None:
    joined = json.dumps(texts, default=str)
    assert CANARY not in joined and CANARY_DATE not in joined, joined


def exposed(exc: ValidationError) -> list[object]:
    """What our services show of a pydantic error (consumer reason, HTTP field errors)."""
    shown = [
        {"loc": e["loc"], "msg": e["msg"], "type": e["type"]}
        for e in exc.errors(include_input=False, include_url=False)
    ]
    return [validation_reason(exc), shown]


def phi_case() -> dict[str, Any]:
    case = sample_case("ext-fuzz", "Second opinion on brain MRI please.", "M1", "P1", "X", "Dx")
    case["patient"] = {**case["patient"], "name": CANARY, "birth_date": CANARY_DATE}
    return case


def test_the_phi_check_catches_pydantics_own_error_text() -> None:
    """The check has teeth: pydantic's default message quotes the input."""
    try:
        CaseSubmission.model_validate({**phi_case(), "urgency": CANARY})
    except ValidationError as exc:
        with pytest.raises(AssertionError):
            no_phi(str(exc))
        no_phi(*exposed(exc))
    else:
        raise AssertionError("an unknown urgency was accepted")


# ---------------------------------------------------------------- the case


@FUZZ
@given(st.data())
def test_case_submission_mutations_validate_or_fail_without_phi(data: st.DataObject) -> None:
    candidate = mutate(data, phi_case())
    try:
        CaseSubmission.model_validate(candidate)
    except ValidationError as exc:
        no_phi(*exposed(exc))
    try:
        submission = intake_handlers.validate_native(candidate)
    except InvalidInput as exc:
        no_phi(exc.detail, exc.errors)
        return
    # An accepted case must get through intake's rules (a 500 otherwise).
    intake_domain.assess(submission, date.today(), {})


@pytest.mark.parametrize(
    "field", ["birth_date", "treatment_start_date", "earlier_opinions.0.given_on"]
)
def test_a_date_of_the_right_shape_that_does_not_exist_is_a_field_error(field: str) -> None:
    case = phi_case()
    if field == "birth_date":
        case["patient"] = {**case["patient"], "birth_date": "1933-02-30"}
    elif field == "treatment_start_date":
        case["treatment_start_date"] = "1227-62-81"
    else:
        case["earlier_opinions"] = [{"reference": "case-1", "given_on": "2026-13-01"}]
    with pytest.raises(InvalidInput) as caught:
        intake_handlers.validate_native(case)
    assert any(field in e["loc"] for e in caught.value.errors)
    no_phi(caught.value.errors)


@FUZZ
@given(json_values)
def test_arbitrary_json_is_not_a_case_or_fails_cleanly(value: Any) -> None:
    try:
        intake_handlers.validate_native(value)
    except InvalidInput as exc:
        no_phi(exc.detail, exc.errors)


@FUZZ
@given(st.binary(max_size=200))
def test_arbitrary_bytes_as_an_http_body_are_malformed_not_a_crash(body: bytes) -> None:
    try:
        intake_handlers.validate_native(intake_handlers.decode_json(body))
    except PermanentError as exc:
        assert exc.status_code in (400, 422)


def phi_bundle() -> dict[str, Any]:
    bundle = fhir_bundle()
    for entry in bundle["entry"]:
        res = entry["resource"]
        if res["resourceType"] == "Patient":
            res["name"] = [{"family": CANARY, "given": ["Zelda"]}]
            res["birthDate"] = CANARY_DATE
    return bundle


def test_the_fhir_base_case_is_valid_and_carries_the_canary() -> None:
    submission = intake_handlers.validate_fhir(phi_bundle())
    assert CANARY in submission.patient.name and submission.patient.birth_date == CANARY_DATE


@settings(FUZZ, max_examples=120)
@given(st.data())
def test_fhir_mutations_map_or_fail_with_invalid_input_without_phi(data: st.DataObject) -> None:
    candidate = mutate(data, phi_bundle())
    try:
        intake_handlers.validate_fhir(candidate)
    except InvalidInput as exc:
        no_phi(exc.detail, exc.errors)


def test_an_entry_emptied_under_the_reason_reference_is_invalid_input() -> None:
    """Found by the fuzz test above: the entry a ServiceRequest's reasonReference
    names, its resource replaced with `{}`, escaped as an AttributeError (a bare
    Resource has no `code`) instead of answering with the problems."""
    bundle = phi_bundle()
    request = next(
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "ServiceRequest"
    )
    reason = request["reasonReference"][0]["reference"]
    (entry,) = [e for e in bundle["entry"] if e.get("fullUrl", "").endswith(reason)]
    entry["resource"] = {}
    try:
        intake_handlers.validate_fhir(bundle)
    except InvalidInput as exc:
        no_phi(exc.detail, exc.errors)


def test_an_entry_emptied_under_a_consents_organization_is_invalid_input() -> None:
    """Found by the fuzz test above: the providing Organization's entry replaced
    with `{}` escaped as an AttributeError (a bare Resource has no `identifier`)."""
    bundle = phi_bundle()
    consent = next(
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Consent"
    )
    org = consent["organization"][0]["reference"]
    (entry,) = [e for e in bundle["entry"] if e.get("fullUrl", "").endswith(org)]
    entry["resource"] = {}
    with pytest.raises(InvalidInput) as raised:
        intake_handlers.validate_fhir(bundle)
    assert any(str(e["loc"]).endswith(".organization") for e in raised.value.errors)
    no_phi(raised.value.detail, raised.value.errors)


# ---------------------------------------------------------------- the opinion


def phi_opinion() -> dict[str, Any]:
    op = opinion()
    op["diagnosis"] = f"{CANARY} has {CANARY_DATE}"
    return op


@FUZZ
@given(st.data(), st.sampled_from(["neuroradiology", "pathology", "oncology"]))
def test_opinion_mutations_validate_or_fail_without_phi(data: st.DataObject, sub: str) -> None:
    candidate = mutate(data, phi_opinion())
    try:
        draft = OpinionDraft.model_validate(candidate)
    except ValidationError as exc:
        no_phi(*exposed(exc))
        return
    try:
        complete_opinion(draft, sub)
    except InvalidInput as exc:
        no_phi(exc.detail, exc.errors)


@FUZZ
@given(json_values, st.sampled_from([OpinionDraft, ImagingReview, Addendum]))
def test_arbitrary_json_against_opinion_models(value: Any, model: type[BaseModel]) -> None:
    try:
        model.model_validate(value)
    except ValidationError as exc:
        no_phi(*exposed(exc))


# ---------------------------------------------------------------- every topic


def example(schema: dict[str, Any], defs: dict[str, Any]) -> Any:
    """A small valid instance of a pydantic JSON schema (good enough for our models)."""
    if "$ref" in schema:
        return example(defs[schema["$ref"].rsplit("/", 1)[1]], defs)
    if "anyOf" in schema:
        options = [s for s in schema["anyOf"] if s.get("type") != "null"]
        return example(options[0], defs)
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object":
        props = schema.get("properties", {})
        return {name: example(sub, defs) for name, sub in props.items()}
    if kind == "array":
        return [example(schema["items"], defs)] * max(schema.get("minItems", 0), 1)
    if kind == "integer":
        return int(schema.get("minimum", 1))
    if kind == "number":
        return 0.5
    if kind == "boolean":
        return True
    return string_example(schema)


def string_example(schema: dict[str, Any]) -> str:
    if schema.get("format") == "date-time":
        return "2026-01-01T00:00:00Z"
    pattern = schema.get("pattern", "")
    if pattern.startswith("^\\d{4}"):
        return "2026-01-01"
    if pattern.startswith("^("):
        return str(pattern[2:].split("|")[0].split(")")[0])
    return "x" * max(schema.get("minLength", 1), 10)


def valid_body(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema()
    body: dict[str, Any] = example(schema, schema.get("$defs", {}))
    body["tenant_id"] = "tenant-a"
    return body


def meta_for(model: type[BaseModel], tenant: str = "tenant-a") -> EventMeta:
    ce_type = model.ce_type()  # type: ignore[attr-defined]
    return EventMeta(event_id="e1", ce_type=ce_type, source="/t", time="", tenant_id=tenant)


TOPICS = sorted(TOPIC_MODELS)


def test_the_generated_body_of_every_topic_is_valid() -> None:
    for topic in TOPICS:
        model = TOPIC_MODELS[topic]
        body = json.dumps(valid_body(model)).encode()
        assert decode_event(model, meta_for(model), body).tenant_id == "tenant-a"  # type: ignore[attr-defined]


@settings(FUZZ, max_examples=200)
@given(st.data(), st.sampled_from(TOPICS))
def test_decode_event_mutations_decode_or_raise_permanent_without_phi(
    data: st.DataObject, topic: str
) -> None:
    model = TOPIC_MODELS[topic]
    body = json.dumps(mutate(data, valid_body(model))).encode()
    try:
        decode_event(model, meta_for(model), body)
    except PermanentError as exc:
        no_phi(exc.detail, str(exc))


@settings(FUZZ, max_examples=200)
@given(st.binary(max_size=300), st.sampled_from(TOPICS))
def test_decode_event_of_arbitrary_bytes_raises_permanent(body: bytes, topic: str) -> None:
    model = TOPIC_MODELS[topic]
    try:
        decode_event(model, meta_for(model), body)
    except PermanentError as exc:
        assert exc.detail


@FUZZ
@given(st.sampled_from(TOPICS), st.text(max_size=60))
def test_decode_event_refuses_any_other_type_or_version(topic: str, ce_type: str) -> None:
    model = TOPIC_MODELS[topic]
    meta = EventMeta(event_id="e", ce_type=ce_type, source="/t", time="", tenant_id="")
    body = json.dumps(valid_body(model)).encode()
    if ce_type == model.ce_type():  # type: ignore[attr-defined]
        return
    try:
        decode_event(model, meta, body)
    except UnknownEventType:
        return
    raise AssertionError(f"{ce_type!r} accepted for {topic}")


@FUZZ
@given(st.sampled_from(TOPICS), keys)
def test_decode_event_refuses_a_body_of_another_tenant(topic: str, tenant: str) -> None:
    model = TOPIC_MODELS[topic]
    body = json.dumps(valid_body(model)).encode()
    if tenant == "tenant-a":
        return
    try:
        decode_event(model, meta_for(model, tenant), body)
    except PermanentError as exc:
        assert "tenant" in exc.detail
        return
    raise AssertionError("tenant mismatch accepted")
