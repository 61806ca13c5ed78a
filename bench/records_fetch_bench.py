"""Benchmark (not a test): records_fetch's study retrieval + validation throughput
against raw pydicom `dcmread` of the same files on the same machine.

    LOCAL_STATE_DIR=/tmp/x/infra LOCAL_PORTS=auto .venv/bin/python deploy/local/infra.py start
    .venv/bin/python -m bench.records_fetch_bench --endpoints /tmp/x/infra/endpoints.json

It uploads N copies of pydicom's bundled MR_small/CT_small (fresh UIDs, one
patient) to the real Orthanc, then times
  * raw:   pydicom.dcmread of the same N files from local disk (pixel data read);
  * ours:  QIDO-RS instance listing + WADO-RS of every instance, streamed through
           the multipart reader into the content-addressed archive (sha256,
           fsync) + pydicom parse and checks in a worker thread, `--concurrency`
           instances in flight.
Per-instance Mongo writes are not included (they depend on the database, not
on this code). Prints instances/s for both and the ratio ours/raw.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import pydicom
from pydicom.uid import generate_uid

from deploy.local import seed
from services.records_fetch import dicom, providers
from services.records_fetch.archive import LocalArchive


def instance_bytes(name: str, pid: str, study_uid: str, series_uid: str) -> bytes:
    """A bundled test file as one more instance of the benchmark's single study."""
    ds = pydicom.dcmread(io.BytesIO(seed.dicom_bytes(name, pid, "Bench^Pat")))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def prepare(orthanc_url: str, n: int, workdir: Path) -> tuple[str, list[Path]]:
    """One patient, one study of `n` instances (a CT/MR series), at the PACS and on disk."""
    pid = f"BENCH-{uuid.uuid4().hex[:8]}"
    study_uid, series_uid = generate_uid(), generate_uid()
    files = []
    with httpx.Client(base_url=orthanc_url, timeout=30) as client:
        for i in range(n):
            name = "MR_small.dcm" if i % 2 else "CT_small.dcm"
            body = instance_bytes(name, pid, study_uid, series_uid)
            path = workdir / f"{i}.dcm"
            path.write_bytes(body)
            files.append(path)
            client.post(
                "/instances", content=body, headers={"Content-Type": "application/dicom"}
            ).raise_for_status()
    return pid, files


def raw_dcmread(files: list[Path]) -> float:
    start = time.perf_counter()
    for f in files:
        ds = pydicom.dcmread(f)
        _ = len(ds.PixelData)
    return time.perf_counter() - start


async def retrieve_all(dicomweb: str, pid: str, archive: LocalArchive, concurrency: int) -> float:
    start = time.perf_counter()
    async with httpx.AsyncClient(timeout=30, follow_redirects=False) as client:
        studies = (await providers.find_studies(client, dicomweb, pid)).items
        instances = [
            i
            for s in studies
            for i in (await providers.find_instances(client, dicomweb, s.study_uid, pid)).items
        ]
        gate = asyncio.Semaphore(concurrency)

        async def one(inst: providers.QidoInstance) -> bool:
            async with gate:
                incoming = await providers.retrieve_instance(client, dicomweb, inst, archive)
                _, location = archive.commit(incoming)
                return (await dicom.inspect(Path(location), inst.sop_uid)).ok

        results = await asyncio.gather(*(one(i) for i in instances))
    assert all(results) and len(results) == len(instances)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoints", required=True, type=Path)
    parser.add_argument("-n", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    endpoints = json.loads(args.endpoints.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        pid, files = prepare(endpoints["orthanc_url"], args.n, Path(tmp))
        raw = min(raw_dcmread(files) for _ in range(args.rounds))
        ours = min(
            asyncio.run(
                retrieve_all(
                    endpoints["dicomweb_url"],
                    pid,
                    LocalArchive(Path(tmp) / f"r{r}"),
                    args.concurrency,
                )
            )
            for r in range(args.rounds)
        )
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}, "
        f"Python {platform.python_version()}, pydicom {pydicom.__version__}"
    )
    print(f"instances: {args.n} in one study, best of {args.rounds}, {args.concurrency} in flight")
    print(f"raw dcmread:              {args.n / raw:9.1f} inst/s")
    print(f"retrieval + validation:   {args.n / ours:9.1f} inst/s")
    print(f"ratio (ours / raw):       {raw / ours:9.3f}")


if __name__ == "__main__":
    main()
