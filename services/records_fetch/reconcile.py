"""Import reconciliation of a retrieved instance for the review organisation's PACS,
as IHE Radiology's Import Reconciliation Workflow (IRWF.b) asks of an importer.

The originating organisation's identifiers mean nothing in the review PACS and
may collide with another patient's there, so:

* Patient ID (0010,0020) and Issuer of Patient ID (0010,0021) become the review
  organisation's (one patient identity per case: the review organisation keeps
  no master patient index); the originating pair is kept as an item of Other
  Patient IDs Sequence (0010,1002).
* Accession Number (0008,0050) becomes the review organisation's order (the
  case), with Issuer of Accession Number Sequence (0008,0051) naming it; the
  Accession Number inside Request Attributes Sequence (0040,0275) likewise.
* Every replaced value is kept, as it was, in Original Attributes Sequence
  (0400,0561) with the time, the modifying system, where the values came from
  and the reason COERCE (PS3.3 C.12.1: "replace values of attributes such as
  Patient Name, ID, Accession Number ... during import of media from an
  external institution").

UIDs, names, dates and the images themselves are kept as they are.

Only the header is rewritten: the pixel data (the bulk of a 0.5 MB slice, all of a
1 GB slide) is copied byte for byte from the archived file behind the new header,
so an instance is never held whole in memory (`Reconciled.parts`).
"""

from __future__ import annotations

import copy
import io
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from services.records_fetch.archive import Reader

MODIFYING_SYSTEM = "second-opinion-router records_fetch"
REASON = "COERCE"  # PS3.3 C.12.1.1.9: import of media from an external institution
DEFLATED = "1.2.840.10008.1.2.1.99"
PIXEL_GROUP = b"\xe0\x7f"  # (7FE0,xxxx) little endian: Pixel Data, Float/Double Float Pixel Data
# How much of a file is read to find the end of its header; doubled until found.
FIRST_READ = 256 * 1024
MAX_HEADER = 256 * 1024 * 1024
CHUNK = 1 << 20


class ReconcileError(ValueError):
    """An archived instance that cannot be reconciled (it was checked when retrieved,
    so this is a bug or a damaged archive, not the provider's doing)."""


@dataclass(frozen=True)
class ReviewIdentity:
    """Who the patient and the order are in the review organisation."""

    patient_id: str
    issuer: str
    accession: str
    source: str  # where the replaced values came from (the provider's name)


def identity_for(case_id: str, issuer: str, source: str) -> ReviewIdentity:
    """The review organisation's patient id is its case (LO: 64 characters); the
    accession number is the case too, shortened to SH's 16 characters."""
    key = case_id.removeprefix("case-")
    return ReviewIdentity(
        patient_id=f"SO-{key}"[:64], issuer=issuer, accession=f"SO{key}"[:16], source=source
    )


def reconcile(ds: Dataset, who: ReviewIdentity, now: datetime) -> None:
    """Reconcile the dataset's identifiers in place (see the module doc)."""
    original = Dataset()
    for keyword in ("PatientID", "IssuerOfPatientID", "AccessionNumber"):
        if keyword in ds:
            setattr(original, keyword, getattr(ds, keyword))
    for keyword in ("IssuerOfAccessionNumberSequence", "RequestAttributesSequence"):
        if keyword in ds:
            setattr(original, keyword, copy.deepcopy(getattr(ds, keyword)))

    old_id = str(ds.get("PatientID", ""))
    if old_id and not _already_other(ds, old_id, str(ds.get("IssuerOfPatientID", ""))):
        other = Dataset()
        other.PatientID = old_id
        other.IssuerOfPatientID = str(ds.get("IssuerOfPatientID", "")) or who.source
        other.TypeOfPatientID = "TEXT"
        ds.OtherPatientIDsSequence = Sequence([*ds.get("OtherPatientIDsSequence", []), other])

    ds.PatientID = who.patient_id
    ds.IssuerOfPatientID = who.issuer
    ds.AccessionNumber = who.accession
    issuer = Dataset()
    issuer.LocalNamespaceEntityID = who.issuer
    ds.IssuerOfAccessionNumberSequence = Sequence([issuer])
    for item in ds.get("RequestAttributesSequence", []):
        if "AccessionNumber" in item:
            item.AccessionNumber = who.accession

    modified = Dataset()
    modified.ModifiedAttributesSequence = Sequence([original])
    modified.AttributeModificationDateTime = now.strftime("%Y%m%d%H%M%S.%f")[:21] + "+0000"
    modified.ModifyingSystem = MODIFYING_SYSTEM
    modified.SourceOfPreviousValues = who.source[:64]
    modified.ReasonForTheAttributeModification = REASON
    ds.OriginalAttributesSequence = Sequence([*ds.get("OriginalAttributesSequence", []), modified])


def _already_other(ds: Dataset, pid: str, issuer: str) -> bool:
    return any(
        str(o.get("PatientID", "")) == pid and str(o.get("IssuerOfPatientID", "")) == issuer
        for o in ds.get("OtherPatientIDsSequence", [])
    )


@dataclass(frozen=True)
class Reconciled:
    """One instance ready to send: its rewritten header, then the original file's bytes
    from `tail_from` on (the pixel data and anything after it), `size` bytes in all."""

    sop_uid: str
    header: bytes
    tail_from: int
    size: int

    def parts(self, reader: Reader) -> Iterator[bytes]:
        """The instance's bytes: the new header, then the tail, read from `reader` (the
        archived file opened afresh) in 1 MiB chunks."""
        yield self.header
        if self.tail_from < 0:
            return
        skip = self.tail_from
        while skip:
            got = reader.read(min(skip, CHUNK))
            if not got:
                raise ReconcileError("the archived file ended before its pixel data")
            skip -= len(got)
        while chunk := reader.read(CHUNK):
            yield chunk


def reconciled(reader: Reader, file_size: int, who: ReviewIdentity, now: datetime) -> Reconciled:
    """Read the archived instance's header (only as much of the file as that takes),
    reconcile it and encode it again. `reader` is consumed."""
    prefix = bytearray()
    want = FIRST_READ
    while True:
        while len(prefix) < want and (got := reader.read(min(CHUNK, want - len(prefix)))):
            prefix += got
        whole = len(prefix) >= file_size
        found = _header_end(bytes(prefix), whole)
        if found is not None:
            ds, end = found
            break
        if whole or want >= MAX_HEADER:
            raise ReconcileError("no end of the header found in the archived file")
        want *= 2
    if str(ds.file_meta.get("TransferSyntaxUID", "")) == DEFLATED:
        raise ReconcileError("deflated transfer syntax: the header cannot be rewritten apart")
    for elem in list(ds):
        if elem.tag.element == 0:  # retired group lengths would be wrong after the change
            del ds[elem.tag]
    reconcile(ds, who, now)
    out = io.BytesIO()
    pydicom.dcmwrite(out, ds, enforce_file_format=True)
    header = out.getvalue()
    tail = -1 if end is None else end
    size = len(header) + (0 if end is None else file_size - end)
    return Reconciled(str(ds.SOPInstanceUID), header, tail, size)


def _header_end(prefix: bytes, whole: bool) -> tuple[Dataset, int | None] | None:
    """The dataset up to its pixel data and the offset where the pixel data starts
    (None: the file has none and `prefix` is all of it); None if `prefix` is too short."""
    fp = io.BytesIO(prefix)
    try:
        ds = pydicom.dcmread(fp, stop_before_pixels=True)
    except Exception:
        if whole:
            raise ReconcileError("the archived file is not a readable DICOM file") from None
        return None
    at = fp.tell()
    if prefix[at : at + 2] == PIXEL_GROUP and len(prefix) >= at + 4:
        return ds, at
    if whole and at >= len(prefix):
        return ds, None
    return None
