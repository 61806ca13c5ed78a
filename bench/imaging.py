"""Imaging at real size (issue 20): records_fetch's retrieval + checks of generated
studies against what a user would use instead, in the same run, from the same
Orthanc (a private one, started here on free loopback ports with a Mongo-wire
server for records_fetch's records):

* curl: one study-level WADO-RS request (`GET /dicom-web/studies/{uid}`,
  multipart, body discarded): the ceiling;
* dicomweb-client's `retrieve_study` (the Python peer; it holds the study in
  memory as pydicom datasets);
* Orthanc's own DICOMweb pull into a second Orthanc (`POST
  /dicom-web/servers/source/retrieve`: the server peer);
* records_fetch: a case opened and one attempt run (`handlers.run_due`: QIDO,
  series-level WADO-RS streamed into the archive, checks, records in Mongo,
  the manifest), in a fresh process each time, whose peak RSS is reported
  (and its check worker's: the checks run in a process of their own);
  then, in the same process, the study imported into the second Orthanc as the
  review PACS (`review_pacs.py`: IRWF.b reconciliation, STOW-RS streamed from
  the archive), timed on its own, with the peak RSS after it.

Then the crash figure: records_fetch SIGKILLed half-way through the largest CT
and run again on the same case; the second run must fetch only what the first
had not verified (instances retrieved twice are counted from the records).

    make bench-imaging       # or: .venv/bin/python -m bench.imaging [--studies ct300,mr4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from bench import studies

ROOT = Path(__file__).resolve().parents[1]
TENANT = "t-bench"
WADO_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
SPECS = {
    "ct300": lambda: studies.ct(300),
    "ct1000": lambda: studies.ct(1000),
    "mr4": lambda: studies.mr_brain(4, 40),
    "j2k": lambda: studies.ct(100, compressed=True),
    # A whole-slide image of about 1 GB: 46,080 x 46,080 at level 0 (0.76 GB in one
    # instance), 3 levels, 256x256 JPEG tiles.
    "wsi1g": lambda: studies.wsi(46_080, 46_080, levels=3),
}


# ---------------------------------------------------------------- records_fetch, in a child


async def child(args: argparse.Namespace) -> dict[str, Any]:
    """One records_fetch attempt on one case, in this (fresh) process."""
    from pymongo import AsyncMongoClient

    from services.records_fetch import handlers, retrieval
    from services.records_fetch.checker import Checker
    from services.records_fetch.domain import ProviderEndpoints, ProviderRegistry, RetryPolicy
    from services.records_fetch.retrieval import Retrieval
    from services.records_fetch.settings import RecordsFetchSettings
    from services.records_fetch.store import FetchStore
    from shared.envelope import EventMeta
    from shared.events import CaseAccepted

    if args.batch_files:  # a small study still commits in several batches
        retrieval.BATCH_FILES = int(args.batch_files)
    mongo: AsyncMongoClient[Any] = AsyncMongoClient(args.mongo)
    db = mongo[args.db]
    store = FetchStore(db["fetches"], db["instances"])
    registry = ProviderRegistry(
        tenants={TENANT: {"pacs": ProviderEndpoints(dicomweb_url=args.dicomweb)}}
    )
    checker = Checker(RecordsFetchSettings.model_fields["check_processes"].default)
    await checker.start()  # as the service does at its start-up
    async with httpx.AsyncClient(timeout=60, follow_redirects=False) as client:
        ctx = Retrieval(store, client, registry, child_archive(args), checker=checker)
        slide = args.slide == "1"  # a whole-slide study: asked for as pathology
        if not args.resume:
            event = CaseAccepted.model_validate(
                {
                    "case_id": args.case,
                    "tenant_id": TENANT,
                    "external_id": "bench",
                    "routing": {
                        "subspecialties": ["pathology" if slide else "thoracic_imaging"],
                        "jurisdiction": "US-CA",
                        "service_tier": "pathology_rereview" if slide else "imaging_reread",
                    },
                    "records": [
                        {
                            "provider_id": "pacs",
                            "patient_id": args.patient,
                            "kinds": ["pathology" if slide else "imaging"],
                            "authorized": True,
                        }
                    ],
                }
            )
            meta = EventMeta(
                event_id=str(uuid.uuid4()), ce_type="", source="", time="", tenant_id=TENANT
            )
            await handlers.open_case(store, event, meta)
        start = time.perf_counter()  # the retrieval attempt: claimed, retrieved, concluded
        policy = RetryPolicy(base_seconds=0.0, max_delay_seconds=0.0, max_attempts=8)
        assert await handlers.run_due(ctx, policy, lease_seconds=600)
        seconds = time.perf_counter() - start
        states = await store.instance_states(args.case)
        rss_retrieval = peak_rss_mib()
        rss_checks = workers_peak_rss_mib()
        imported = await import_into_review(args, store, ctx, states) if args.review else {}
    checker.close()
    await mongo.close()
    return {
        **imported,
        "rss_retrieval_mib": rss_retrieval,
        "rss_check_worker_mib": rss_checks,
        "seconds": seconds,
        "received": sum(1 for d in states.values() if d["state"] == "received"),
        "corrupt": sum(1 for d in states.values() if d["state"] == "corrupt"),
        "bytes": sum(d.get("size", 0) for d in states.values()),
        "peak_rss_mib": peak_rss_mib(),
    }


async def import_into_review(
    args: argparse.Namespace, store: Any, ctx: Any, states: dict[str, Any]
) -> dict[str, Any]:
    """The retrieved study imported into the review PACS (review_pacs.py: reconciled,
    STOW-RS, streamed from the archive), timed on its own."""
    from services.records_fetch.review_pacs import ReviewPacs

    doc = await store.get(args.case)
    async with httpx.AsyncClient(timeout=httpx.Timeout(60.0, write=600.0)) as client:
        review = ReviewPacs(client, args.review, args.review, "BENCH-REVIEW")
        start = time.perf_counter()
        images = await review.import_case(store, ctx.archive, doc, states, store.clock.now())
        return {"import_seconds": time.perf_counter() - start, "imported_studies": len(images)}


def child_archive(args: argparse.Namespace) -> Any:
    """The archive of a child: local under --archive, or S3 (--s3-endpoint, the
    credentials from the AWS_* environment) spooling under --archive."""
    from services.records_fetch import archive as archives

    if not args.s3_endpoint:
        return archives.LocalArchive(Path(args.archive))
    client = archives.s3_client(args.s3_endpoint, os.environ.get("AWS_REGION", "us-east-1"), "", "")
    s3 = archives.S3Archive(client, args.s3_bucket, Path(args.archive), prefix=args.s3_prefix or "")
    s3.ensure_bucket(create=True)
    return s3


def peak_rss_mib(pid: str = "self") -> float:
    """A process's own peak RSS (VmHWM; ru_maxrss would include the parent's from
    before the exec)."""
    with open(f"/proc/{pid}/status") as f:
        line = next(ln for ln in f if ln.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def descendants(pid: str = "self") -> list[str]:
    """Every process under this one (the check workers, under their forkserver)."""
    found: list[str] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            found += [child, *descendants(child)]
    return found


def workers_peak_rss_mib() -> float:
    """The largest peak RSS of this process's descendants (its check workers)."""
    return max((peak_rss_mib(p) for p in descendants()), default=0.0)


def child_argv(
    env: dict[str, Any],
    patient: str,
    case: str,
    db: str,
    archive: Path,
    review: str = "",
    slide: bool = False,
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "bench.imaging",
        "--child",
        "--mongo",
        env["mongo_uri"],
        "--dicomweb",
        env["dicomweb_url"],
        "--patient",
        patient,
        "--case",
        case,
        "--db",
        db,
        "--archive",
        str(archive),
        *(["--review", review] if review else []),
        *(["--slide", "1"] if slide else []),
    ]


def ours(
    env: dict[str, Any], patient: str, work: Path, review: str = "", slide: bool = False
) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    argv = child_argv(
        env, patient, f"case-{tag}", f"bench_imaging_{tag}", work / f"a-{tag}", review, slide
    )
    out = subprocess.run(argv, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    shutil.rmtree(work / f"a-{tag}", ignore_errors=True)
    return dict(json.loads(out.strip().splitlines()[-1]))


def crash_and_resume(env: dict[str, Any], patient: str, total: int, work: Path) -> dict[str, Any]:
    """SIGKILL records_fetch once half the instances are recorded; run it again."""
    from pymongo import MongoClient

    tag = uuid.uuid4().hex[:8]
    case, dbname, archive = f"case-{tag}", f"bench_imaging_{tag}", work / f"a-{tag}"
    argv = child_argv(env, patient, case, dbname, archive)
    mongo: MongoClient[Any] = MongoClient(env["mongo_uri"])
    instances = mongo[dbname]["instances"]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if instances.count_documents({"case_id": case}) >= total // 2:
            break
        time.sleep(0.05)
    killed = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = instances.count_documents({"case_id": case, "state": "received"})
    # The dead process's lease would hold the case for 10 minutes: let it lapse now.
    lapsed = datetime.now(UTC) - timedelta(seconds=1)
    mongo[dbname]["fetches"].update_one({"_id": case}, {"$set": {"lease_until": lapsed}})
    out = subprocess.run(
        [*argv, "--resume"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    second = json.loads(out.strip().splitlines()[-1])
    twice = instances.count_documents({"case_id": case, "retrievals": {"$gt": 1}})
    mongo.close()
    shutil.rmtree(archive, ignore_errors=True)
    return {
        "killed_mid_way": killed,
        "verified_before_kill": before,
        "fetched_again_of_those": twice,
        "received_after_resume": second["received"],
        "resume_seconds": second["seconds"],
    }


# ---------------------------------------------------------------- the peers


def curl(env: dict[str, Any], study_uid: str) -> tuple[float, int]:
    url = f"{env['dicomweb_url']}/studies/{study_uid}"
    out = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-H", f"Accept: {WADO_ACCEPT}", "-w",
         "%{time_total} %{size_download}", url],
        check=True, capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    return float(out[0]), int(out[1])


def dicomweb_client(env: dict[str, Any], study_uid: str) -> tuple[float, int]:
    from dicomweb_client.api import DICOMwebClient

    client = DICOMwebClient(url=env["dicomweb_url"])
    start = time.perf_counter()
    datasets = client.retrieve_study(study_uid, media_types=(("application/dicom", "*"),))
    return time.perf_counter() - start, len(datasets)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_peer_orthanc(env: dict[str, Any], work: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A second Orthanc (the review organisation's) that can pull from the first."""
    http, dicom = free_port(), free_port()
    storage = work / "peer"
    storage.mkdir(parents=True, exist_ok=True)
    config = {
        "Name": "bench-peer",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "HttpPort": http,
        "DicomPort": dicom,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": ["/usr/share/orthanc/plugins/libOrthancDicomWeb.so"],
        "DicomWeb": {
            "Enable": True,
            "Root": "/dicom-web/",
            "Servers": {"source": [env["dicomweb_url"] + "/"]},
        },
    }
    (work / "peer.json").write_text(json.dumps(config))
    proc = subprocess.Popen(
        ["/usr/sbin/Orthanc", str(work / "peer.json")],
        cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{http}"
    for _ in range(100):
        try:
            if httpx.get(f"{url}/system", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the peer Orthanc did not start")


def orthanc_pull(peer: str, study_uid: str) -> float:
    start = time.perf_counter()
    resp = httpx.post(
        f"{peer}/dicom-web/servers/source/retrieve",
        json={"Resources": [{"Study": study_uid}]},
        timeout=600,
    )
    resp.raise_for_status()
    seconds = time.perf_counter() - start
    for sid in httpx.get(f"{peer}/studies", timeout=30).json():  # empty for the next round
        httpx.delete(f"{peer}/studies/{sid}", timeout=60).raise_for_status()
    return seconds


# ---------------------------------------------------------------- the run


def infra(cmd: str, state: Path) -> dict[str, Any]:
    env = {**os.environ, "LOCAL_STATE_DIR": str(state), "LOCAL_PORTS": "auto"}
    subprocess.run(
        [sys.executable, "deploy/local/infra.py", cmd, "--only", "pacs,mongo"],
        cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    return json.loads((state / "endpoints.json").read_text()) if cmd == "start" else {}


def machine() -> str:
    cpu = ""
    with open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    return (
        f"{platform.machine()} {cpu}, {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}, "
        f"Python {platform.python_version()}"
    )


def mbps(size: int, seconds: float) -> float:
    return size / seconds / 1e6


def run(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-imaging-"))
    env = infra("start", work / "infra")
    peer_proc, peer = (None, "") if args.no_peer else start_peer_orthanc(env, work)
    print(f"machine: {machine()}")
    try:
        for name in args.studies.split(","):
            spec = SPECS[name]()
            patient = f"BENCH-{uuid.uuid4().hex[:8]}"
            t = time.perf_counter()
            if isinstance(spec, studies.SlideSpec):  # written to disk, uploaded streamed
                paths = studies.write_slide(spec, patient, work / "slide")
                count, _ = studies.upload_files(env["orthanc_url"], paths)
                shutil.rmtree(work / "slide")
            else:
                count, _ = studies.upload(env["orthanc_url"], studies.instances(spec, patient))
            uid = studies.study_uid_of(env["orthanc_url"], patient)
            print(f"\n{spec.name}: {count} instances stored ({time.perf_counter() - t:.0f} s)")
            rounds = [curl(env, uid) for _ in range(args.rounds)]
            c_sec, size = min(rounds)
            rate = mbps(size, c_sec)
            print(f"  curl study-level WADO-RS    {rate:8.1f} MB/s  ({size / 1e6:.0f} MB)")
            slide = isinstance(spec, studies.SlideSpec)
            mine = [ours(env, patient, work, peer, slide) for _ in range(args.rounds)]
            best = min(mine, key=lambda r: r["seconds"])
            assert best["received"] == count, best
            ratio = c_sec / best["seconds"]
            print(
                f"  records_fetch (+checks)     {mbps(size, best['seconds']):8.1f} MB/s"
                f"  = {ratio:.2f} of curl; peak RSS "
                f"{max(r['rss_retrieval_mib'] for r in mine):.0f} MiB"
                f" (+ its check worker {max(r['rss_check_worker_mib'] for r in mine):.0f} MiB)"
            )
            if peer:
                fastest = min(r["import_seconds"] for r in mine)
                print(
                    f"  records_fetch review import {mbps(size, fastest):8.1f} MB/s"
                    f"  (IRWF.b, STOW-RS); peak RSS with it "
                    f"{max(r['peak_rss_mib'] for r in mine):.0f} MiB"
                )
            if not args.no_dicomweb_client:
                d_sec, n = dicomweb_client(env, uid)
                assert n == count
                print(f"  dicomweb-client retrieve    {mbps(size, d_sec):8.1f} MB/s")
            if peer:
                o_sec = orthanc_pull(peer, uid)
                print(f"  Orthanc DICOMweb pull       {mbps(size, o_sec):8.1f} MB/s")
            if args.crash and name == args.crash:
                print(f"  crash: {crash_and_resume(env, patient, count, work)}")
    finally:
        if peer_proc is not None:
            peer_proc.terminate()
            peer_proc.wait(30)
        infra("stop", work / "infra")
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", default="ct300,mr4,j2k,ct1000")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--crash", default="ct1000", help="study to SIGKILL half-way ('' none)")
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--no-dicomweb-client", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--resume", action="store_true", help=argparse.SUPPRESS)
    for opt in (
        "--mongo",
        "--dicomweb",
        "--patient",
        "--case",
        "--db",
        "--archive",
        "--batch-files",
        "--s3-endpoint",
        "--s3-bucket",
        "--s3-prefix",
        "--review",
        "--slide",
    ):
        parser.add_argument(opt, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(child(args))))
    else:
        run(args)


if __name__ == "__main__":
    main()
