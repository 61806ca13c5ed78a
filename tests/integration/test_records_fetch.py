"""records_fetch against the real PACS (Orthanc, DICOMweb), the real FHIR peer and
the real Mongo-wire server: the manifest of a complete case, of a case missing
imaging, of a case whose PACS sends a corrupt instance, whole-slide images, and
a PACS that goes down mid-retrieval and comes back (no instance fetched twice).

Corruption and outage are made by a small HTTP proxy in front of the real
Orthanc (Orthanc itself refuses corrupt uploads and is shared by the session).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import json
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
import pytest_asyncio
from prometheus_client import REGISTRY
from pymongo.asynchronous.database import AsyncDatabase

from bench import studies
from deploy.local import seed
from services.records_fetch import archive as archives
from services.records_fetch import handlers
from services.records_fetch.archive import Archive, LocalArchive
from services.records_fetch.checker import Checker, took_too_long
from services.records_fetch.domain import ProviderEndpoints, ProviderRegistry, RetryPolicy
from services.records_fetch.retrieval import Retrieval
from services.records_fetch.store import FetchStore
from shared.auth import Principal
from shared.consumer import decode_event
from shared.envelope import EventMeta
from shared.errors import PermanentError
from shared.events import CaseAccepted, RecordsComplete, RecordsIncomplete
from shared.store import Doc

TENANT = "t-records"
FAST = RetryPolicy(base_seconds=0.0, max_delay_seconds=0.0, max_attempts=3)
OPS = Principal(key_id="ops", tenant_id="ops", role="operations", subject="ops")


SERIES_PATH = re.compile(r"/dicom-web/studies/[0-9.]+/series/[0-9.]+")


class PacsProxy:
    """Forwards to Orthanc; can corrupt chosen instances or be stopped and restarted
    on the same port. Counts WADO-RS retrievals of each instance by SOP Instance UID,
    whether it came alone or as a part of a series-level answer (which it reads)."""

    def __init__(self, upstream: str, prefix: str = "/dicom-web") -> None:
        self.upstream = upstream
        self.prefix = prefix
        self.corrupt: set[str] = set()
        # A misbehaving peer: substrings of the request (path and query) replaced
        # before it goes upstream, and JSON answers rewritten on the way back.
        self.rewrite_request: dict[str, str] = {}
        self.rewrite_json: Any = None
        self.paths: list[str] = []  # every request, as received
        self.refuse_after: int | None = None  # WADO requests served before it "goes down"
        self.wado: Counter[str] = Counter()
        self.series_requests = 0
        self.refuse_series = False  # a PACS without series-level retrieval (400)
        # WADO requests let through, counted on arrival: retrievals run concurrently,
        # so "served" would let a second one in before the first has finished.
        self.admitted = 0
        self._lock = threading.Lock()
        self.port = 0
        self._server: ThreadingHTTPServer | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.prefix}"

    def start(self) -> None:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                proxy.handle(self)

            def log_message(self, *_: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    def handle(self, req: BaseHTTPRequestHandler) -> None:
        self.paths.append(req.path)
        path = req.path
        for old, new in self.rewrite_request.items():
            path = path.replace(old, new)
        sop = (
            req.path.split("?")[0].rsplit("/instances/", 1)[-1] if "/instances/" in req.path else ""
        )
        series = bool(SERIES_PATH.fullmatch(req.path.split("?")[0]))
        if series and self.refuse_series:
            req.send_response(400)
            req.send_header("Content-Length", "0")
            req.end_headers()
            return
        with self._lock:
            refused = self.refuse_after is not None and self.admitted >= self.refuse_after
            if (sop or series) and refused:
                req.close_connection = True  # drop the connection without an answer: an outage
                return
            self.admitted += bool(sop or series)
            self.series_requests += series
        resp = httpx.get(
            self.upstream + path,
            headers={"Accept": req.headers.get("Accept", "*/*")},
            timeout=10,
        )
        body = resp.content
        if self.rewrite_json is not None and "json" in resp.headers.get("content-type", ""):
            body = json.dumps(self.rewrite_json(path, resp.json())).encode()
        if sop:
            self.wado[sop] += 1
            if sop in self.corrupt:
                body = truncate_part(body, resp.headers["content-type"])
        if series and resp.status_code == 200:
            body = self.series_answer(body, resp.headers["content-type"])
        req.send_response(resp.status_code)
        req.send_header("Content-Type", resp.headers.get("content-type", ""))
        req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        req.wfile.write(body)

    def series_answer(self, body: bytes, content_type: str) -> bytes:
        """Count each instance of a series-level answer; cut the chosen ones to a third
        inside their part (the framing stays whole)."""
        boundary = content_type.split("boundary=")[1].split(";")[0].strip('"').encode()
        delimiter = b"\r\n--" + boundary
        pieces = (b"\r\n" + body).split(delimiter)
        out = [pieces[0]]
        for piece in pieces[1:]:
            head, sep, part = piece.partition(b"\r\n\r\n")
            if sep and not piece.startswith(b"--"):
                uid = str(pydicom.dcmread(io.BytesIO(part), stop_before_pixels=True).SOPInstanceUID)
                self.wado[uid] += 1
                if uid in self.corrupt:
                    part = part[: len(part) // 3]
            out.append(head + sep + part)
        return delimiter.join(out)[2:]


def truncate_part(body: bytes, content_type: str) -> bytes:
    """Keep the multipart framing but cut the DICOM file inside to a third."""
    boundary = content_type.split("boundary=")[1].strip('"').encode()
    head, _, rest = body.partition(b"\r\n\r\n")
    part = rest.split(b"\r\n--" + boundary)[0]
    return head + b"\r\n\r\n" + part[: len(part) // 3] + b"\r\n--" + boundary + b"--\r\n"


@pytest.fixture
def proxy(infra: dict[str, Any]) -> Iterator[PacsProxy]:
    p = PacsProxy(infra["orthanc_url"])
    yield p
    p.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5, follow_redirects=False) as c:
        yield c


def make_ctx(
    db: AsyncDatabase[Doc],
    client: httpx.AsyncClient,
    infra: dict[str, Any],
    tmp: Path,
    pacs: str,
    checker: Checker | None = None,
) -> Retrieval:
    registry = ProviderRegistry(
        tenants={
            TENANT: {
                "pacs": ProviderEndpoints(dicomweb_url=pacs),
                "clinic": ProviderEndpoints(fhir_url=infra["fhir_url"]),
            }
        }
    )
    store = FetchStore(db["fetches"], db["instances"])
    archive = LocalArchive(tmp / "records")
    if checker is None:  # the checks in threads of this process
        return Retrieval(store, client, registry, archive)
    return Retrieval(store, client, registry, archive, checker=checker)


def read_all(archive: Archive, sha256: str) -> bytes:
    with archive.open(sha256) as f:
        return b"".join(iter(lambda: f.read(1 << 20), b""))


def accepted(
    imaging_pid: str,
    clinic_pid: str,
    tier: str = "imaging_reread",
    imaging_kinds: tuple[str, ...] = ("imaging",),
) -> CaseAccepted:
    return CaseAccepted.model_validate(
        {
            "case_id": f"case-{uuid.uuid4().hex[:8]}",
            "tenant_id": TENANT,
            "external_id": "x",
            "routing": {
                "subspecialties": ["neuroradiology"],
                "jurisdiction": "US-CA",
                "service_tier": tier,
            },
            "records": [
                {
                    "provider_id": "pacs",
                    "patient_id": imaging_pid,
                    "kinds": list(imaging_kinds),
                    "authorized": True,
                },
                {
                    "provider_id": "clinic",
                    "patient_id": clinic_pid,
                    "kinds": ["notes", "reports", "labs", "treatments"],
                    "authorized": True,
                },
            ],
        }
    )


def meta() -> EventMeta:
    return EventMeta(event_id=str(uuid.uuid4()), ce_type="", source="", time="", tenant_id=TENANT)


def seeded_patient(
    infra: dict[str, Any], files: list[tuple[str, str]], attributes: dict[str, str] | None = None
) -> str:
    """A patient at the real PACS with the given (file, study date) studies."""
    pid = f"MRN-{uuid.uuid4().hex[:8]}"
    seed.seed_pacs(infra["orthanc_url"], pid, "Test^Pat", files, attributes)
    return pid


async def attempt(ctx: Retrieval, event: CaseAccepted) -> Doc:
    """Run one due retrieval attempt of the case and return its document."""
    assert await handlers.run_due(ctx, FAST, lease_seconds=60)
    doc = await ctx.store.fetches.find_one({"_id": event.case_id})
    assert doc is not None
    return doc


def emitted(doc: Doc, topic: str) -> list[dict[str, Any]]:
    return [e["body"] for e in doc.get("outbox", []) if e["topic"] == topic]


def items(body: dict[str, Any], key: str = "manifest") -> dict[str, dict[str, Any]]:
    return {i["detail"].split(":")[0]: i for i in body[key]}


async def test_records_complete_says_what_the_images_are(
    infra: dict[str, Any],
    db: AsyncDatabase[Doc],
    client: httpx.AsyncClient,
    clinic_pid: str,
    tmp_path: Path,
) -> None:
    """Intake re-checks the routing with each study's Modality, BodyPartExamined (as
    the received files say) and StudyDescription (as the PACS lists it)."""
    heart = {"BodyPartExamined": "HEART", "StudyDescription": "CARDIAC STUDY"}
    pid = seeded_patient(infra, [("CT_small.dcm", "20261001"), ("MR_small.dcm", "20240101")], heart)
    ctx = make_ctx(db, client, infra, tmp_path, infra["dicomweb_url"])
    event = accepted(pid, clinic_pid)
    await handlers.open_case(ctx.store, event, meta())
    doc = await attempt(ctx, event)
    [complete] = emitted(doc, "records.complete")
    by_req = items(RecordsComplete.model_validate(complete).model_dump(mode="json"))
    [current] = by_req["original_images"]["studies"]
    assert (current["modality"], current["body_part"]) == ("CT", "HEART")
    assert current["description"] == "CARDIAC STUDY" and current["instances"] == 1
    assert [(s["modality"], s["body_part"]) for s in by_req["prior_studies"]["studies"]] == [
        ("MR", "HEART")
    ]


async def test_complete_case_manifest_files_and_chart(
    infra: dict[str, Any],
    db: AsyncDatabase[Doc],
    client: httpx.AsyncClient,
    clinic_pid: str,
    tmp_path: Path,
) -> None:
    pid = seeded_patient(infra, [("MR_small.dcm", "20261001"), ("CT_small.dcm", "20240101")])
    seeded_patient(infra, [("MR_small.dcm", "20250101")])  # another patient: not fetched
    ctx = make_ctx(db, client, infra, tmp_path, infra["dicomweb_url"])
    event = accepted(pid, clinic_pid)
    opened = await handlers.open_case(ctx.store, event, meta())
    assert [e.topic for e in opened.entries] == ["records.requested", "records.requested"]
    assert opened.claimed is None  # no worker slot given: the polling loop finds it
    doc = await attempt(ctx, event)
    assert doc["state"] == "complete"
    [complete] = emitted(doc, "records.complete")
    RecordsComplete.model_validate(complete)
    by_req = items(complete)
    assert set(by_req) == {"original_images", "original_report", "prior_studies"}
    assert all(i["present"] for i in by_req.values())
    assert (
        "MR" in by_req["original_images"]["detail"]
        and "20261001" in by_req["original_images"]["detail"]
    )
    assert "CT" in by_req["prior_studies"]["detail"]
    assert doc["progress"] == {"expected": 2, "received": 2, "corrupt": 0}
    # Every file is in the archive under its checksum, and is the DICOM it claims to be.
    instances = await ctx.store.instance_states(event.case_id)
    assert len(instances) == 2
    for sop, inst in instances.items():
        data = await asyncio.to_thread(read_all, ctx.archive, inst["sha256"])
        assert inst["location"] == ctx.archive.location(inst["sha256"])
        assert hashlib.sha256(data).hexdigest() == inst["sha256"]
        assert pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID == sop
    assert {i["modality"] for i in instances.values()} == {"MR", "CT"}
    # The chart: dates, doses and outcomes summarised from the real FHIR peer.
    view = handlers.manifest_view(doc, list(instances.values()))
    summaries = [s for block in view["clinical"] for s in block["summaries"]]
    med = next(s for s in summaries if s["resource_type"] == "MedicationStatement")
    assert med["dose"] == "500 mg orally twice daily" and med["date"] == "2026-10-06"
    proc = next(s for s in summaries if s["resource_type"] == "Procedure")
    assert proc["outcome"] == "Deferred pending second opinion"
    assert sum(s["resource_type"] == "Observation" for s in summaries) == 2


async def test_new_case_handed_to_a_free_worker_is_claimed_once_and_retrieved(
    infra: dict[str, Any],
    db: AsyncDatabase[Doc],
    client: httpx.AsyncClient,
    clinic_pid: str,
    tmp_path: Path,
) -> None:
    pid = seeded_patient(infra, [("MR_small.dcm", "20261001"), ("CT_small.dcm", "20240101")])
    ctx = make_ctx(db, client, infra, tmp_path, infra["dicomweb_url"])
    event = accepted(pid, clinic_pid)
    first = meta()
    opened = await handlers.open_case(ctx.store, event, first, claim_seconds=60)
    assert opened.claimed is not None and opened.claimed["state"] == "retrieving"
    # Held by its lease: no polling worker takes it meanwhile.
    assert await ctx.store.claim_due(60) is None
    # A redelivery, or a repeated acceptance, opens nothing and claims nothing.
    for again in (first, meta()):
        repeat = await handlers.open_case(ctx.store, event, again, claim_seconds=60)
        assert repeat == handlers.Opened([])
    await handlers.run_claimed(ctx, FAST, opened.claimed, lease_seconds=60)
    doc = await ctx.store.fetches.find_one({"_id": event.case_id})
    assert doc is not None and doc["state"] == "complete"
    assert len(emitted(doc, "records.requested")) == 2  # once, not per repeat
    assert len(emitted(doc, "records.complete")) == 1


async def test_handed_case_whose_worker_died_is_taken_up_after_its_lease(
    infra: dict[str, Any],
    db: AsyncDatabase[Doc],
    client: httpx.AsyncClient,
    clinic_pid: str,
    tmp_path: Path,
) -> None:
    pid = seeded_patient(infra, [("MR_small.dcm", "20261001"), ("CT_small.dcm", "20240101")])
    ctx = make_ctx(db, client, infra, tmp_path, infra["dicomweb_url"])
    event = accepted(pid, clinic_pid)
    opened = await handlers.open_case(ctx.store, event, meta(), claim_seconds=0.5)
    assert opened.claimed is not None  # ... and its worker dies before retrieving
    assert await ctx.store.claim_due(60) is None
    await asyncio.sleep(0.6)
    doc = await attempt(ctx, event)  # a polling worker claims and completes it
    assert doc["state"] == "complete"


async def test_case_missing_imaging_backs_off_gives_up_and_is_overridden(
    infra: dict[str, Any],
    db: AsyncDatabase[Doc],
    client: httpx.AsyncClient,
    clinic_pid: str,
    tmp_path: Path,
) -> None:
    ctx = make_ctx(db, client, infra, tmp_path, infra["dicomweb_url"])
    event = accepted(f"MRN-none-{uuid.uuid4().hex[:6]}", clinic_pid)
    await handlers.open_case(ctx.store, event, meta())
    doc = await attempt(ctx, event)
    assert doc["state"] == "incomplete" and doc["attempt"] == 1
    [incomplete] = emitted(doc, "records.incomplete")
    missing = {
        i["detail"].split(":")[0]
        for i in RecordsIncomplete.model_validate(incomplete).model_dump()["missing"]
    }
    assert missing == {"original_images", "prior_studies"}  # the report is there
    assert not emitted(doc, "records.complete")
    for _ in range(2):  # re-requested until the cap (3 attempts)
        doc = await attempt(ctx, event)
    last = emitted(doc, "records.incomplete")[-1]
    assert last["attempt"] == 3 and last["gave_up"] and last["next_retry_at"] is None
    assert doc["state"] == "awaiting_override"
    assert not await handlers.run_due(ctx, FAST, lease_seconds=60)  # nothing due any more
    await handlers.override(ctx.store, event.case_id, OPS, "films reviewed on CD at clinic")
    final = await ctx.store.fetches.find_one({"_id": event.case_id})
    assert final is not None
    [complete] = emitted(final, "records.complete")
    assert complete["override_reason"] == "films reviewed on CD at clinic"
    assert final["state"] == "complete" and final["audit"][0]["by"] == "ops"


async def test_corrupt_instance_is_named_then_refetched(
    infra: dict[str, Any],
    db: AsyncDatabase[Doc],
    client: httpx.AsyncClient,
    clinic_pid: str,
    tmp_path: Path,
    proxy: PacsProxy,
) -> None:
    """The checks in a worker process, as the service runs them."""
    pid = seeded_patient(infra, [("MR_small.dcm", "20261001"), ("CT_small.dcm", "20240101")])
    checker = Checker(processes=1)
    await checker.start()
    ctx = make_ctx(db, client, infra, tmp_path, proxy.url, checker)
    event = accepted(pid, clinic_pid)
    await handlers.open_case(ctx.store, event, meta())
    mr_sop = await current_sop(client, infra, pid)
    proxy.corrupt.add(mr_sop)
    doc = await attempt(ctx, event)
    [incomplete] = emitted(doc, "records.incomplete")
    images = items(incomplete, "missing")["original_images"]
    assert f"corrupt: {mr_sop}" in images["detail"] and "1/1" not in images["detail"]
    assert "prior_studies" not in items(incomplete, "missing")
    assert (await ctx.store.instance_states(event.case_id))[mr_sop]["state"] == "corrupt"
    proxy.corrupt.clear()  # the PACS sends it whole on the re-request
    doc = await attempt(ctx, event)
    assert doc["state"] == "complete"
    assert proxy.wado[mr_sop] == 2 and sum(proxy.wado.values()) == 3  # the prior: once
    await asyncio.to_thread(checker.close)


class HangingOn(Checker):
    """The service's checker, in real worker processes, whose check of one SOP
    instance never ends (as a decoder looping on a crafted file would)."""

    def __init__(self, sop_uid: str, timeout: float) -> None:
        super().__init__(processes=1, timeout=timeout)
        self.sop_uid = sop_uid

    async def run(self, check: Any, failed: Any) -> Any:
        return await super().run(partial(_hang_on, self.sop_uid, check), failed)


def _hang_on(sop_uid: str, check: Any) -> Any:
    """In the worker: the real check, except for the one instance, which hangs."""
    path = check.args[0] if isinstance(check, partial) else None
    if (
        path is not None
        and pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID == sop_uid
    ):
        time.sleep(3600)
    return check()


async def test_a_hanging_check_is_stopped_and_the_case_goes_on(
    infra: dict[str, Any],
    db: AsyncDatabase[Doc],
    client: httpx.AsyncClient,
    clinic_pid: str,
    tmp_path: Path,
) -> None:
    """A check that never ends costs its worker and the file, not the case."""
    pid = seeded_patient(infra, [("MR_small.dcm", "20261001"), ("CT_small.dcm", "20240101")])
    mr_sop = await current_sop(client, infra, pid)
    checker = HangingOn(mr_sop, timeout=1.0)
    await checker.start()
    try:
        ctx = make_ctx(db, client, infra, tmp_path, infra["dicomweb_url"], checker)
        event = accepted(pid, clinic_pid)
        await handlers.open_case(ctx.store, event, meta())
        started = time.monotonic()
        doc = await attempt(ctx, event)
        # the series part, then the instance asked for on its own: two timeouts
        assert time.monotonic() - started < 30
        [incomplete] = emitted(doc, "records.incomplete")
        images = items(incomplete, "missing")["original_images"]
        assert f"corrupt: {mr_sop}" in images["detail"]
        assert "prior_studies" not in items(incomplete, "missing")  # the CT got through
        states = await ctx.store.instance_states(event.case_id)
        assert states[mr_sop]["state"] == "corrupt"
        assert took_too_long(1.0) in states[mr_sop]["problems"]
        assert [d["state"] for k, d in states.items() if k != mr_sop] == ["received"]
    finally:
        await asyncio.to_thread(checker.close)


async def current_sop(client: httpx.AsyncClient, infra: dict[str, Any], pid: str) -> str:
    base = infra["dicomweb_url"]
    resp = await client.get(
        f"{base}/instances",
        params={"PatientID": pid, "Modality": "MR"},
        headers={"Accept": "application/dicom+json"},
    )
    return str(resp.json()[0]["00080018"]["Value"][0])


async def test_pacs_down_mid_retrieval_resumes_without_duplicate_retrieval(
    infra: dict[str, Any],
    db: AsyncDatabase[Doc],
    client: httpx.AsyncClient,
    clinic_pid: str,
    tmp_path: Path,
    proxy: PacsProxy,
) -> None:
    pid = seeded_patient(infra, [("MR_small.dcm", "20261001"), ("CT_small.dcm", "20240101")])
    ctx = make_ctx(db, client, infra, tmp_path, proxy.url)
    event = accepted(pid, clinic_pid)
    await handlers.open_case(ctx.store, event, meta())
    proxy.refuse_after = 1  # one instance arrives, then the PACS goes away
    doc = await attempt(ctx, event)
    assert doc["state"] == "incomplete" and doc["progress"]["received"] == 1
    pacs = doc["providers"][0]
    assert pacs["state"] == "failed" and "unreachable" in pacs["reason"]
    assert doc["providers"][1]["state"] == "received"  # the clinic is not held up
    proxy.stop()  # fully down: connection refused
    doc = await attempt(ctx, event)
    assert doc["state"] == "incomplete" and doc["attempt"] == 2
    proxy.refuse_after = None
    proxy.start()  # back, on the same registered port
    doc = await attempt(ctx, event)
    assert doc["state"] == "complete"
    assert sorted(proxy.wado.values()) == [1, 1]  # each instance retrieved exactly once
    retrievals = [
        i["retrievals"] for i in (await ctx.store.instance_states(event.case_id)).values()
    ]
    assert retrievals == [1, 1]


async def test_whole_slide_images_or_glass_slides_for_pathology(
    infra: dict[str, Any],
    db: AsyncDatabase[Doc],
    client: httpx.AsyncClient,
    clinic_pid: str,
    tmp_path: Path,
) -> None:
    with_wsi = f"MRN-{uuid.uuid4().hex[:8]}"
    upload_slide(infra["orthanc_url"], with_wsi)
    ctx = make_ctx(db, client, infra, tmp_path, infra["dicomweb_url"])
    digital = accepted(with_wsi, clinic_pid, "pathology_rereview", ("pathology",))
    await handlers.open_case(ctx.store, digital, meta())
    doc = await attempt(ctx, digital)
    assert doc["state"] == "complete"
    assert (
        "whole-slide images received"
        in items(emitted(doc, "records.complete")[0])["pathology"]["detail"]
    )
    glass = accepted(
        f"MRN-none-{uuid.uuid4().hex[:6]}", clinic_pid, "pathology_rereview", ("pathology",)
    )
    await handlers.open_case(ctx.store, glass, meta())
    doc = await attempt(ctx, glass)
    assert doc["glass_slides"]["pacs"]["state"] == "requested"
    assert (
        "glass slides requested"
        in items(emitted(doc, "records.incomplete")[0], "missing")["pathology"]["detail"]
    )
    await handlers.mark_glass_slides_received(ctx.store, glass.case_id, "pacs", OPS)
    doc = await attempt(ctx, glass)
    assert doc["state"] == "complete"


def upload_slide(orthanc_url: str, patient_id: str) -> None:
    """A bundled RGB image relabelled as a whole-slide microscopy instance (modality SM)."""
    ds = pydicom.dcmread(
        io.BytesIO(seed.dicom_bytes("SC_rgb_small_odd.dcm", patient_id, "Slide^Pat"))
    )
    ds.Modality = "SM"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.6"  # VL Whole Slide Microscopy Image Storage
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    resp = httpx.post(
        f"{orthanc_url}/instances",
        content=buf.getvalue(),
        headers={"Content-Type": "application/dicom"},
    )
    resp.raise_for_status()


# ---------------------------------------------------------------- issue 15, finding 2


def fetched_paths(proxy: PacsProxy) -> list[str]:
    return [p.split("?")[0] for p in proxy.paths]


async def test_identifiers_that_would_widen_a_search_are_refused_before_any_request(
    infra: dict[str, Any],
    db: AsyncDatabase[Doc],
    client: httpx.AsyncClient,
    clinic_pid: str,
    tmp_path: Path,
) -> None:
    """`<id>,Patient/<other>` is OR in a FHIR search (both charts came back) and
    `PatientID=*` matches every patient at the real Orthanc: the contract refuses
    both where the event is decoded, so records_fetch's consumer dead-letters the
    event and no request is made (records_fetch's own identifier checks, a second
    line, are unit-tested in tests/unit/test_records_fetch_identifiers.py)."""
    other = seed.seed_fhir(infra["fhir_url"], "Other", "Pat", "1980-02-02")
    seeded_patient(infra, [("MR_small.dcm", "20261001")])  # someone at the PACS
    body = json.loads(accepted("placeholder", clinic_pid).model_dump_json())
    body["records"][0]["patient_id"] = "*"
    body["records"][1]["patient_id"] = f"{clinic_pid},Patient/{other}"
    fhir = PacsProxy(infra["fhir_url"], prefix="")
    try:
        with pytest.raises(PermanentError) as refused:
            decode_event(CaseAccepted, meta_for(body), json.dumps(body).encode())
    finally:
        fhir.stop()
    assert "records.0.patient_id" in refused.value.detail
    assert "records.1.patient_id" in refused.value.detail
    assert other not in refused.value.detail and clinic_pid not in refused.value.detail
    assert fhir.paths == []  # no request with either id was made


def meta_for(body: dict[str, Any]) -> EventMeta:
    return EventMeta(
        event_id="e-hostile",
        ce_type=CaseAccepted.ce_type(),
        source="/it",
        time="",
        tenant_id=body["tenant_id"],
    )


async def test_a_peer_answering_for_another_patient_is_refused_and_recorded(
    infra: dict[str, Any],
    db: AsyncDatabase[Doc],
    client: httpx.AsyncClient,
    clinic_pid: str,
    tmp_path: Path,
    proxy: PacsProxy,
) -> None:
    """The PACS and the FHIR peer answer with another patient's records although
    asked for ours (a mix-up at the provider, or a hostile peer): nothing of it is
    kept; the manifest shows what was refused and a counter counts it."""
    ours = seeded_patient(infra, [("MR_small.dcm", "20261001"), ("CT_small.dcm", "20240101")])
    theirs = seeded_patient(infra, [("MR_small.dcm", "20250101")])
    other_chart = seed.seed_fhir(infra["fhir_url"], "Other", "Chart", "1981-03-03")
    proxy.rewrite_request = {f"PatientID={ours}": f"PatientID={theirs}"}
    fhir = PacsProxy(infra["fhir_url"], prefix="")
    fhir.rewrite_request = {f"Patient%2F{clinic_pid}": f"Patient%2F{other_chart}"}
    before = refused_count("qido_study") + refused_count("fhir")
    try:
        ctx = make_ctx(db, client, infra, tmp_path, proxy.url)
        ctx.registry.tenants[TENANT]["clinic"] = ProviderEndpoints(fhir_url=fhir.url)
        event = accepted(ours, clinic_pid)
        await handlers.open_case(ctx.store, event, meta())
        doc = await attempt(ctx, event)
    finally:
        fhir.stop()
    assert any(f"Patient%2F{clinic_pid}" in p for p in fhir.paths)  # asked correctly
    assert doc.get("studies", []) == [] and sum(proxy.wado.values()) == 0
    assert all(block["summaries"] == [] for block in doc["clinical"])
    assert await ctx.store.instance_states(event.case_id) == {}
    view = handlers.manifest_view(doc, [])
    sources = Counter(r["source"] for r in view["refused"])
    assert sources["qido_study"] == 1 and sources["fhir"] >= 5
    assert all(r["reason"].endswith("another patient") for r in view["refused"])
    assert theirs not in str(view["refused"]) and other_chart not in str(view["refused"])
    assert refused_count("qido_study") + refused_count("fhir") - before == sum(sources.values())
    assert doc["state"] == "incomplete"


@pytest.mark.parametrize("series_level", [False, True], ids=["instance", "series"])
async def test_a_stored_instance_of_another_patient_never_enters_the_archive(
    infra: dict[str, Any],
    db: AsyncDatabase[Doc],
    client: httpx.AsyncClient,
    clinic_pid: str,
    tmp_path: Path,
    proxy: PacsProxy,
    series_level: bool,
) -> None:
    """QIDO lists our patient's instance, leaving the patient out of the instance
    listing, and WADO-RS sends another patient's file under its UIDs: alone (a PACS
    refusing series-level retrieval), or as the series-level answer and then again
    alone (the fallback for the listed instance the series answer did not bring)."""
    ours = seeded_patient(infra, [("MR_small.dcm", "20261001")])
    theirs = seeded_patient(infra, [("CT_small.dcm", "20250101")])
    [our_path] = await instance_paths(client, infra, ours)
    [their_path] = await instance_paths(client, infra, theirs)
    proxy.rewrite_request = {our_path: their_path}
    if series_level:
        series_of = lambda p: p.rsplit("/instances/", 1)[0]  # noqa: E731
        proxy.rewrite_request[series_of(our_path)] = series_of(their_path)
    else:
        proxy.refuse_series = True

    def hide_patient(path: str, answer: Any) -> Any:
        if "/instances" in path and isinstance(answer, list):
            return [{k: v for k, v in i.items() if k != "00100020"} for i in answer]
        return answer

    proxy.rewrite_json = hide_patient
    before = refused_count("instance")
    ctx = make_ctx(db, client, infra, tmp_path, proxy.url)
    event = accepted(ours, clinic_pid)
    await handlers.open_case(ctx.store, event, meta())
    doc = await attempt(ctx, event)
    times = 2 if series_level else 1
    assert sum(proxy.wado.values()) == times  # it was retrieved ...
    assert await ctx.store.instance_states(event.case_id) == {}  # ... and refused
    archived = [p for p in (tmp_path / "records").rglob("*") if p.is_file()]
    assert archived == []  # not even under a temporary name
    assert [r["source"] for r in doc["refused"]] == ["instance"] * times
    assert refused_count("instance") - before == times
    assert doc["state"] == "incomplete"


async def test_uids_from_the_pacs_never_reach_a_url_path_unchecked(
    infra: dict[str, Any],
    db: AsyncDatabase[Doc],
    client: httpx.AsyncClient,
    clinic_pid: str,
    tmp_path: Path,
    proxy: PacsProxy,
) -> None:
    ours = seeded_patient(infra, [("MR_small.dcm", "20261001")])

    def traversing_uid(path: str, answer: Any) -> Any:
        if path.startswith("/dicom-web/studies?") and isinstance(answer, list):
            for s in answer:
                s["0020000D"]["Value"] = ["1.2.3/../../../tools/reset"]
        return answer

    proxy.rewrite_json = traversing_uid
    ctx = make_ctx(db, client, infra, tmp_path, proxy.url)
    event = accepted(ours, clinic_pid)
    await handlers.open_case(ctx.store, event, meta())
    doc = await attempt(ctx, event)
    assert fetched_paths(proxy) == ["/dicom-web/studies"]  # the search, nothing after it
    assert [r["reason"] for r in doc["refused"]] == ["study UID not of the UID grammar"]


async def instance_paths(client: httpx.AsyncClient, infra: dict[str, Any], pid: str) -> list[str]:
    resp = await client.get(
        f"{infra['dicomweb_url']}/instances",
        params={"PatientID": pid},
        headers={"Accept": "application/dicom+json"},
    )
    return [
        "/studies/{}/series/{}/instances/{}".format(
            i["0020000D"]["Value"][0], i["0020000E"]["Value"][0], i["00080018"]["Value"][0]
        )
        for i in resp.json()
    ]


def refused_count(source: str) -> float:
    value = REGISTRY.get_sample_value(
        "records_fetch_foreign_records_refused_total", {"source": source}
    )
    return value or 0.0


# ---------------------------------------------------------------- issue 20: digital pathology


async def test_a_generated_slide_pyramid_satisfies_pathology_through_the_s3_archive(
    infra: dict[str, Any],
    db: AsyncDatabase[Doc],
    client: httpx.AsyncClient,
    clinic_pid: str,
    tmp_path: Path,
) -> None:
    """A VL Whole Slide Microscopy study made at run time (bench.studies: 3 pyramid
    levels, multi-frame tiled JPEG) in the real Orthanc, retrieved into the S3
    archive on the stack's SeaweedFS; what comes back out of it is a pyramid
    wsidicom opens. A study that is only labelled SM (a secondary capture) does
    not satisfy pathology."""
    from wsidicom import WsiDicom

    patient = f"MRN-{uuid.uuid4().hex[:8]}"
    spec = studies.wsi(1024, 768, levels=3)
    paths = await asyncio.to_thread(studies.write_slide, spec, patient, tmp_path / "slide")
    assert (await asyncio.to_thread(studies.upload_files, infra["orthanc_url"], paths))[0] == 3
    s3 = archives.S3Archive(
        archives.s3_client(
            infra["s3_url"],
            infra["s3_region"],
            infra["s3_access_key_id"],
            infra["s3_secret_access_key"],
        ),
        "records",
        tmp_path / "spool",
        prefix=f"it-wsi-{uuid.uuid4().hex[:8]}/",
    )
    await asyncio.to_thread(s3.ensure_bucket, create=True)
    ctx = dataclasses.replace(
        make_ctx(db, client, infra, tmp_path, infra["dicomweb_url"]), archive=s3
    )
    digital = accepted(patient, clinic_pid, "pathology_rereview", ("pathology",))
    await handlers.open_case(ctx.store, digital, meta())
    doc = await attempt(ctx, digital)
    assert doc["state"] == "complete" and "glass_slides" not in doc
    pathology = items(emitted(doc, "records.complete")[0])["pathology"]
    assert pathology["detail"] == "pathology: whole-slide images received"
    assert pathology["count"] == 3
    records = await ctx.store.instance_states(digital.case_id)
    assert {r["sop_class"] for r in records.values()} == {studies.VL_WSI}
    assert all(r["location"].startswith("s3://records/it-wsi-") for r in records.values())
    out = tmp_path / "back"
    out.mkdir()
    for sop, r in records.items():
        (out / f"{sop}.dcm").write_bytes(await asyncio.to_thread(read_all, s3, r["sha256"]))
    with WsiDicom.open(out) as slide:
        assert [lv.size.width for lv in slide.levels] == [1024, 512, 256]
        assert slide.read_tile(0, (1, 1)).size == (256, 256)

    labelled = f"MRN-{uuid.uuid4().hex[:8]}"
    ds = pydicom.dcmread(
        io.BytesIO(seed.dicom_bytes("SC_rgb_small_odd.dcm", labelled, "Slide^Pat"))
    )
    ds.Modality = "SM"  # the SOP class stays Secondary Capture
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    stored = await client.post(
        f"{infra['orthanc_url']}/instances",
        content=buf.getvalue(),
        headers={"Content-Type": "application/dicom"},
    )
    stored.raise_for_status()
    only_sm = accepted(labelled, clinic_pid, "pathology_rereview", ("pathology",))
    await handlers.open_case(ctx.store, only_sm, meta())
    doc = await attempt(ctx, only_sm)
    missing = items(emitted(doc, "records.incomplete")[0], "missing")["pathology"]
    assert "no VL Whole Slide Microscopy image" in missing["detail"]
