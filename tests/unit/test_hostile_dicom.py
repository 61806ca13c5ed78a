"""Malformed and malicious DICOM through records_fetch's checker
(`services.records_fetch.dicom.inspect_file`): truncated files, a missing or
wrong preamble, huge declared element lengths, deeply nested sequences and
random byte mutations of pydicom's bundled test files.

The promise: no exception escapes; a damaged file is reported not ok with a
reason; memory (tracemalloc peak) stays under `MEMORY_BOUND` and each check
under `TIME_BOUND` — a declared 4 GiB length must not become a 4 GiB read.
"""

from __future__ import annotations

import struct
import threading
import time
import tracemalloc
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.records_fetch.dicom import inspect_file
from services.records_fetch.domain import InstanceCheck

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
# Bundled files only (get_testdata_file would try to download the others).
IMAGES = ["MR_small.dcm", "CT_small.dcm", "JPEG2000.dcm", "MR_small_RLE.dcm"]
MUTATED = [*IMAGES, "rtplan.dcm", "ExplVR_BigEnd.dcm", "nested_priv_SQ.dcm", "UN_sequence.dcm"]
MEMORY_BOUND = 16 * 1024 * 1024  # bytes; the test files are all < 100 kB
TIME_BOUND = 2.0  # seconds per file


@pytest.fixture(autouse=True)
def _quiet_pydicom() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def source(name: str) -> tuple[bytes, str]:
    path = TEST_FILES / name
    return path.read_bytes(), str(pydicom.dcmread(path).get("SOPInstanceUID", ""))


def checked(tmp: Path, data: bytes, uid: str) -> InstanceCheck:
    """inspect_file in a worker thread (as in the service), bounded in memory and time."""
    path = tmp / "instance.dcm"
    path.write_bytes(data)
    out: dict[str, object] = {}

    def run() -> None:
        tracemalloc.start()
        started = time.perf_counter()
        try:
            out["check"] = inspect_file(path, uid)
        except BaseException as exc:  # what the test is about: nothing may escape
            out["escaped"] = exc
        out["seconds"] = time.perf_counter() - started
        out["peak"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()

    worker = threading.Thread(target=run)
    worker.start()
    worker.join()
    assert "escaped" not in out, f"exception escaped: {out['escaped']!r}"
    assert isinstance(out["peak"], int) and out["peak"] < MEMORY_BOUND, out["peak"]
    assert isinstance(out["seconds"], float) and out["seconds"] < TIME_BOUND, out["seconds"]
    check = out["check"]
    assert isinstance(check, InstanceCheck)
    assert check.ok or check.problems, "refused without a reason"
    return check


def refused(tmp: Path, data: bytes, uid: str) -> list[str]:
    check = checked(tmp, data, uid)
    assert not check.ok, "a damaged file was reported ok"
    return check.problems


def pixel_end(data: bytes, name: str) -> int:
    """Where the image data ends (after it only padding or a delimiter may follow).

    Encapsulated pixel data (undefined length) ends after its sequence delimiter,
    found by walking its items; in MR_small_RLE.dcm it is followed by 134 bytes of
    Data Set Trailing Padding (FFFC,FFFC), which carries no meaning (PS3.10 7.2):
    the file cut exactly where the padding begins is the whole image."""
    ds = pydicom.dcmread(TEST_FILES / name, defer_size=0)
    elem: Any = ds.get_item("PixelData", keep_deferred=True)
    if elem.length != 0xFFFFFFFF:
        return int(elem.value_tell) + int(elem.length)
    at = int(elem.value_tell)
    while True:
        _, element, length = struct.unpack("<HHI", data[at : at + 8])
        at += 8 + (length if element == 0xE000 else 0)
        if element == 0xE0DD:
            return at


ENCAPSULATED = ["JPEG2000.dcm", "MR_small_RLE.dcm"]


@pytest.mark.parametrize("name", ENCAPSULATED)
def test_every_cut_inside_the_fragments_or_the_delimiter_is_refused(
    tmp_path: Path, name: str
) -> None:
    """Cut after the last byte of a fragment or inside the sequence delimiter:
    pydicom reads such a file as whole; the item walk does not."""
    data, uid = source(name)
    ds = pydicom.dcmread(TEST_FILES / name, defer_size=0)
    pixel: Any = ds.get_item("PixelData", keep_deferred=True)
    start = int(pixel.value_tell)
    end = pixel_end(data, name)
    for cut in [*range(start, start + 24), *range(end - 24, end)]:
        assert refused(tmp_path, data[:cut], uid), cut


def rle_header_with(data: bytes, segments: int) -> bytes:
    """MR_small_RLE.dcm with its one frame's RLE header declaring `segments`."""
    ds = pydicom.dcmread(TEST_FILES / "MR_small_RLE.dcm", defer_size=0)
    pixel: Any = ds.get_item("PixelData", keep_deferred=True)
    at = int(pixel.value_tell)
    _, _, bot = struct.unpack("<HHI", data[at : at + 8])
    frame = at + 8 + bot + 8  # past the Basic Offset Table and the fragment's item header
    return data[:frame] + struct.pack("<I", segments) + data[frame + 4 :]


def test_rle_lossless_declared_over_native_pixel_data_is_refused(tmp_path: Path) -> None:
    """The transfer syntax says RLE Lossless, the pixel data is raw: a reader would
    try to decode the raw bytes as RLE segments."""
    data, uid = source("MR_small.dcm")
    explicit_le, rle = b"1.2.840.10008.1.2.1\0", b"1.2.840.10008.1.2.5\0"
    assert data.count(explicit_le) == 1
    problems = refused(tmp_path, data.replace(explicit_le, rle), uid)
    assert any("native (raw)" in p for p in problems)


@pytest.mark.parametrize("segments", [0, 1, 3, 16, 0xFFFFFFFF])
def test_an_rle_frame_with_the_wrong_segment_count_is_refused(
    tmp_path: Path, segments: int
) -> None:
    data, uid = source("MR_small_RLE.dcm")
    problems = refused(tmp_path, rle_header_with(data, segments), uid)
    assert any("segments" in p for p in problems)


def test_an_instance_of_another_patient_is_flagged(tmp_path: Path) -> None:
    data, uid = source("MR_small.dcm")
    path = tmp_path / "instance.dcm"
    path.write_bytes(data)
    own = str(pydicom.dcmread(path).PatientID)
    assert inspect_file(path, uid, own).ok
    other = inspect_file(path, uid, own + "X")
    assert not other.ok and other.foreign_patient


@pytest.mark.parametrize("name", IMAGES)
def test_the_untouched_files_are_ok(tmp_path: Path, name: str) -> None:
    data, uid = source(name)
    assert checked(tmp_path, data, uid).ok


@pytest.mark.parametrize("name", IMAGES)
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.floats(0, 1, exclude_max=True))
def test_an_image_cut_anywhere_is_refused(tmp_path: Path, name: str, where: float) -> None:
    data, uid = source(name)
    cut = int(where * pixel_end(data, name))
    refused(tmp_path, data[:cut], uid)


def test_missing_or_wrong_preamble_and_empty_file_are_refused(tmp_path: Path) -> None:
    data, uid = source("MR_small.dcm")
    assert refused(tmp_path, data[128:], uid)  # no preamble
    assert refused(tmp_path, data[:128] + b"DICX" + data[132:], uid)  # wrong magic
    assert refused(tmp_path, b"\0" * 128 + b"DICM", uid)
    assert refused(tmp_path, b"", uid)
    assert refused(tmp_path, b"%PDF-1.7\n" + data, uid)


def with_length(data: bytes, header: bytes, fmt: str, length: int) -> bytes:
    """`data` with the first element whose header starts `header` given a new length."""
    at = data.index(header) + len(header)
    return data[:at] + struct.pack(fmt, length) + data[at + struct.calcsize(fmt) :]


@pytest.mark.parametrize("length", [0x7FFFFFF0, 0xFFFFFFF0, 0xFFFFFFFE])
def test_huge_declared_pixel_length_is_refused_without_reading_it(
    tmp_path: Path, length: int
) -> None:
    data, uid = source("MR_small.dcm")
    pixel_header = b"\xe0\x7f\x10\x00OW\x00\x00"
    problems = refused(tmp_path, with_length(data, pixel_header, "<I", length), uid)
    assert any("past the end" in p for p in problems)


def test_header_element_longer_than_the_file_is_refused(tmp_path: Path) -> None:
    data, uid = source("MR_small.dcm")
    name_header = b"\x10\x00\x10\x00PN"
    assert refused(tmp_path, with_length(data, name_header, "<H", 0xFFFF), uid)


SQ_OPEN = (
    struct.pack("<HH", 0x0040, 0xA730)
    + b"SQ\0\0"
    + b"\xff\xff\xff\xff"
    + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
)
SQ_CLOSE = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)


def before_pixels(data: bytes, insert: bytes) -> bytes:
    at = data.index(b"\xe0\x7f\x10\x00")
    return data[:at] + insert + data[at:]


@pytest.mark.parametrize("depth", [2_000, 50_000])
def test_deeply_nested_sequences_are_refused_in_bounded_time_and_memory(
    tmp_path: Path, depth: int
) -> None:
    data, uid = source("MR_small.dcm")
    assert refused(tmp_path, before_pixels(data, SQ_OPEN * depth + SQ_CLOSE * depth), uid)


def test_a_modest_nesting_is_still_read(tmp_path: Path) -> None:
    data, uid = source("MR_small.dcm")
    assert checked(tmp_path, before_pixels(data, SQ_OPEN * 5 + SQ_CLOSE * 5), uid).ok


def test_huge_length_inside_a_sequence_is_refused(tmp_path: Path) -> None:
    data, uid = source("MR_small.dcm")
    inner = struct.pack("<HH", 0x0009, 0x1010) + b"OB\0\0" + struct.pack("<I", 0xFFFFFFF0)
    assert refused(tmp_path, before_pixels(data, SQ_OPEN * 3 + inner + b"abc" + SQ_CLOSE), uid)
    defined = (
        struct.pack("<HH", 0x0040, 0xA730)
        + b"SQ\0\0"
        + struct.pack("<I", 0x7FFFFFF0)
        + struct.pack("<HHI", 0xFFFE, 0xE000, 0x7FFFFFE0)
        + inner
    )
    assert refused(tmp_path, before_pixels(data, defined), uid)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    st.sampled_from(MUTATED),
    st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=12),
    st.sampled_from(["flip", "insert", "delete"]),
)
def test_random_byte_mutations_never_escape_and_stay_bounded(
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
    edits: list[tuple[float, int]],
    how: str,
) -> None:
    data, uid = source(name)
    buf = bytearray(data)
    for where, byte in edits:
        at = int(where * len(buf))
        if how == "flip":
            buf[at] = byte
        elif how == "insert":
            buf[at:at] = bytes([byte]) * 4
        else:
            del buf[at : at + 4]
    checked(tmp_path_factory.mktemp("mut"), bytes(buf), uid)
