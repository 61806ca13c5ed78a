"""Reading a retrieved instance with pydicom and checking it (domain.check_instance).

Parsing is CPU and disk work, so it runs in a worker thread: a large study must
not stall the event loop that also serves the consumer and the HTTP API.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pydicom

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


def read_attributes(path: Path) -> dict[str, Any]:
    """The attributes the checks need, plus the stored pixel data length."""
    ds = pydicom.dcmread(path)
    attrs: dict[str, Any] = {k: ds.get(k) for k in KEYWORDS}
    for k in ("SOPInstanceUID", "StudyDate", "Modality", "BodyPartExamined"):
        attrs[k] = str(attrs[k]) if attrs[k] else ""
    pixel = ds.get("PixelData")
    attrs["_pixel_bytes"] = len(pixel) if pixel is not None else None
    attrs["_compressed"] = bool(ds.file_meta.TransferSyntaxUID.is_compressed)
    return attrs


def inspect_file(path: Path, expected_sop_uid: str) -> InstanceCheck:
    try:
        attrs = read_attributes(path)
    # Untrusted bytes can fail pydicom in many ways; each one means "corrupt".
    except Exception as exc:
        return InstanceCheck(ok=False, problems=[f"not readable DICOM ({type(exc).__name__})"])
    return check_instance(attrs, expected_sop_uid)


async def inspect(path: Path, expected_sop_uid: str) -> InstanceCheck:
    return await asyncio.to_thread(inspect_file, path, expected_sop_uid)
