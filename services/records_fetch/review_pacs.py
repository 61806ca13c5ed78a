"""The review organisation's own PACS: where a complete case's images are imported
so that the reviewer can open them (an Orthanc with its Web Viewer and Whole
Slide Imaging viewer plugins in the local stack; any DICOMweb STOW-RS archive
in production, with the viewer links it serves).

* `import_case` sends every verified instance not yet imported, series by series,
  as STOW-RS (`POST {base}/dicom-web/studies`, multipart/related
  application/dicom), each reconciled on the way (reconcile.py: IHE IRWF.b) and
  streamed from the archive (header rewritten, pixel data copied: a 1 GB slide
  is never in memory). An instance is marked imported when the PACS answers that
  it stored it, so an import cut short (PACS down, crash) resumes with what is
  left; a repeat is harmless (STOW of the same instance replaces it).
* `viewer_links`: one link per study for the reviewer's assignment, to the
  series the viewer opens (the Web Viewer lists the study's other series beside
  it; a whole-slide series opens in the slide viewer). Orthanc names a series by
  the SHA-1 of "PatientID|StudyInstanceUID|SeriesInstanceUID" in five dashed
  groups of eight hex digits, which is what is computed, then checked once
  against the PACS (`GET /series/{id}`) before it is handed out.

The review PACS is the only place this module sends to: its URL comes from the
settings, not from any message.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
from prometheus_client import Counter

from services.records_fetch import domain
from services.records_fetch.archive import Archive
from services.records_fetch.domain import InstanceState
from services.records_fetch.reconcile import (
    Reconciled,
    ReconcileError,
    ReviewIdentity,
    identity_for,
    reconciled,
)
from services.records_fetch.store import FetchStore
from shared.events import ImageLink
from shared.store import Doc

# A STOW request holds at most this much (the PACS keeps a request in memory while
# it stores it); an instance larger than this goes alone.
BATCH_BYTES = 128 * 1024 * 1024
BATCH_INSTANCES = 100
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_SEQUENCE = "00081199"
REFERENCED_SOP_INSTANCE_UID = "00081155"
FAILURE_REASON = "00081197"


IMPORT_FAILURES = Counter(
    "records_fetch_review_import_failures",
    "Imports of a complete case's images into the review PACS that failed (retried)",
)


class ReviewImportFailed(Exception):
    """The review PACS could not take the case's images now (retried with backoff)."""


@dataclass(frozen=True)
class ReviewPacs:
    """Where to import (`base`: the PACS's REST root; DICOMweb at /dicom-web) and the
    root the reviewer's browser reaches it at (`viewer_base`)."""

    client: httpx.AsyncClient
    base: str
    viewer_base: str
    issuer: str

    async def import_case(
        self,
        store: FetchStore,
        archive: Archive,
        doc: Doc,
        instances: dict[str, Doc],
        now: datetime,
    ) -> list[ImageLink]:
        """Import what is not imported yet; each study imported, with its viewer link."""
        who = identity_for(doc["_id"], self.issuer, source="")
        received = [i for i in instances.values() if i.get("state") == InstanceState.RECEIVED]
        todo = [i for i in received if not i.get("review_imported")]
        for batch in _batches(todo):
            stored = await self._stow(archive, batch, who, now)
            await store.record_instances(
                doc["_id"], [(sop, {"review_imported": True}) for sop in stored]
            )
        links = await self.viewer_links(who, received)
        return [_image(doc, study_uid, url) for study_uid, url in sorted(links.items())]

    async def _stow(
        self, archive: Archive, batch: list[Doc], who: ReviewIdentity, now: datetime
    ) -> list[str]:
        boundary = uuid.uuid4().hex
        prepared: list[tuple[Doc, Reconciled]] = []
        for inst in batch:
            mine = dataclasses.replace(who, source=str(inst.get("provider_id", "")))
            try:
                rec = await asyncio.to_thread(_prepare, archive, inst, mine, now)
            except ReconcileError as exc:  # retried and shown like an outage, not a crash
                raise ReviewImportFailed(f"instance {inst.get('sop_uid', '?')}: {exc}") from None
            prepared.append((inst, rec))
        opening = b"--%s\r\nContent-Type: application/dicom\r\n\r\n" % boundary.encode()
        closing = b"--%s--\r\n" % boundary.encode()
        length = sum(len(opening) + r.size + 2 for _, r in prepared) + len(closing)
        body = _body(archive, prepared, opening, closing)
        try:
            resp = await self.client.post(
                f"{self.base}/dicom-web/studies",
                content=body,
                headers={
                    "Content-Type": f'multipart/related; type="application/dicom"; '
                    f"boundary={boundary}",
                    "Content-Length": str(length),
                    "Accept": "application/dicom+json",
                },
            )
        except httpx.TransportError as exc:
            raise ReviewImportFailed(f"review PACS unreachable ({type(exc).__name__})") from None
        return _stored(resp, [r.sop_uid for _, r in prepared])

    async def viewer_links(self, who: ReviewIdentity, received: list[Doc]) -> dict[str, str]:
        links: dict[str, str] = {}
        for study_uid, (series_uid, slide) in _viewer_series(received).items():
            sid = orthanc_series_id(who.patient_id, study_uid, series_uid)
            try:
                found = await self.client.get(f"{self.base}/series/{sid}")
            except httpx.TransportError as exc:
                raise ReviewImportFailed(
                    f"review PACS unreachable ({type(exc).__name__})"
                ) from None
            if found.status_code != 200:
                raise ReviewImportFailed(
                    f"a series imported is not in the review PACS (HTTP {found.status_code})"
                )
            app = "wsi/app/viewer.html" if slide else "web-viewer/app/viewer.html"
            links[study_uid] = f"{self.viewer_base}/{app}?series={sid}"
        return links


def orthanc_series_id(patient_id: str, study_uid: str, series_uid: str) -> str:
    digest = hashlib.sha1(f"{patient_id}|{study_uid}|{series_uid}".encode()).hexdigest()
    return "-".join(digest[i : i + 8] for i in range(0, 40, 8))


def _image(doc: Doc, study_uid: str, url: str) -> ImageLink:
    """What the reviewer sees of a study beside its link (from the provider's QIDO)."""
    study: Doc = next((s for s in doc.get("studies", []) if s.get("study_uid") == study_uid), {})
    return ImageLink(
        study_uid=study_uid,
        modality=",".join(study.get("modalities", [])),
        study_date=study.get("study_date", ""),
        description=study.get("description", ""),
        viewer_url=url,
    )


def _batches(todo: list[Doc]) -> Iterator[list[Doc]]:
    """Series by series (the order they were retrieved in), within the batch limits."""
    todo = sorted(todo, key=lambda i: (i.get("study_uid", ""), i.get("series_uid", "")))
    batch: list[Doc] = []
    size = 0
    series = None
    for inst in todo:
        key = (inst.get("study_uid"), inst.get("series_uid"))
        n = int(inst.get("size", 0))
        if batch and (key != series or size + n > BATCH_BYTES or len(batch) >= BATCH_INSTANCES):
            yield batch
            batch, size = [], 0
        batch.append(inst)
        size += n
        series = key
    if batch:
        yield batch


def _prepare(archive: Archive, inst: Doc, who: ReviewIdentity, now: datetime) -> Reconciled:
    sha = inst["sha256"]
    # The size recorded when the file was archived (content-addressed: it cannot have
    # changed); asking the archive is a HEAD per instance on S3.
    size = int(inst.get("size") or archive.size(sha))
    with archive.open(sha) as reader:
        return reconciled(reader, size, who, now)


async def _body(
    archive: Archive, prepared: list[tuple[Doc, Reconciled]], opening: bytes, closing: bytes
) -> AsyncIterator[bytes]:
    for inst, rec in prepared:
        yield opening
        with archive.open(inst["sha256"]) as reader:
            parts = rec.parts(reader)
            while (chunk := await asyncio.to_thread(next, parts, b"")) != b"":
                yield chunk
        yield b"\r\n"
    yield closing


def _stored(resp: httpx.Response, sent: list[str]) -> list[str]:
    """The SOP Instance UIDs the PACS says it stored (PS3.18 10.5.3: 200 all, 202
    some, 409 none); what it failed is an error with its DICOM failure reasons."""
    if resp.status_code >= 500 or resp.status_code in (401, 403, 404, 413, 415):
        raise ReviewImportFailed(f"review PACS refused the import (HTTP {resp.status_code})")
    try:
        answer: Any = resp.json() if resp.content else {}
    except ValueError:
        answer = {}
    if isinstance(answer, list):
        answer = answer[0] if answer else {}
    stored = [
        str(_value(i, REFERENCED_SOP_INSTANCE_UID)) for i in _items(answer, REFERENCED_SOP_SEQUENCE)
    ]
    if resp.status_code == 200 and not stored:
        stored = list(sent)  # a PACS that answers 200 without the list stored them all
    failed = _items(answer, FAILED_SOP_SEQUENCE)
    if failed or resp.status_code not in (200, 202):
        reasons = sorted({str(_value(i, FAILURE_REASON)) for i in failed})
        raise ReviewImportFailed(
            f"review PACS stored {len(stored)} of {len(sent)} instances "
            f"(HTTP {resp.status_code}, failure reasons {', '.join(reasons) or 'not given'})"
        )
    wanted = set(sent)
    return [s for s in stored if s in wanted]


def _items(obj: Any, tag: str) -> list[dict[str, Any]]:
    value = obj.get(tag, {}).get("Value", []) if isinstance(obj, dict) else []
    return [i for i in value if isinstance(i, dict)]


def _value(obj: dict[str, Any], tag: str) -> Any:
    values = obj.get(tag, {}).get("Value", [""])
    return values[0] if values else ""


def _viewer_series(received: list[Doc]) -> dict[str, tuple[str, bool]]:
    """Per study: the series a viewer opens first (a slide's, else the largest) and
    whether it is a whole-slide series."""
    counts: dict[str, dict[str, int]] = {}
    slides: set[str] = set()
    for inst in received:
        study, series = inst.get("study_uid", ""), inst.get("series_uid", "")
        if not study or not series:
            continue
        counts.setdefault(study, {}).setdefault(series, 0)
        counts[study][series] += 1
        if inst.get("sop_class") == domain.WSI_SOP_CLASS:
            slides.add(series)
    chosen: dict[str, tuple[str, bool]] = {}
    for study, per_series in counts.items():
        slide = sorted(s for s in per_series if s in slides)
        if slide:
            chosen[study] = (slide[0], True)
        else:
            best = max(sorted(per_series), key=lambda s: per_series[s])
            chosen[study] = (best, False)
    return chosen
