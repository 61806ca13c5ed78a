"""The review organisation's PACS (issue 20): a complete case's images imported into
the stack's second Orthanc (the Web Viewer and WSI plugins loaded), reconciled as
IHE IRWF.b says, and opened from the viewer link in Debian's headless Chromium.

Against the real parts: the provider's Orthanc holds a generated CT (3 slices of
512x512) and a generated whole-slide image (3 pyramid levels, tiled JPEG) for one
patient; records_fetch retrieves them into its archive and imports them, and
what the review PACS then holds is read back with its own DICOMweb and REST APIs.
Screenshots: test-artifacts/review-ct.png, test-artifacts/review-wsi.png.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
import pytest_asyncio
from PIL import Image
from pymongo.asynchronous.database import AsyncDatabase

from bench import studies
from services.records_fetch import handlers
from services.records_fetch.review_pacs import ReviewPacs
from shared.store import Doc
from tests.conftest import REPO
from tests.integration.test_records_fetch import (
    accepted,
    attempt,
    emitted,
    make_ctx,
    meta,
    read_all,
)

pytestmark = pytest.mark.integration
ISSUER = "REVIEW-ORG-TEST"
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
WADO_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'


@pytest_asyncio.fixture(loop_scope="session")
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30, follow_redirects=False) as c:
        yield c


class Counting(httpx.AsyncBaseTransport):
    """Counts the requests that reach the review PACS (an import that resumes sends
    only what is left)."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.stow = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            self.stow += 1
        return await self.inner.handle_async_request(request)


async def seeded(infra: dict[str, Any], tmp_path: Path) -> tuple[str, int]:
    """A patient with a CT (3 slices) and a slide (3 levels) at the provider's PACS."""
    patient = f"MRN-{uuid.uuid4().hex[:8]}"
    ct, _ = await asyncio.to_thread(
        studies.upload, infra["orthanc_url"], studies.instances(studies.ct(3), patient)
    )
    paths = await asyncio.to_thread(
        studies.write_slide, studies.wsi(1024, 768, levels=3), patient, tmp_path / "slide"
    )
    await asyncio.to_thread(studies.upload_files, infra["orthanc_url"], paths)
    return patient, ct + len(paths)


async def qido(client: httpx.AsyncClient, base: str, path: str, **params: str) -> list[Any]:
    resp = await client.get(
        f"{base}/dicom-web/{path}", params=params, headers={"Accept": "application/dicom+json"}
    )
    resp.raise_for_status()
    return list(resp.json()) if resp.content else []


async def test_a_complete_case_is_imported_reconciled_and_opens_in_the_viewers(
    infra: dict[str, Any],
    db: AsyncDatabase[Doc],
    client: httpx.AsyncClient,
    clinic_pid: str,
    tmp_path: Path,
) -> None:
    review_url = infra["review_pacs_url"]
    patient, count = await seeded(infra, tmp_path)
    counting = Counting()
    review_client = httpx.AsyncClient(transport=counting, timeout=60)
    review = ReviewPacs(review_client, review_url, review_url, ISSUER)
    ctx = dataclasses.replace(
        make_ctx(db, client, infra, tmp_path, infra["dicomweb_url"]), review=review
    )
    event = accepted(patient, clinic_pid, "pathology_rereview", ("imaging", "pathology"))
    await handlers.open_case(ctx.store, event, meta())
    doc = await attempt(ctx, event)
    assert doc["state"] == "complete", doc.get("import_error")
    [body] = emitted(doc, "records.complete")
    links = {i["study_uid"]: i["viewer_url"] for i in body["images"]}
    assert sorted(i["modality"] for i in body["images"]) == ["CT", "SM"]
    assert len(links) == 2, body["images"]
    assert counting.stow == 2  # one STOW per series: the CT's and the slide's
    records = await ctx.store.instance_states(event.case_id)
    assert len(records) == count and all(r["review_imported"] for r in records.values())

    # IRWF.b: the originating patient id is not the review PACS's patient; the
    # review organisation's id is, with the original kept in Other Patient IDs.
    assert await qido(client, review_url, "studies", PatientID=patient) == []
    review_pid = "SO-" + event.case_id.removeprefix("case-")
    found = await qido(client, review_url, "studies", PatientID=review_pid)
    assert {s["0020000D"]["Value"][0] for s in found} == set(links)
    for study_uid in links:
        for inst in await qido(client, review_url, f"studies/{study_uid}/instances"):
            sop = inst["00080018"]["Value"][0]
            series = inst["0020000E"]["Value"][0]
            wado = await client.get(
                f"{review_url}/dicom-web/studies/{study_uid}/series/{series}/instances/{sop}",
                headers={"Accept": WADO_ACCEPT},  # as stored, not transcoded
            )
            wado.raise_for_status()
            ds = pydicom.dcmread(io.BytesIO(first_part(wado)))
            assert ds.PatientID == review_pid and ds.IssuerOfPatientID == ISSUER
            assert [(o.PatientID, o.IssuerOfPatientID) for o in ds.OtherPatientIDsSequence] == [
                (patient, "pacs")
            ]
            assert ds.AccessionNumber == "SO" + event.case_id.removeprefix("case-")[:14]
            assert ds.IssuerOfAccessionNumberSequence[0].LocalNamespaceEntityID == ISSUER
            [change] = ds.OriginalAttributesSequence
            assert change.ReasonForTheAttributeModification == "COERCE"
            assert change.SourceOfPreviousValues == "pacs"
            [before] = change.ModifiedAttributesSequence
            assert (before.PatientID == patient and before.AccessionNumber == "BENCH1") or (
                before.PatientID == patient and ds.Modality == "SM"
            )
            # The images themselves are the provider's, byte for byte.
            original = pydicom.dcmread(io.BytesIO(read_all(ctx.archive, records[sop]["sha256"])))
            assert ds.PixelData == original.PixelData
            assert ds.PatientName == original.PatientName

    # Another attempt finds everything imported: nothing is sent again.
    again = await review.import_case(ctx.store, ctx.archive, doc, records, ctx.store.clock.now())
    assert {i.study_uid: i.viewer_url for i in again} == links and counting.stow == 2
    await review_client.aclose()
    shots = await asyncio.to_thread(look, links)
    assert shots["ct"] > 30, shots  # grey levels of a drawn CT slice, not a blank canvas
    assert shots["wsi"] > 0, shots  # slide tiles served and drawn


async def test_a_review_pacs_that_is_down_holds_the_case_until_it_takes_the_images(
    infra: dict[str, Any],
    db: AsyncDatabase[Doc],
    client: httpx.AsyncClient,
    clinic_pid: str,
    tmp_path: Path,
) -> None:
    patient, _ = await seeded(infra, tmp_path)
    async with httpx.AsyncClient(timeout=5) as review_client:
        down = ReviewPacs(review_client, "http://127.0.0.1:9", "http://127.0.0.1:9", ISSUER)
        ctx = dataclasses.replace(
            make_ctx(db, client, infra, tmp_path, infra["dicomweb_url"]), review=down
        )
        event = accepted(patient, clinic_pid, "pathology_rereview", ("imaging", "pathology"))
        await handlers.open_case(ctx.store, event, meta())
        doc = await attempt(ctx, event)
        assert doc["state"] == "importing"
        assert emitted(doc, "records.complete") == []
        view = handlers.progress_view(doc)
        assert view["import_error"] == "review PACS unreachable (ConnectError)"
        assert view["next_retry_at"] is not None

        up = ReviewPacs(review_client, infra["review_pacs_url"], "http://viewer", ISSUER)
        ctx = dataclasses.replace(ctx, review=up)
        doc = await attempt(ctx, event)  # FAST policy: due again at once
        assert doc["state"] == "complete"
        [body] = emitted(doc, "records.complete")
        urls = sorted(i["viewer_url"] for i in body["images"])
        assert [u.split("?")[0] for u in urls] == [
            "http://viewer/web-viewer/app/viewer.html",
            "http://viewer/wsi/app/viewer.html",
        ]


def first_part(resp: httpx.Response) -> bytes:
    boundary = resp.headers["content-type"].split("boundary=")[1].split(";")[0].strip('"')
    body = resp.content
    _, _, rest = body.partition(b"\r\n\r\n")
    return rest.split(b"\r\n--" + boundary.encode())[0]


def look(links: dict[str, str]) -> dict[str, int]:
    """Open each study's viewer link in Chromium; the CT slice's grey levels on the
    viewer's canvas, and the number of slide tiles the WSI viewer fetched and drew."""
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    out: dict[str, int] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            for url in links.values():
                page = browser.new_page(viewport={"width": 1200, "height": 800})
                tiles: list[int] = []

                def on_response(r: Any, t: list[int] = tiles) -> None:
                    if "/wsi/tiles/" in r.url:
                        t.append(r.status)

                page.on("response", on_response)
                page.goto(url)
                if "/wsi/" in url:
                    page.wait_for_function("document.querySelectorAll('canvas').length > 0")
                    page.wait_for_timeout(3000)
                    page.screenshot(path=str(ARTIFACTS / "review-wsi.png"))
                    out["wsi"] = sum(1 for s in tiles if s == 200) if pinkish(page) else 0
                else:
                    page.wait_for_selector("canvas", timeout=30_000)
                    page.wait_for_timeout(3000)
                    shot = ARTIFACTS / "review-ct.png"
                    page.screenshot(path=str(shot))
                    out["ct"] = grey_levels(shot)
                page.close()
        finally:
            browser.close()
    return out


def grey_levels(path: Path) -> int:
    """Distinct grey levels in the middle of the screenshot (the slice, not the overlay)."""
    with Image.open(path) as img:
        w, h = img.size
        middle = img.convert("L").crop((w // 4, h // 4, 3 * w // 4, 3 * h // 4))
        return len(set(middle.tobytes()))


def pinkish(page: Any) -> bool:
    """The slide's stain colours on screen (the generated tissue is pink and purple)."""
    shot = page.screenshot()
    with Image.open(io.BytesIO(shot)) as img:
        raw = img.convert("RGB").resize((60, 40)).tobytes()
        pixels = zip(raw[0::3], raw[1::3], raw[2::3], strict=True)
        return sum(1 for r, g, b in pixels if r > 180 and g < 180 and b > 150) > 200
