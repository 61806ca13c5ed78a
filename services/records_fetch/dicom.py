"""Reading a retrieved instance with pydicom and checking it (domain.check_instance).

Parsing is CPU and disk work, so it runs in a worker thread: a large study must
not stall the event loop that also serves the consumer and the HTTP API.

The bytes come from a provider's PACS and are untrusted: a declared element
length is only a claim. Large values (pixel data) are not loaded (`defer_size`;
only their stored length is measured), reads are clamped to what the file
holds (so a declared 4 GiB length cannot become a 4 GiB allocation), and a
top-level length that runs past the end of the file is reported as truncation.

Pixel data under an encapsulated transfer syntax (JPEG, JPEG 2000, RLE, ...) is
walked item by item (`encapsulation_problems`): it must have an undefined
length, begin with a Basic Offset Table item, hold at least one fragment and
end with a complete sequence delimiter; RLE Lossless adds one fragment per
frame, each beginning with the RLE header whose segment count and offsets fit
the image. A file declaring RLE Lossless with native (raw) pixel data, or cut
anywhere inside its fragments or delimiter, is refused.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import struct
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataelem import RawDataElement

from services.records_fetch.domain import InstanceCheck, check_instance

KEYWORDS = (
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "PatientID",
    "Modality",
    "BodyPartExamined",
    "SOPClassUID",
    "StudyDate",
    "Rows",
    "Columns",
    "BitsAllocated",
    "SamplesPerPixel",
    "NumberOfFrames",
)
# Values above this size stay on disk: the checks need their length, not their bytes.
DEFER_BYTES = 64 * 1024
UNDEFINED_LENGTH = 0xFFFFFFFF
ITEM, SEQUENCE_DELIMITER = 0xE000, 0xE0DD
RLE_LOSSLESS = "1.2.840.10008.1.2.5"
RLE_HEADER_BYTES = 64
# More items than any real image has: a loop bound, not a clinical limit.
MAX_ITEMS = 1_000_000


class ClampedReader(io.BufferedReader):
    """A file whose `read(n)` never asks for more than is left: CPython allocates
    the requested size up front, and pydicom requests the declared length."""

    def __init__(self, raw: io.FileIO, size: int) -> None:
        super().__init__(raw)
        self.size = size
        # pydicom takes a short read of an element header for the end of the file.
        self.cut_short = False

    def read(self, n: int | None = -1, /) -> bytes:
        if n is None or n <= 0:
            return super().read(n)
        left = max(0, self.size - self.tell())
        self.cut_short |= 0 < left < n
        return super().read(min(n, left)) if left else b""


def _stored_length(elem: Any, file_size: int) -> int:
    """Bytes of a value present in the file (less than declared if truncated)."""
    if isinstance(elem, RawDataElement) and elem.value is None and elem.value_tell is not None:
        return max(0, min(elem.length, file_size - elem.value_tell))
    return len(elem.value or b"")


def _past_the_end(ds: Any, file_size: int) -> list[str]:
    """Top-level elements whose declared length runs past the end of the file."""
    late = []
    for tag in sorted(ds.keys()):
        elem = ds.get_item(tag, keep_deferred=True)
        length, start = getattr(elem, "length", 0), getattr(elem, "value_tell", None)
        if start is not None and length != UNDEFINED_LENGTH and start + length > file_size:
            late.append(str(tag))
    return late


def read_attributes(path: Path) -> dict[str, Any]:
    """The attributes the checks need, plus the stored pixel data length."""
    size = path.stat().st_size
    with ClampedReader(io.FileIO(path, "rb"), size) as fp:
        ds = pydicom.dcmread(fp, defer_size=DEFER_BYTES)
        attrs: dict[str, Any] = {k: ds.get(k) for k in KEYWORDS}
        pixel = ds.get_item("PixelData", keep_deferred=True) if "PixelData" in ds else None
        attrs["_past_the_end"] = _past_the_end(ds, size)
        attrs["_cut_short"] = fp.cut_short
        attrs["_image_storage"] = "Image Storage" in getattr(ds.get("SOPClassUID"), "name", "")
        syntax = ds.file_meta.TransferSyntaxUID
        attrs["_encapsulation"] = (
            encapsulation_problems(fp, pixel, size, str(syntax), attrs)
            if pixel is not None and syntax.is_encapsulated
            else []
        )
        if pixel is not None and not syntax.is_encapsulated and _undefined(pixel):
            attrs["_encapsulation"] = ["encapsulated pixel data under a native transfer syntax"]
    attrs["_syntax"] = str(syntax)
    keys = ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "PatientID")
    for k in (*keys, "StudyDate", "Modality", "BodyPartExamined"):
        attrs[k] = str(attrs[k]) if attrs[k] else ""
    attrs["_pixel_bytes"] = _stored_length(pixel, size) if pixel is not None else None
    attrs["_compressed"] = bool(ds.file_meta.TransferSyntaxUID.is_compressed)
    return attrs


def _undefined(elem: Any) -> bool:
    return getattr(elem, "length", 0) == UNDEFINED_LENGTH or bool(
        getattr(elem, "is_undefined_length", False)
    )


def encapsulation_problems(
    fp: io.BufferedReader, pixel: Any, size: int, syntax: str, attrs: dict[str, Any]
) -> list[str]:
    """What is wrong with encapsulated pixel data (empty when it is well formed).

    Reads item headers only (8 bytes each) plus, for RLE, each fragment's
    64-byte header; fragments themselves are skipped, not loaded."""
    start = getattr(pixel, "value_tell", None)
    if not _undefined(pixel) or start is None:
        return [f"transfer syntax {syntax} needs encapsulated pixel data; it is native (raw)"]
    fragments: list[tuple[int, int]] = []  # (offset of the value, length)
    at, ended = int(start), False
    for n in range(MAX_ITEMS):
        fp.seek(at)
        header = fp.read(8)
        if len(header) < 8:
            break  # the file ends inside the pixel data or its delimiter
        group, element, length = struct.unpack("<HHI", header)
        if group != 0xFFFE or element not in (ITEM, SEQUENCE_DELIMITER):
            return ["encapsulated pixel data holds something other than items"]
        if element == SEQUENCE_DELIMITER:
            ended = length == 0
            if not ended:
                return ["encapsulated pixel data's delimiter has a length"]
            break
        if length == UNDEFINED_LENGTH or at + 8 + length > size:
            return ["an encapsulated fragment runs past the end of the file: truncated"]
        if n == 0:
            if length % 4:
                return ["the Basic Offset Table is not a list of 32-bit offsets"]
        else:
            fragments.append((at + 8, length))
        at += 8 + length
    if not ended:
        return ["the file ends inside the encapsulated pixel data: truncated"]
    if not fragments:
        return ["encapsulated pixel data holds no fragment"]
    if syntax == RLE_LOSSLESS:
        return _rle_problems(fp, fragments, attrs)
    return []


def _rle_problems(
    fp: io.BufferedReader, fragments: list[tuple[int, int]], attrs: dict[str, Any]
) -> list[str]:
    """PS3.5 Annex G: one fragment per frame, each opening with the RLE header."""
    try:
        frames = int(attrs.get("NumberOfFrames") or 1)
        segments = int(attrs.get("SamplesPerPixel") or 1) * ((int(attrs["BitsAllocated"]) + 7) // 8)
    except (KeyError, TypeError, ValueError):
        return ["RLE pixel data without the image's frame and sample layout"]
    if len(fragments) != frames:
        return [f"RLE pixel data has {len(fragments)} fragments for {frames} frames"]
    for offset, length in fragments:
        if length < RLE_HEADER_BYTES:
            return ["an RLE fragment is shorter than its header"]
        fp.seek(offset)
        header = struct.unpack("<16I", fp.read(RLE_HEADER_BYTES))
        count, starts = header[0], header[1 : 1 + min(header[0], 15)]
        if count != segments:
            return [f"an RLE frame declares {count} segments; the image needs {segments}"]
        bounds = [*starts, length]
        if starts[0] != RLE_HEADER_BYTES or any(a >= b for a, b in itertools.pairwise(bounds)):
            return ["an RLE frame's segment offsets do not fit its fragment"]
    return []


def inspect_file(
    path: Path,
    expected_sop_uid: str,
    expected_patient_id: str | None = None,
    *,
    decode: bool = False,
) -> InstanceCheck:
    try:
        attrs = read_attributes(path)
    # Untrusted bytes can fail pydicom in many ways; each one means "corrupt".
    except Exception as exc:
        return InstanceCheck(ok=False, problems=[f"not readable DICOM ({type(exc).__name__})"])
    return _checked(path, attrs, expected_sop_uid, expected_patient_id, decode)


def _checked(
    path: Path,
    attrs: dict[str, Any],
    expected_sop_uid: str,
    expected_patient_id: str | None,
    decode: bool,
) -> InstanceCheck:
    check = check_instance(attrs, expected_sop_uid, expected_patient_id)
    problems = [*check.problems, *_truncation(attrs), *attrs["_encapsulation"]]
    if decode and not problems and attrs["_compressed"] and attrs["_pixel_bytes"]:
        problems += decode_problems(path, attrs)
    return check.model_copy(update={"ok": not problems, "problems": problems})


def inspect_series_part(
    path: Path, study_uid: str, series_uid: str, patient_id: str, *, decode: bool = False
) -> tuple[str, InstanceCheck]:
    """One part of a series-level WADO-RS answer: the SOP Instance UID the file carries
    (which the caller matches against the QIDO listing) and its checks, which include
    that the file belongs to the study and series that were asked for."""
    try:
        attrs = read_attributes(path)
    except Exception as exc:
        return "", InstanceCheck(ok=False, problems=[f"not readable DICOM ({type(exc).__name__})"])
    sop = attrs["SOPInstanceUID"]
    check = _checked(path, attrs, sop, patient_id, decode)
    wrong = []
    if attrs["StudyInstanceUID"] != study_uid or attrs["SeriesInstanceUID"] != series_uid:
        wrong = ["the instance is not of the study and series asked for"]
    if wrong:
        problems = [*check.problems, *wrong]
        check = check.model_copy(update={"ok": False, "problems": problems})
    return sop, check


# Transfer syntaxes whose frames are decoded by the checks (a sample of them), with
# the decoders installed (pylibjpeg with libjpeg, openjpeg and RLE; pydicom's own RLE).
DECODED_SYNTAXES = {
    "1.2.840.10008.1.2.4.50": "JPEG Baseline",
    "1.2.840.10008.1.2.4.51": "JPEG Extended",
    "1.2.840.10008.1.2.4.57": "JPEG Lossless",
    "1.2.840.10008.1.2.4.70": "JPEG Lossless SV1",
    "1.2.840.10008.1.2.4.80": "JPEG-LS Lossless",
    "1.2.840.10008.1.2.4.81": "JPEG-LS Near-Lossless",
    "1.2.840.10008.1.2.4.90": "JPEG 2000 Lossless",
    "1.2.840.10008.1.2.4.91": "JPEG 2000",
    "1.2.840.10008.1.2.4.201": "HTJ2K Lossless",
    "1.2.840.10008.1.2.4.203": "HTJ2K",
    "1.2.840.10008.1.2.5": "RLE Lossless",
}
# Frames decoded per checked instance: the first, the middle and the last.
SAMPLE_FRAMES = 3


def _decoder_available(syntax: str) -> bool:
    from pydicom.pixels import get_decoder

    try:
        return bool(get_decoder(syntax).is_available)
    except (NotImplementedError, ValueError):
        return False


def decode_problems(path: Path, attrs: dict[str, Any]) -> list[str]:
    """Decode a sample of the frames of compressed pixel data; what fails, as problems.

    A syntax without an installed decoder is said so (the structure is still walked
    by `encapsulation_problems`), never reported as decoded."""
    syntax = attrs["_syntax"]
    if syntax not in DECODED_SYNTAXES or not _decoder_available(syntax):
        return []  # the encapsulation walk still ran; nothing claims a decode
    frames = int(attrs.get("NumberOfFrames") or 1)
    picks = sorted({0, frames // 2, frames - 1})[:SAMPLE_FRAMES]
    try:
        from pydicom.pixels import iter_pixels

        for arr in iter_pixels(path, indices=picks):
            rows, cols = int(attrs["Rows"]), int(attrs["Columns"])
            if arr.shape[:2] != (rows, cols):
                return [f"a decoded frame is {arr.shape[:2]}, the header says {(rows, cols)}"]
    except Exception as exc:  # untrusted bytes: any decoder failure means corrupt
        return [f"compressed frame does not decode ({type(exc).__name__})"]
    return []


def _truncation(attrs: dict[str, Any]) -> list[str]:
    """Signs of a cut file that pydicom itself reads as a shorter, valid one."""
    found = []
    if attrs["_past_the_end"]:
        late = ", ".join(attrs["_past_the_end"][:5])
        found.append(f"declared length runs past the end of the file ({late}): truncated")
    elif attrs["_cut_short"]:
        found.append("the file ends inside an element: truncated")
    if attrs["_image_storage"] and attrs["_pixel_bytes"] is None and not attrs.get("Rows"):
        found.append("an image without pixel data (truncated?)")
    return found


async def inspect(
    path: Path, expected_sop_uid: str, expected_patient_id: str | None = None
) -> InstanceCheck:
    return await asyncio.to_thread(
        inspect_file, path, expected_sop_uid, expected_patient_id, decode=True
    )
