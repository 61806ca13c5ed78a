"""Import reconciliation (IHE IRWF.b) of an instance for the review PACS, and what
records_fetch makes of a STOW-RS answer. The rules are the profile's and PS3.3's
(Other Patient IDs Sequence, Original Attributes Sequence with reason COERCE),
checked on files pydicom writes and reads back; the integration test
(tests/integration/test_review_pacs.py) shows the same against a real Orthanc."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from services.records_fetch import reconcile, review_pacs
from services.records_fetch.archive import LocalArchive
from services.records_fetch.reconcile import ReconcileError, ReviewIdentity

NOW = datetime(2026, 12, 4, 9, 30, tzinfo=UTC)
WHO = ReviewIdentity(
    patient_id="SO-0123456789abcdef0123",
    issuer="REVIEW-ORG",
    accession="SO0123456789abcd",
    source="st-mary-imaging",
)


def instance(
    *,
    pixels: bytes | None = b"\x01\x02" * 64 * 64,
    syntax: str = ExplicitVRLittleEndian,
    issuer: str = "",
    private_bytes: int = 0,
) -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    ds.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.2")
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName, ds.AccessionNumber = "MRN-4711", "Doe^Jane", "ACC-99"
    if issuer:
        ds.IssuerOfPatientID = issuer
    ds.Modality = "CT"
    request = Dataset()
    request.AccessionNumber = "ACC-99"
    request.RequestedProcedureID = "RP1"
    ds.RequestAttributesSequence = Sequence([request])
    if private_bytes:  # a long header (e.g. a private block) before the pixel data
        block = ds.private_block(0x0029, "TEST", create=True)
        block.add_new(0x10, "OB", b"\x00" * private_bytes)
    if pixels is not None:
        ds.Rows = ds.Columns = 64
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.PixelData = pixels
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def through(blob: bytes) -> Dataset:
    """What the review PACS receives: the reconciled header, then the original tail."""
    rec = reconcile.reconciled(io.BytesIO(blob), len(blob), WHO, NOW)
    sent = b"".join(rec.parts(io.BytesIO(blob)))
    assert len(sent) == rec.size
    return pydicom.dcmread(io.BytesIO(sent))


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_the_review_organisations_ids_replace_the_originals_which_are_kept(syntax: str) -> None:
    blob = instance(syntax=syntax, issuer="urn:oid:1.2.3.4")
    ds = through(blob)
    assert (ds.PatientID, ds.IssuerOfPatientID) == ("SO-0123456789abcdef0123", "REVIEW-ORG")
    [other] = ds.OtherPatientIDsSequence
    assert (other.PatientID, other.IssuerOfPatientID, other.TypeOfPatientID) == (
        "MRN-4711",
        "urn:oid:1.2.3.4",
        "TEXT",
    )
    assert ds.AccessionNumber == "SO0123456789abcd"
    assert ds.IssuerOfAccessionNumberSequence[0].LocalNamespaceEntityID == "REVIEW-ORG"
    assert ds.RequestAttributesSequence[0].AccessionNumber == "SO0123456789abcd"
    [change] = ds.OriginalAttributesSequence
    assert change.ReasonForTheAttributeModification == "COERCE"
    assert change.SourceOfPreviousValues == "st-mary-imaging"
    assert change.AttributeModificationDateTime.startswith("20261204093000")
    [before] = change.ModifiedAttributesSequence
    assert (before.PatientID, before.IssuerOfPatientID, before.AccessionNumber) == (
        "MRN-4711",
        "urn:oid:1.2.3.4",
        "ACC-99",
    )
    assert before.RequestAttributesSequence[0].AccessionNumber == "ACC-99"
    original = pydicom.dcmread(io.BytesIO(blob))
    assert ds.PixelData == original.PixelData
    for keyword in ("PatientName", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        assert ds.get(keyword) == original.get(keyword)
    assert ds.file_meta.TransferSyntaxUID == syntax


def test_without_an_issuer_the_original_id_is_attributed_to_its_provider() -> None:
    [other] = through(instance()).OtherPatientIDsSequence
    assert (other.PatientID, other.IssuerOfPatientID) == ("MRN-4711", "st-mary-imaging")


def test_reconciling_twice_keeps_one_record_of_the_original_patient_id() -> None:
    ds = through(instance())
    again = io.BytesIO()
    ds.save_as(again, enforce_file_format=True)
    blob = again.getvalue()
    twice = pydicom.dcmread(
        io.BytesIO(
            b"".join(
                reconcile.reconciled(io.BytesIO(blob), len(blob), WHO, NOW).parts(io.BytesIO(blob))
            )
        )
    )
    assert [o.PatientID for o in twice.OtherPatientIDsSequence] == [
        "MRN-4711",
        "SO-0123456789abcdef0123",
    ]
    assert len(twice.OriginalAttributesSequence) == 2


def test_a_header_longer_than_the_first_read_is_read_further() -> None:
    blob = instance(private_bytes=reconcile.FIRST_READ + 100_000)
    rec = reconcile.reconciled(io.BytesIO(blob), len(blob), WHO, NOW)
    assert rec.tail_from > reconcile.FIRST_READ
    assert pydicom.dcmread(io.BytesIO(b"".join(rec.parts(io.BytesIO(blob))))).PixelData


def test_an_instance_without_pixel_data_is_all_header() -> None:
    blob = instance(pixels=None)
    rec = reconcile.reconciled(io.BytesIO(blob), len(blob), WHO, NOW)
    assert rec.tail_from == -1 and rec.size == len(rec.header)
    assert through(blob).PatientID == WHO.patient_id


def test_what_is_not_dicom_is_a_clear_error() -> None:
    junk = b"not a dicom file" * 10
    with pytest.raises(ReconcileError, match="not a readable DICOM file"):
        reconcile.reconciled(io.BytesIO(junk), len(junk), WHO, NOW)


def test_the_case_gives_ids_that_fit_their_value_representations() -> None:
    who = reconcile.identity_for("case-0123456789abcdef0123", "ORG", "p")
    assert who.patient_id == "SO-0123456789abcdef0123" and len(who.patient_id) <= 64  # LO
    assert who.accession == "SO0123456789abcd" and len(who.accession) == 16  # SH


# ---------------------------------------------------------------- the STOW-RS answer


def answer(status: int, stored: list[str], failed: list[tuple[str, int]]) -> httpx.Response:
    body = {
        review_pacs.REFERENCED_SOP_SEQUENCE: {
            "vr": "SQ",
            "Value": [{"00081155": {"vr": "UI", "Value": [uid]}} for uid in stored],
        },
        review_pacs.FAILED_SOP_SEQUENCE: {
            "vr": "SQ",
            "Value": [
                {"00081155": {"vr": "UI", "Value": [u]}, "00081197": {"vr": "US", "Value": [r]}}
                for u, r in failed
            ],
        },
    }
    return httpx.Response(status, json=body)


def test_all_stored_is_every_instance_sent() -> None:
    assert review_pacs._stored(answer(200, ["1.1", "1.2"], []), ["1.1", "1.2"]) == ["1.1", "1.2"]


def test_some_failed_is_an_error_naming_the_dicom_failure_reasons() -> None:
    with pytest.raises(review_pacs.ReviewImportFailed, match=r"stored 1 of 2 .*HTTP 202.*43264"):
        review_pacs._stored(answer(202, ["1.1"], [("1.2", 0xA900)]), ["1.1", "1.2"])


@pytest.mark.parametrize("status", [409, 413, 503])
def test_a_refusal_is_an_error_with_the_status(status: int) -> None:
    with pytest.raises(review_pacs.ReviewImportFailed, match=f"HTTP {status}"):
        review_pacs._stored(answer(status, [], [("1.1", 0xC000)]), ["1.1"])


def test_batches_follow_series_and_stay_under_the_size_limit() -> None:
    big = review_pacs.BATCH_BYTES // 2 + 1
    todo = [
        {"study_uid": "1", "series_uid": "a", "size": big, "sop_uid": "a1"},
        {"study_uid": "1", "series_uid": "a", "size": big, "sop_uid": "a2"},
        {"study_uid": "1", "series_uid": "b", "size": 10, "sop_uid": "b1"},
        {"study_uid": "1", "series_uid": "b", "size": 10, "sop_uid": "b2"},
    ]
    batches = [[i["sop_uid"] for i in b] for b in review_pacs._batches(todo)]
    assert batches == [["a1"], ["a2"], ["b1", "b2"]]


def test_a_study_opens_on_its_slide_series_else_its_largest() -> None:
    received = [
        {"study_uid": "1", "series_uid": "scout", "sop_class": "ct"},
        {"study_uid": "1", "series_uid": "axial", "sop_class": "ct"},
        {"study_uid": "1", "series_uid": "axial", "sop_class": "ct"},
        {"study_uid": "2", "series_uid": "label", "sop_class": "sc"},
        {"study_uid": "2", "series_uid": "label", "sop_class": "sc"},
        {"study_uid": "2", "series_uid": "slide", "sop_class": review_pacs.domain.WSI_SOP_CLASS},
    ]
    assert review_pacs._viewer_series(received) == {"1": ("axial", False), "2": ("slide", True)}


async def test_an_archived_file_that_cannot_be_reconciled_is_a_retried_import_error(
    tmp_path: Path,
) -> None:
    """A damaged archive file ends the import with an error naming the instance (the
    case waits in `importing` and is retried, as for an outage), not an exception
    that kills the attempt; nothing is sent to the PACS."""
    archive = LocalArchive(tmp_path / "archive")
    incoming = archive.incoming()
    incoming.write(b"not a dicom file" * 10)
    sha, _ = archive.commit(incoming)
    sent: list[httpx.Request] = []

    def pacs(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200)

    client = httpx.AsyncClient(transport=httpx.MockTransport(pacs))
    review = review_pacs.ReviewPacs(client, "http://review", "http://review", "ORG")
    inst = {"sop_uid": "1.2.3", "study_uid": "1", "series_uid": "a", "sha256": sha, "size": 160}
    batch = [{**inst, "state": "received", "provider_id": "pacs"}]
    who = reconcile.identity_for("case-0123456789abcdef0123", "ORG", "")
    with pytest.raises(
        review_pacs.ReviewImportFailed, match=r"instance 1\.2\.3: .*not a readable DICOM"
    ):
        await review._stow(archive, batch, who, NOW)
    assert sent == []
    await client.aclose()
