"""records_fetch's adapters with httpx.MockTransport: streamed WADO-RS into the
content-addressed archive, outages as ProviderUnavailable, no redirects, and no
paging link outside the registered endpoint."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest

from services.records_fetch import multipart, providers
from services.records_fetch.archive import LocalArchive
from shared.errors import ProviderUnavailable, UnregisteredEndpoint
from shared.events import RecordKind

BASE = "http://pacs.test/dicom-web"
INST = providers.QidoInstance(study_uid="1", series_uid="2", sop_uid="3", modality="MR")
CT = 'multipart/related; type="application/dicom"; boundary=xyz'


def wado(payload: bytes, closed: bool = True) -> httpx.Response:
    body = b"--xyz\r\nContent-Type: application/dicom\r\n\r\n" + payload + b"\r\n"
    return httpx.Response(
        200, content=body + (b"--xyz--\r\n" if closed else b""), headers={"content-type": CT}
    )


def client_for(handler: httpx.MockTransport) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=handler, follow_redirects=False)


def read(location: str) -> bytes:
    return Path(location).read_bytes()


async def test_instance_streams_into_the_archive_under_its_checksum(tmp_path: Path) -> None:
    payload = bytes(range(256)) * 1000
    archive = LocalArchive(tmp_path)
    async with client_for(httpx.MockTransport(lambda r: wado(payload))) as c:
        incoming = await providers.retrieve_instance(c, BASE, INST, archive)
    sha, location = archive.commit(incoming)
    assert sha == hashlib.sha256(payload).hexdigest() and read(location) == payload
    assert archive.holds(sha) and not list((tmp_path / "tmp").iterdir())


async def test_cut_off_transfer_is_truncated_and_leaves_nothing(tmp_path: Path) -> None:
    async with client_for(httpx.MockTransport(lambda r: wado(b"DICM", closed=False))) as c:
        with pytest.raises(multipart.MultipartError):
            await providers.retrieve_instance(c, BASE, INST, LocalArchive(tmp_path))
    assert not list((tmp_path / "tmp").iterdir())


@pytest.mark.parametrize("status", [500, 503, 429])
async def test_provider_errors_are_retryable(status: int) -> None:
    async with client_for(httpx.MockTransport(lambda r: httpx.Response(status))) as c:
        with pytest.raises(ProviderUnavailable):
            await providers.find_studies(c, BASE, "p")


async def test_connection_refused_is_retryable() -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    async with client_for(httpx.MockTransport(down)) as c:
        with pytest.raises(ProviderUnavailable):
            await providers.find_studies(c, BASE, "p")


async def test_redirects_are_not_followed() -> None:
    seen: list[str] = []

    def redirect(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(302, headers={"location": "http://169.254.169.254/latest"})

    async with client_for(httpx.MockTransport(redirect)) as c:
        with pytest.raises(UnregisteredEndpoint):
            await providers.find_studies(c, BASE, "p")
    assert len(seen) == 1


OBS = {"resourceType": "Observation", "subject": {"reference": "Patient/p1"}}


async def test_fhir_paging_follows_only_links_under_the_registered_base() -> None:
    def pages(request: httpx.Request) -> httpx.Response:
        if "page=2" in str(request.url):
            return httpx.Response(200, json={"entry": [{"resource": {**OBS, "id": "b"}}]})
        return httpx.Response(
            200,
            json={
                "entry": [{"resource": {**OBS, "id": "a"}}],
                "link": [{"relation": "next", "url": "http://fhir.test/r4/Observation?page=2"}],
            },
        )

    async with client_for(httpx.MockTransport(pages)) as c:
        found = await providers.search_fhir(c, "http://fhir.test/r4", "p1", RecordKind.LABS)
        assert [r["id"] for r in found.items] == ["a", "b"] and not found.refused
        with pytest.raises(UnregisteredEndpoint):
            await providers.search_fhir(c, "http://fhir.test/other", "p1", RecordKind.LABS)
