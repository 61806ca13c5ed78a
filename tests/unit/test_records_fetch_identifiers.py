"""Issue 15, finding 2: identifiers records_fetch sends to a provider, and the
check that what comes back is the patient's (services.records_fetch.identifiers,
providers). With httpx.MockTransport: every request made is seen."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.records_fetch import identifiers, providers
from services.records_fetch.domain import within_base
from services.records_fetch.identifiers import RefusedIdentifier
from shared.errors import UnregisteredEndpoint
from shared.events import RecordKind

PACS = "http://pacs.test/dicom-web"
FHIR = "http://fhir.test/r4"


class Recorder:
    """A peer that answers `answer(request)` and remembers every request."""

    def __init__(self, answer: Any = None) -> None:
        self.requests: list[httpx.Request] = []
        self.answer = answer or (lambda r: httpx.Response(200, json=[]))

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.answer(request)

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(self), follow_redirects=False)


def query_of(request: httpx.Request) -> dict[str, list[str]]:
    return parse_qs(urlsplit(str(request.url)).query, keep_blank_values=True)


@pytest.mark.parametrize(
    "patient_id",
    ["p1,Patient/p2", "p1%2CPatient/p2", "p1|p2", "p 1", "", "a" * 65, "p1/../p2", "p1&x=y"],
)
async def test_a_fhir_patient_id_outside_the_id_grammar_is_refused_before_any_request(
    patient_id: str,
) -> None:
    peer = Recorder()
    async with peer.client() as c:
        with pytest.raises(RefusedIdentifier):
            await providers.search_fhir(c, FHIR, patient_id, RecordKind.LABS)
    assert peer.requests == []


@pytest.mark.parametrize(
    "patient_id", ["*", "MRN*", "MRN?1", "MRN\\OTHER", "MRN,OTHER", " MRN", "MRN\n", ""]
)
async def test_a_qido_patient_id_with_wildcards_or_lists_is_refused_before_any_request(
    patient_id: str,
) -> None:
    peer = Recorder()
    async with peer.client() as c:
        with pytest.raises(RefusedIdentifier):
            await providers.find_studies(c, PACS, patient_id)
    assert peer.requests == []


def study(pid: str, uid: str = "1.2.3") -> dict[str, Any]:
    return {
        "0020000D": {"vr": "UI", "Value": [uid]},
        "00100020": {"vr": "LO", "Value": [pid]},
        "00080061": {"vr": "CS", "Value": ["MR"]},
        "00201208": {"vr": "IS", "Value": [1]},
    }


async def test_studies_of_another_patient_or_with_bad_uids_are_refused() -> None:
    answer = [
        study("MRN-1"),
        study("MRN-2", "1.2.4"),
        study("MRN-1", "1.2.3/../../tools/reset"),
        {k: v for k, v in study("MRN-1", "1.2.5").items() if k != "00100020"},  # no patient
    ]
    peer = Recorder(lambda r: httpx.Response(200, json=answer))
    async with peer.client() as c:
        found = await providers.find_studies(c, PACS, "MRN-1")
    assert [s.study_uid for s in found.items] == ["1.2.3"]
    assert [r.reason for r in found.refused] == [
        "study of another patient",
        "study UID not of the UID grammar",
        "study of another patient",
    ]
    # The refusal names no identifier of the other patient.
    assert not any("MRN-2" in repr(r) or "1.2.4" in repr(r) for r in found.refused)


async def test_instances_with_uids_outside_the_grammar_are_never_requested() -> None:
    def instance(series: str, sop: str, pid: str = "MRN-1") -> dict[str, Any]:
        return {
            "0020000E": {"vr": "UI", "Value": [series]},
            "00080018": {"vr": "UI", "Value": [sop]},
            "00100020": {"vr": "LO", "Value": [pid]},
        }

    answer = [
        instance("1.2", "1.2.3"),
        instance("1.2", "../../tools/reset"),
        instance("1.2/..", "1.2.4"),
        instance("1.2", "1.2.5", pid="MRN-2"),
    ]
    peer = Recorder(lambda r: httpx.Response(200, json=answer))
    async with peer.client() as c:
        found = await providers.find_instances(c, PACS, "1.2.840", "MRN-1")
        with pytest.raises(RefusedIdentifier):
            await providers.find_instances(c, PACS, "1.2.840/../../tools", "MRN-1")
        with pytest.raises(RefusedIdentifier):
            bad = providers.QidoInstance("1.2", "1.2", "1.2/../../tools/reset", "MR")
            await providers.retrieve_instance(c, PACS, bad, None)  # type: ignore[arg-type]
    assert [i.sop_uid for i in found.items] == ["1.2.3"]
    assert len(found.refused) == 3
    assert [r.url.path for r in peer.requests] == ["/dicom-web/studies/1.2.840/instances"]


@pytest.mark.parametrize(
    "uid", ["1.2.3", "0", "1.2.840.10008.5.1.4.1.1.4", "1" * 64, "1." + "2" * 62]
)
def test_uids_of_the_grammar_pass(uid: str) -> None:
    assert identifiers.dicom_uid(uid) == uid


@pytest.mark.parametrize(
    "uid", ["", "1..2", ".1", "1.", "1.2a", "1.2/3", "1" * 65, "1.2 ", "\u0661.\u0662", None, 12]
)
def test_uids_outside_the_grammar_are_refused(uid: object) -> None:
    with pytest.raises(RefusedIdentifier):
        identifiers.dicom_uid(uid)


async def test_fhir_resources_of_another_patient_are_refused() -> None:
    mine = {"resourceType": "Observation", "id": "a", "subject": {"reference": "Patient/p1"}}
    entries = [
        mine,
        {"resourceType": "Observation", "id": "b", "subject": {"reference": "Patient/p2"}},
        {"resourceType": "Observation", "id": "c"},  # names no patient
        {"resourceType": "Observation", "id": "d", "subject": {"reference": "Group/p1"}},
        {"resourceType": "Patient", "id": "p2"},
        {"resourceType": "OperationOutcome"},
        {**mine, "id": "e", "subject": {"reference": f"{FHIR}/Patient/p1/_history/2"}},
    ]
    peer = Recorder(
        lambda r: httpx.Response(200, json={"entry": [{"resource": e} for e in entries]})
    )
    async with peer.client() as c:
        found = await providers.search_fhir(c, FHIR, "p1", RecordKind.LABS)
    assert [r["id"] for r in found.items] == ["a", "e"]
    assert [(r.reason, r.resource_type) for r in found.refused] == [
        ("resource of another patient", "Observation"),
        ("resource of another patient", "Observation"),
        ("resource of another patient", "Observation"),
        ("not a Observation", "Patient"),
    ]
    [request] = peer.requests
    assert query_of(request)["subject"] == ["Patient/p1"]


@pytest.mark.parametrize(
    "link",
    [
        "http://fhir.test/r4/../admin/reset",
        "http://fhir.test/r4/%2e%2e/admin",
        "http://fhir.test/r4/a%2Fb",
        "http://fhir.test:8080/r4/Observation?page=2",
        "https://fhir.test/r4/Observation?page=2",
        "http://evil.test/r4/Observation?page=2",
        "http://fhir.test/r4evil/Observation",
        "http://user@fhir.test/r4/Observation",
        "http://fhir.test/Observation?page=2",
    ],
)
async def test_a_next_link_off_the_registered_origin_or_base_path_is_refused(link: str) -> None:
    def page(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"entry": [], "link": [{"relation": "next", "url": link}]})

    peer = Recorder(page)
    async with peer.client() as c:
        with pytest.raises(UnregisteredEndpoint):
            await providers.search_fhir(c, FHIR, "p1", RecordKind.LABS)
    assert len(peer.requests) == 1
    assert not within_base(link, FHIR)


# ---------------------------------------------------------------- the property


def sent_values(request: httpx.Request, key: str) -> list[str]:
    return query_of(request).get(key, [])


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80) | st.from_regex(r"[A-Za-z0-9.\-_,*?\\/ ]{1,70}", fullmatch=True))
async def test_any_identifier_is_refused_or_sent_as_exactly_one_escaped_value(
    patient_id: str,
) -> None:
    """Whatever the id: no request at all, or one request whose query carries the id
    as exactly one value, equal to the id, holding no search operator."""
    for search in ("qido", "fhir"):
        peer = Recorder(lambda r: httpx.Response(200, json=[] if "studies" in r.url.path else {}))
        async with peer.client() as c:
            try:
                if search == "qido":
                    await providers.find_studies(c, PACS, patient_id)
                else:
                    await providers.search_fhir(c, FHIR, patient_id, RecordKind.NOTES)
            except RefusedIdentifier:
                assert peer.requests == []
                continue
        [request] = peer.requests
        key, want = ("PatientID", patient_id) if search == "qido" else ("subject", "")
        values = sent_values(request, key)
        assert len(values) == 1
        if search == "fhir":
            want = f"Patient/{patient_id}"
        assert values[0] == want
        assert not set(patient_id) & set(",*?\\|&=#%/ ")
        # Nothing of the id leaks into the path or adds a parameter.
        assert request.url.path in ("/dicom-web/studies", "/r4/DocumentReference")
        assert set(query_of(request)) == {key, "includefield" if search == "qido" else "_count"}
