"""Realistic synthetic studies, made at run time (nothing is stored in the repo):
a CT of N slices 512x512 signed 16-bit (about 0.5 MB a slice), an MR of several
series, a CT compressed with JPEG 2000 (lossless, pylibjpeg-openjpeg), and a
whole-slide image (VL Whole Slide Microscopy: a pyramid of multi-frame tiled
JPEG instances, written frame by frame, any size; `slide_instances`).

The pixels are a body phantom (an ellipse of soft tissue with a spine and lungs)
plus noise, so compressed sizes are near those of real scans, not of flat images.
Each study belongs to one patient; instances are uploaded to Orthanc with its
REST API (`POST /instances`), a few at a time.
"""

from __future__ import annotations

import concurrent.futures
import io
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import httpx
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    generate_uid,
)

CT_IMAGE = UID("1.2.840.10008.5.1.4.1.1.2")
MR_IMAGE = UID("1.2.840.10008.5.1.4.1.1.4")


@dataclass(frozen=True)
class Series:
    modality: str
    slices: int
    size: int  # rows = columns
    description: str


@dataclass(frozen=True)
class StudySpec:
    name: str
    series: tuple[Series, ...]
    compressed: bool = False


def ct(slices: int, *, compressed: bool = False) -> StudySpec:
    name = f"CT {slices} slices" + (" (JPEG 2000)" if compressed else "")
    return StudySpec(name, (Series("CT", slices, 512, "CHEST"),), compressed)


def mr_brain(series: int = 4, slices: int = 40) -> StudySpec:
    kinds = ("T1", "T2", "FLAIR", "DWI", "SWI", "T1C")
    return StudySpec(
        f"MR {series} series",
        tuple(Series("MR", slices, 256, kinds[i % len(kinds)]) for i in range(series)),
    )


def _phantom(size: int, rng: np.random.Generator) -> np.ndarray:
    y, x = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j]
    img = np.full((size, size), -1000, dtype=np.int16)  # air
    img[(x / 0.85) ** 2 + (y / 0.6) ** 2 < 1] = 40  # soft tissue
    img[((x - 0.35) / 0.25) ** 2 + (y / 0.35) ** 2 < 1] = -850  # lungs
    img[((x + 0.35) / 0.25) ** 2 + (y / 0.35) ** 2 < 1] = -850
    img[(x / 0.08) ** 2 + ((y - 0.4) / 0.08) ** 2 < 1] = 700  # spine
    return img


def instances(spec: StudySpec, patient_id: str, seed: int = 0) -> Iterator[bytes]:
    """The study's instances as DICOM Part 10 bytes, one at a time."""
    rng = np.random.default_rng(seed)
    study_uid = generate_uid()
    for s_no, series in enumerate(spec.series, 1):
        series_uid = generate_uid()
        base = _phantom(series.size, rng)
        for i in range(series.slices):
            noise = rng.integers(-20, 21, size=base.shape, dtype=np.int16)
            pixels = (base + noise).astype(np.int16)
            ds = _dataset(spec, series, patient_id, study_uid, series_uid, s_no, i)
            if spec.compressed:
                ds.compress(JPEG2000Lossless, pixels, encoding_plugin="pylibjpeg")
            else:
                ds.PixelData = pixels.tobytes()
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            yield buf.getvalue()


def _dataset(
    spec: StudySpec,
    series: Series,
    patient_id: str,
    study_uid: str,
    series_uid: str,
    series_no: int,
    i: int,
) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_IMAGE if series.modality == "CT" else MR_IMAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientID, ds.PatientName = patient_id, "Bench^Imaging"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "20261101", "101500", "BENCH1"
    ds.Modality, ds.BodyPartExamined = series.modality, series.description[:16]
    ds.SeriesDescription, ds.SeriesNumber, ds.InstanceNumber = series.description, series_no, i + 1
    ds.ImagePositionPatient = [0.0, 0.0, float(i)]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.SliceThickness, ds.PixelSpacing = 1.0, [0.7, 0.7]
    ds.Rows = ds.Columns = series.size
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope = 0, 1
    return ds


def upload(orthanc_url: str, blobs: Iterator[bytes], threads: int = 4) -> tuple[int, int]:
    """Store instances in Orthanc; returns (instances, bytes)."""
    count = size = 0
    with (
        httpx.Client(base_url=orthanc_url, timeout=60) as client,
        concurrent.futures.ThreadPoolExecutor(threads) as pool,
    ):

        def post(body: bytes) -> int:
            client.post(
                "/instances", content=body, headers={"Content-Type": "application/dicom"}
            ).raise_for_status()
            return len(body)

        pending: set[concurrent.futures.Future[int]] = set()
        for body in blobs:
            pending.add(pool.submit(post, body))
            if len(pending) >= threads * 2:
                done, pending = concurrent.futures.wait(
                    pending, return_when=concurrent.futures.FIRST_COMPLETED
                )
                for f in done:
                    count, size = count + 1, size + f.result()
        for f in concurrent.futures.as_completed(pending):
            count, size = count + 1, size + f.result()
    return count, size


def study_uid_of(orthanc_url: str, patient_id: str) -> str:
    resp = httpx.get(
        f"{orthanc_url}/dicom-web/studies",
        params={"PatientID": patient_id},
        headers={"Accept": "application/dicom+json"},
        timeout=30,
    )
    resp.raise_for_status()
    [study] = resp.json()
    return str(study["0020000D"]["Value"][0])


# ---------------------------------------------------------------- whole-slide images

VL_WSI = UID("1.2.840.10008.5.1.4.1.1.77.1.6")  # VL Whole Slide Microscopy Image Storage


@dataclass(frozen=True)
class SlideSpec:
    """A slide scanned at `width` x `height` pixels (level 0), stored as a pyramid of
    `levels` instances (each half the size of the one before), tiled `tile` x
    `tile`, JPEG baseline (4:2:2) frames, TILED_FULL (no per-frame groups)."""

    name: str
    width: int
    height: int
    levels: int = 3
    tile: int = 256
    quality: int = 85


def wsi(width: int, height: int, levels: int = 3) -> SlideSpec:
    return SlideSpec(f"WSI {width}x{height}, {levels} levels", width, height, levels)


def _tissue_tile(tile: int, rng: np.random.Generator) -> np.ndarray:
    """An H&E-like tile: pink stroma, purple nuclei, noise (JPEG sizes near real ones)."""
    y, x = np.mgrid[0:tile, 0:tile]
    base = np.empty((tile, tile, 3), dtype=np.float32)
    base[..., 0], base[..., 1], base[..., 2] = 230, 170, 200
    for _ in range(int(rng.integers(20, 60))):
        cy, cx, r = rng.integers(0, tile), rng.integers(0, tile), rng.integers(3, 9)
        nucleus = (y - cy) ** 2 + (x - cx) ** 2 < r * r
        base[nucleus] = (110, 60, 150)
    base += rng.normal(0, 12, size=base.shape).astype(np.float32)
    return np.clip(base, 0, 255).astype(np.uint8)


def _jpeg(pixels: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, "JPEG", quality=quality, subsampling=1)
    return buf.getvalue()


def slide_instances(
    spec: SlideSpec, patient_id: str, seed: int = 0, *, study_uid: str = ""
) -> Iterator[Callable[[BinaryIO], int]]:
    """The slide's pyramid, one instance per level, each as a writer: called with a
    binary file it writes the Part 10 instance frame by frame (memory is one tile,
    whatever the level's size) and returns the bytes written. One series, one
    frame of reference."""
    rng = np.random.default_rng(seed)
    study_uid = study_uid or generate_uid()
    series_uid, frame_of_reference = generate_uid(), generate_uid()
    # A handful of distinct tiles, reused: encoding every tile of a 1 GB slide would
    # cost the benchmark minutes; the bytes on the wire are what matters here.
    tiles = [_jpeg(_tissue_tile(spec.tile, rng), spec.quality) for _ in range(16)]
    for level in range(spec.levels):
        width, height = max(1, spec.width >> level), max(1, spec.height >> level)
        ds = _slide_dataset(spec, patient_id, study_uid, series_uid, frame_of_reference, level)
        ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows = width, height
        across, down = -(-width // spec.tile), -(-height // spec.tile)
        ds.NumberOfFrames = across * down
        pixel_spacing = 0.00025 * (1 << level)  # 0.25 µm/px at level 0, in mm
        ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing = [
            pixel_spacing,
            pixel_spacing,
        ]
        ds.ImagedVolumeWidth = spec.width * 0.00025
        ds.ImagedVolumeHeight = spec.height * 0.00025
        frames = across * down
        yield _level_writer(ds, [tiles[int(rng.integers(0, len(tiles)))] for _ in range(frames)])


def _level_writer(ds: Dataset, frames: list[bytes]) -> Callable[[BinaryIO], int]:
    def write(out: BinaryIO) -> int:
        head = io.BytesIO()
        ds.save_as(head, enforce_file_format=True)
        written = out.write(head.getvalue())
        # Pixel Data (7FE0,0010) OB, undefined length: an empty offset table, one
        # fragment per frame, the sequence delimiter (PS3.5 A.4).
        written += out.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, 0xFFFFFFFF))
        written += out.write(struct.pack("<HHI", 0xFFFE, 0xE000, 0))
        for frame in frames:
            padded = frame + b"\0" * (len(frame) % 2)
            written += out.write(struct.pack("<HHI", 0xFFFE, 0xE000, len(padded)))
            written += out.write(padded)
        written += out.write(struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))
        return written

    return write


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _slide_dataset(
    spec: SlideSpec,
    patient_id: str,
    study_uid: str,
    series_uid: str,
    frame_of_reference: str,
    level: int,
) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = VL_WSI
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = VL_WSI, meta.MediaStorageSOPInstanceUID
    ds.PatientID, ds.PatientName = patient_id, "Bench^Slide"
    ds.PatientBirthDate, ds.PatientSex = "", ""
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "20261101", "101500", "BENCHSM1"
    ds.ReferringPhysicianName, ds.StudyID = "", "1"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "SM", 1, level + 1
    ds.SeriesDescription = spec.name
    ds.ContentDate, ds.ContentTime = "20261101", "101500"
    ds.AcquisitionDateTime = "20261101101500"
    ds.Manufacturer, ds.ManufacturerModelName = "bench", "synthetic"
    ds.DeviceSerialNumber, ds.SoftwareVersions = "0", "bench.studies"
    ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_of_reference, "SLIDE_CORNER"
    ds.ImageType = (
        ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
        if level == 0
        else ["DERIVED", "PRIMARY", "VOLUME", "RESAMPLED"]
    )
    ds.VolumetricProperties, ds.SpecimenLabelInImage = "VOLUME", "NO"
    ds.BurnedInAnnotation, ds.FocusMethod, ds.ExtendedDepthOfField = "NO", "AUTO", "NO"
    ds.ContainerIdentifier = f"SLIDE-{patient_id}"
    ds.IssuerOfTheContainerIdentifierSequence = []
    ds.ContainerTypeCodeSequence = [_code("433466003", "SCT", "Microscope slide")]
    specimen = Dataset()
    specimen.SpecimenIdentifier, specimen.SpecimenUID = f"S-{patient_id}", generate_uid()
    specimen.IssuerOfTheSpecimenIdentifierSequence = []
    specimen.SpecimenPreparationSequence = []
    ds.SpecimenDescriptionSequence = [specimen]
    ds.ImagedVolumeDepth = 0.001
    ds.ImageOrientationSlide = [0, -1, 0, -1, 0, 0]
    origin = Dataset()
    origin.XOffsetInSlideCoordinateSystem, origin.YOffsetInSlideCoordinateSystem = 20.0, 40.0
    ds.TotalPixelMatrixOriginSequence = [origin]
    ds.TotalPixelMatrixFocalPlanes, ds.NumberOfOpticalPaths = 1, 1
    ds.DimensionOrganizationType = "TILED_FULL"
    ds.Rows = ds.Columns = spec.tile
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 3, "YBR_FULL_422"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.LossyImageCompression, ds.LossyImageCompressionMethod = "01", "ISO_10918_1"
    ds.LossyImageCompressionRatio = 10
    path = Dataset()
    path.OpticalPathIdentifier = "1"
    path.IlluminationTypeCodeSequence = [_code("111744", "DCM", "Brightfield illumination")]
    path.IlluminationColorCodeSequence = [_code("414298005", "SCT", "Full Spectrum")]
    ds.OpticalPathSequence = [path]
    shared = Dataset()
    measures = Dataset()
    measures.SliceThickness = 0.001
    measures.PixelSpacing = [0.00025, 0.00025]
    shared.PixelMeasuresSequence = [measures]
    frame_type = Dataset()
    frame_type.FrameType = ds.ImageType
    shared.WholeSlideMicroscopyImageFrameTypeSequence = [frame_type]
    optical = Dataset()
    optical.OpticalPathIdentifier = "1"
    shared.OpticalPathIdentificationSequence = [optical]
    ds.SharedFunctionalGroupsSequence = [shared]
    return ds


def write_slide(spec: SlideSpec, patient_id: str, folder: Path, seed: int = 0) -> list[Path]:
    """The slide's instances as files under `folder` (written frame by frame)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for level, writer in enumerate(slide_instances(spec, patient_id, seed)):
        path = folder / f"level{level}.dcm"
        with open(path, "wb") as f:
            writer(f)
        paths.append(path)
    return paths


def upload_files(orthanc_url: str, paths: list[Path]) -> tuple[int, int]:
    """Store instance files in Orthanc, each streamed from disk; (instances, bytes)."""
    size = 0
    with httpx.Client(base_url=orthanc_url, timeout=600) as client:
        for path in paths:
            with open(path, "rb") as f:
                client.post(
                    "/instances",
                    content=iter(lambda: f.read(1 << 20), b""),
                    headers={"Content-Type": "application/dicom"},
                ).raise_for_status()
            size += path.stat().st_size
    return len(paths), size
