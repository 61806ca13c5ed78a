"""Adapters to the providers' systems: QIDO-RS and WADO-RS on the PACS, search
on the FHIR endpoint. Only URLs built from the registry are called (a paging
link outside the registered base is refused); redirects are not followed (the
client is built with follow_redirects=False); failures of the peer are
`ProviderUnavailable` (retried later), never a lost case.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import httpx

from services.records_fetch import identifiers, multipart
from services.records_fetch.archive import Archive, IncomingFile, SpoolWriter
from services.records_fetch.domain import FHIR_TYPES, within_base
from services.records_fetch.identifiers import FOREIGN_REFUSED
from shared.errors import ProviderUnavailable, UnregisteredEndpoint
from shared.events import RecordKind

DICOM_JSON = "application/dicom+json"
FHIR_JSON = "application/fhir+json"
# transfer-syntax=*: the instances as the PACS stores them (a JPEG 2000 study stays
# JPEG 2000; without it a PACS transcodes, or refuses what it cannot decode).
WADO_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
# A FHIR search that pages on and on is a misbehaving peer, not a chart.
MAX_FHIR_PAGES = 50

# QIDO-RS attribute tags (DICOM JSON keys).
STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"
STUDY_DATE, MODALITIES, N_INSTANCES, MODALITY = "00080020", "00080061", "00201208", "00080060"
STUDY_DESCRIPTION = "00081030"
PATIENT_ID = "00100020"


def _unavailable(exc: httpx.TransportError) -> ProviderUnavailable:
    return ProviderUnavailable(f"provider unreachable: {type(exc).__name__}")


def _check_status(resp: httpx.Response) -> None:
    if resp.status_code >= 500 or resp.status_code in (408, 429):
        raise ProviderUnavailable(f"provider answered {resp.status_code}")
    if 300 <= resp.status_code < 400:
        raise UnregisteredEndpoint("provider answered with a redirect; not followed")


# The peer closed a pooled connection under us (a keep-alive race, or a busy PACS
# dropping one): a GET is idempotent, so it is sent once more on a new connection
# before the provider counts as unreachable. A refused connection or a timeout is not
# retried here: the case's re-request schedule handles a provider that is down.
DROPPED = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


async def get_json(
    client: httpx.AsyncClient, url: str, params: dict[str, Any] | None, accept: str
) -> Any:
    try:
        try:
            resp = await client.get(url, params=params, headers={"Accept": accept})
        except DROPPED:
            resp = await client.get(url, params=params, headers={"Accept": accept})
    except httpx.TransportError as exc:
        raise _unavailable(exc) from None
    _check_status(resp)
    if resp.status_code in (204, 404) or not resp.content:
        return None
    resp.raise_for_status()
    return resp.json()


def tag(obj: dict[str, Any], key: str) -> Any:
    values = (obj.get(key) or {}).get("Value") or []
    return values[0] if len(values) == 1 else (values or None)


@dataclass(frozen=True)
class QidoStudy:
    study_uid: str
    study_date: str
    modalities: list[str]
    expected: int
    description: str = ""


@dataclass(frozen=True)
class QidoInstance:
    study_uid: str
    series_uid: str
    sop_uid: str
    modality: str


@dataclass(frozen=True)
class Refused:
    """Something a provider returned that is not kept: for another patient (or for no
    patient named), or with an identifier outside its grammar. Says what and why,
    never the foreign identifiers themselves."""

    source: str  # "qido_study", "qido_instance", "instance", "fhir"
    reason: str
    resource_type: str = ""


T = TypeVar("T")


@dataclass
class Found(Generic[T]):
    """What a search returned that belongs to the patient, and what was refused."""

    items: list[T]
    refused: list[Refused]


def _refused(source: str, reason: str, resource_type: str = "") -> Refused:
    FOREIGN_REFUSED.labels(source=source).inc()
    return Refused(source=source, reason=reason, resource_type=resource_type)


async def find_studies(client: httpx.AsyncClient, base: str, patient_id: str) -> Found[QidoStudy]:
    """The patient's studies (all dates: the prior studies come with the current one).

    The Patient ID is checked before the request (RefusedIdentifier: no wildcard,
    no list) and sent as one escaped value; a study the PACS answers for another
    patient, or with a UID outside the UID grammar, is refused."""
    patient_id = identifiers.dicom_patient_id(patient_id)
    params = {
        "PatientID": patient_id,
        "includefield": [PATIENT_ID, STUDY_DATE, MODALITIES, N_INSTANCES, STUDY_DESCRIPTION],
    }
    found = await get_json(client, f"{base}/studies", params, DICOM_JSON) or []
    result: Found[QidoStudy] = Found([], [])
    for s in found if isinstance(found, list) else []:
        if not identifiers.same_dicom_patient(tag(s, PATIENT_ID), patient_id):
            result.refused.append(_refused("qido_study", "study of another patient"))
            continue
        study_uid = tag(s, STUDY_UID)
        if not identifiers.is_dicom_uid(study_uid):
            result.refused.append(_refused("qido_study", "study UID not of the UID grammar"))
            continue
        mods = tag(s, MODALITIES) or []
        result.items.append(
            QidoStudy(
                study_uid=str(study_uid),
                study_date=str(tag(s, STUDY_DATE) or ""),
                modalities=[mods] if isinstance(mods, str) else list(mods),
                expected=int(tag(s, N_INSTANCES) or 0),
                description=str(tag(s, STUDY_DESCRIPTION) or "")[:200],
            )
        )
    return result


@dataclass(frozen=True)
class QidoSeries:
    study_uid: str
    series_uid: str
    expected: int  # Number of Series Related Instances, as the PACS says


N_SERIES_INSTANCES = "00201209"


async def find_series(client: httpx.AsyncClient, base: str, study_uid: str) -> Found[QidoSeries]:
    """The study's series with their instance counts (a quick search: the PACS
    answers it from its index, while an instance listing may read every file)."""
    study_uid = identifiers.dicom_uid(study_uid, "study UID")
    url = f"{base}/studies/{study_uid}/series"
    found = await get_json(client, url, {"includefield": N_SERIES_INSTANCES}, DICOM_JSON) or []
    result: Found[QidoSeries] = Found([], [])
    for s in found if isinstance(found, list) else []:
        series_uid = tag(s, SERIES_UID)
        if not identifiers.is_dicom_uid(series_uid):
            result.refused.append(_refused("qido_series", "series UID not of the UID grammar"))
            continue
        count = tag(s, N_SERIES_INSTANCES)
        result.items.append(
            QidoSeries(study_uid, str(series_uid), int(count) if isinstance(count, int) else 0)
        )
    return result


async def find_instances(
    client: httpx.AsyncClient, base: str, study_uid: str, patient_id: str
) -> Found[QidoInstance]:
    """The study's instances; one for another patient or with a bad UID is refused."""
    study_uid = identifiers.dicom_uid(study_uid, "study UID")
    url = f"{base}/studies/{study_uid}/instances"
    found = await get_json(client, url, {"includefield": PATIENT_ID}, DICOM_JSON) or []
    result: Found[QidoInstance] = Found([], [])
    for i in found if isinstance(found, list) else []:
        pid = tag(i, PATIENT_ID)
        # A PACS may leave patient attributes out of an instance-level answer; when
        # it gives one it must be the patient's (the stored file is checked too).
        if pid is not None and not identifiers.same_dicom_patient(pid, patient_id):
            result.refused.append(_refused("qido_instance", "instance of another patient"))
            continue
        series_uid, sop_uid = tag(i, SERIES_UID), tag(i, SOP_UID)
        if not (identifiers.is_dicom_uid(series_uid) and identifiers.is_dicom_uid(sop_uid)):
            result.refused.append(_refused("qido_instance", "UID not of the UID grammar"))
            continue
        result.items.append(
            QidoInstance(
                study_uid=study_uid,
                series_uid=str(series_uid),
                sop_uid=str(sop_uid),
                modality=str(tag(i, MODALITY) or ""),
            )
        )
    return result


async def retrieve_instance(
    client: httpx.AsyncClient, base: str, inst: QidoInstance, archive: Archive
) -> IncomingFile:
    """WADO-RS one instance, streamed part by part into the archive's intake.

    Returns the complete file (not yet committed); raises MultipartError for a
    malformed or truncated body, ProviderUnavailable if the peer fails."""
    uids = [identifiers.dicom_uid(u) for u in (inst.study_uid, inst.series_uid, inst.sop_uid)]
    url = "{}/studies/{}/series/{}/instances/{}".format(base, *uids)
    for last_try in (False, True):
        incoming = archive.incoming()
        try:
            async with client.stream("GET", url, headers={"Accept": WADO_ACCEPT}) as resp:
                _check_status(resp)
                resp.raise_for_status()
                await _stream_first_part(resp, incoming)
        except DROPPED as exc:
            incoming.discard()
            if last_try:
                raise _unavailable(exc) from None
            continue  # see DROPPED
        except httpx.TransportError as exc:
            incoming.discard()
            raise _unavailable(exc) from None
        except BaseException:
            incoming.discard()
            raise
        return incoming
    raise AssertionError("not reached")


class SeriesRefused(Exception):
    """The PACS does not serve the series as a whole (4xx): fetch it instance by instance."""


async def stream_series(
    client: httpx.AsyncClient, base: str, study_uid: str, series_uid: str, archive: Archive
) -> AsyncIterator[IncomingFile]:
    """WADO-RS one whole series, parsed as it arrives: each part is streamed into its
    own intake file and yielded once its closing delimiter has been read (its bytes
    handed to the stream's SpoolWriter, which writes and hashes them in its own
    thread: `incoming.settle()` waits for that; not yet fsynced or committed).
    Memory is bounded by the reader's buffer and the writer's pending bytes,
    whatever the series' size.

    Raises SeriesRefused when the PACS answers 4xx (no series-level retrieval),
    MultipartError when the body is malformed or cut (the parts already yielded
    are whole), ProviderUnavailable when the peer fails."""
    uids = [identifiers.dicom_uid(u) for u in (study_uid, series_uid)]
    url = "{}/studies/{}/series/{}".format(base, *uids)
    incoming: IncomingFile | None = None
    writer = SpoolWriter()
    try:
        async with client.stream("GET", url, headers={"Accept": WADO_ACCEPT}) as resp:
            _check_status(resp)
            if 400 <= resp.status_code < 500:
                raise SeriesRefused(f"series-level retrieval answered {resp.status_code}")
            reader = multipart.MultipartReader(
                multipart.boundary_of(resp.headers.get("content-type", ""))
            )
            async for chunk in resp.aiter_bytes():
                for event in reader.feed(chunk):
                    if isinstance(event, multipart.PartStart):
                        incoming = archive.incoming()
                    elif isinstance(event, multipart.PartData) and incoming is not None:
                        writer.write(incoming, event.data)
                    elif isinstance(event, multipart.PartEnd) and incoming is not None:
                        writer.end(incoming)
                        done, incoming = incoming, None
                        yield done
                await writer.drained()
            reader.close()
    except httpx.TransportError as exc:
        raise _unavailable(exc) from None
    finally:
        if incoming is not None:  # a part cut off: never committed
            writer.end(incoming)
            incoming.discard()
        await asyncio.to_thread(writer.close)


async def _stream_first_part(resp: httpx.Response, incoming: IncomingFile) -> None:
    reader = multipart.MultipartReader(multipart.boundary_of(resp.headers.get("content-type", "")))
    parts = 0
    async for chunk in resp.aiter_bytes():
        for event in reader.feed(chunk):
            if isinstance(event, multipart.PartStart):
                parts += 1
            elif isinstance(event, multipart.PartData) and parts == 1:
                incoming.write(event.data)
    reader.close()
    if parts == 0:
        raise multipart.MultipartError("no part in the response")


async def search_fhir(
    client: httpx.AsyncClient, base: str, patient_id: str, kind: RecordKind
) -> Found[dict[str, Any]]:
    """Every resource of `kind` for the patient, following `next` links within `base`.

    The id is checked against the FHIR id grammar before any request and sent as
    the one value `subject=Patient/<id>`; a resource that does not name this
    patient as its `subject` (or `patient`) is refused, not returned."""
    patient_id = identifiers.fhir_patient_id(patient_id)
    result: Found[dict[str, Any]] = Found([], [])
    for rtype in FHIR_TYPES.get(kind, ()):
        url: str | None = f"{base}/{rtype}"
        params: dict[str, Any] | None = {"subject": f"Patient/{patient_id}", "_count": "100"}
        for _ in range(MAX_FHIR_PAGES):
            if url is None:
                break
            bundle = await get_json(client, url, params, FHIR_JSON) or {}
            for entry in bundle.get("entry") or []:
                resource = entry.get("resource") if isinstance(entry, dict) else None
                if not isinstance(resource, dict):
                    continue
                rt = str(resource.get("resourceType", ""))
                if rt == "OperationOutcome":  # the server's remarks on the search
                    continue
                if rt != rtype:
                    result.refused.append(_refused("fhir", f"not a {rtype}", rt[:64]))
                elif not identifiers.belongs_to(resource, patient_id):
                    result.refused.append(_refused("fhir", "resource of another patient", rt))
                else:
                    result.items.append(resource)
            url, params = _next_link(bundle, base), None
    return result


def _next_link(bundle: dict[str, Any], base: str) -> str | None:
    link = next(
        (x.get("url") for x in bundle.get("link") or [] if x.get("relation") == "next"), None
    )
    if not link:
        return None
    if not within_base(str(link), base):
        raise UnregisteredEndpoint("FHIR paging link points outside the registered endpoint")
    return str(link)
