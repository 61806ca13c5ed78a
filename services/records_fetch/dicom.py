"""Reading a retrieved instance with pydicom and checking it (domain.check_instance).

Parsing is CPU and disk work, so it runs in a worker thread: a large study must
not stall the event loop that also serves the consumer and the HTTP API.

The bytes come from a provider's PACS and are untrusted: a declared element
length is only a claim. Large values (pixel data) are not loaded (`defer_size`;
only their stored length is measured), reads are clamped to what the file
holds (so a declared 4 GiB length cannot become a 4 GiB allocation), and a
top-level length that runs past the end of the file is reported as truncation.
"""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataelem import RawDataElement

from services.records_fetch.domain import InstanceCheck, check_instance

KEYWORDS = (
    "SOPInstanceUID",
    "Modality",
    "BodyPartExamined",
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
    for k in ("SOPInstanceUID", "StudyDate", "Modality", "BodyPartExamined"):
        attrs[k] = str(attrs[k]) if attrs[k] else ""
    attrs["_pixel_bytes"] = _stored_length(pixel, size) if pixel is not None else None
    attrs["_compressed"] = bool(ds.file_meta.TransferSyntaxUID.is_compressed)
    return attrs


def inspect_file(path: Path, expected_sop_uid: str) -> InstanceCheck:
    try:
        attrs = read_attributes(path)
    # Untrusted bytes can fail pydicom in many ways; each one means "corrupt".
    except Exception as exc:
        return InstanceCheck(ok=False, problems=[f"not readable DICOM ({type(exc).__name__})"])
    check = check_instance(attrs, expected_sop_uid)
    problems = [*check.problems, *_truncation(attrs)]
    return check.model_copy(update={"ok": not problems, "problems": problems})


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


async def inspect(path: Path, expected_sop_uid: str) -> InstanceCheck:
    return await asyncio.to_thread(inspect_file, path, expected_sop_uid)
