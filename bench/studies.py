"""Realistic synthetic studies, made at run time (nothing is stored in the repo):
a CT of N slices 512x512 signed 16-bit (about 0.5 MB a slice), an MR of several
series, and a CT compressed with JPEG 2000 (lossless, pylibjpeg-openjpeg).

The pixels are a body phantom (an ellipse of soft tissue with a spine and lungs)
plus noise, so compressed sizes are near those of real scans, not of flat images.
Each study belongs to one patient; instances are uploaded to Orthanc with its
REST API (`POST /instances`), a few at a time.
"""

from __future__ import annotations

import concurrent.futures
import io
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
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
