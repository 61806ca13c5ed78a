"""records_fetch SIGKILLed half-way through a series-level retrieval, then run again
on the same case (issue 20): the second run fetches only what the first had not
verified, counted at the PACS (a streaming proxy in front of the real Orthanc that
reads every instance it sends), and every instance ends received exactly once in
the archive's records.

The records_fetch process is `bench.imaging --child` (one attempt of one case:
claim, QIDO, series-level WADO-RS streamed into the archive, checks, records in
the real Mongo-wire server). The proxy sends series answers slowly, so the kill
lands while the series is streaming; a batch is 10 instances here so the first
run has made several batches durable before it dies.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pymongo import MongoClient

from bench import studies
from services.records_fetch import archive as archives

ROOT = Path(__file__).resolve().parents[2]
BATCH = 10  # instances made durable together
SERIES_PATH = re.compile(r"/dicom-web/studies/[0-9.]+/series/[0-9.]+")
INSTANCES = 60
BUCKET = "records"


class SlowPacs:
    """Forwards to Orthanc; streams series answers in small slices with pauses and
    counts every instance sent (alone or inside a series answer) by SOP UID."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.sent: Counter[str] = Counter()
        self.requests: list[str] = []
        self._lock = threading.Lock()
        pacs = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                pacs.handle(self)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/dicom-web"

    def handle(self, req: BaseHTTPRequestHandler) -> None:
        path = req.path.split("?")[0]
        with self._lock:
            self.requests.append(path)
        resp = httpx.get(
            self.upstream + req.path,
            headers={"Accept": req.headers.get("Accept", "*/*")},
            timeout=30,
        )
        body = resp.content
        series = bool(SERIES_PATH.fullmatch(path))
        if resp.status_code == 200 and (series or "/instances/" in path):
            for uid in sop_uids(body, resp.headers["content-type"]):
                with self._lock:
                    self.sent[uid] += 1
        req.send_response(resp.status_code)
        req.send_header("Content-Type", resp.headers.get("content-type", ""))
        req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        step = 16 * 1024 if series else len(body) or 1
        try:
            for at in range(0, len(body), step):
                req.wfile.write(body[at : at + step])
                if series:
                    time.sleep(0.01)  # about 1.6 MB/s: the kill lands mid-series
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client was killed

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def sop_uids(body: bytes, content_type: str) -> list[str]:
    boundary = content_type.split("boundary=")[1].split(";")[0].strip('"').encode()
    uids = []
    for piece in (b"\r\n" + body).split(b"\r\n--" + boundary)[1:]:
        _, sep, part = piece.partition(b"\r\n\r\n")
        if sep and not piece.startswith(b"--"):
            uids.append(
                str(pydicom.dcmread(io.BytesIO(part), stop_before_pixels=True).SOPInstanceUID)
            )
    return uids


def child(
    infra: dict[str, Any], pacs: str, patient: str, case: str, db: str, archive: Path
) -> list[str]:
    return [
        sys.executable, "-m", "bench.imaging", "--child",
        "--mongo", infra["mongo_uri"], "--dicomweb", pacs, "--patient", patient,
        "--case", case, "--db", db, "--archive", str(archive), "--batch-files", str(BATCH),
    ]  # fmt: skip


def s3_args(infra: dict[str, Any], prefix: str) -> list[str]:
    return ["--s3-endpoint", infra["s3_url"], "--s3-bucket", BUCKET, "--s3-prefix", prefix]


def s3_env(infra: dict[str, Any]) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": infra["s3_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": infra["s3_secret_access_key"],
        "AWS_REGION": infra["s3_region"],
    }


def s3_keys(infra: dict[str, Any], prefix: str) -> list[str]:
    client = archives.s3_client(
        infra["s3_url"],
        infra["s3_region"],
        infra["s3_access_key_id"],
        infra["s3_secret_access_key"],
    )
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def stored_objects(infra: dict[str, Any], prefix: str) -> dict[str, bytes]:
    """The archive's S3 objects: content address (sha256) -> body."""
    client = archives.s3_client(
        infra["s3_url"],
        infra["s3_region"],
        infra["s3_access_key_id"],
        infra["s3_secret_access_key"],
    )
    return {
        key.rsplit("/", 1)[-1]: client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        for key in s3_keys(infra, prefix)
    }


def stored_files(archive: Path) -> dict[str, bytes]:
    """The local archive's files under their content address (not the spool)."""
    return {
        p.name: p.read_bytes() for p in archive.rglob("*") if p.is_file() and p.parent.name != "tmp"
    }


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_sigkill_mid_series_then_resume_fetches_only_what_was_not_verified(
    infra: dict[str, Any], tmp_path: Path, kind: str
) -> None:
    patient = f"MRN-{uuid.uuid4().hex[:8]}"
    spec = studies.StudySpec("CT", (studies.Series("CT", INSTANCES, 128, "CHEST"),))
    assert studies.upload(infra["orthanc_url"], studies.instances(spec, patient))[0] == INSTANCES
    pacs = SlowPacs(infra["orthanc_url"])
    tag = uuid.uuid4().hex[:8]
    case, dbname, archive = f"case-{tag}", f"it_resume_{tag}", tmp_path / "records"
    argv = child(infra, pacs.url, patient, case, dbname, archive)
    prefix = f"it-resume-{tag}/"
    if kind == "s3":  # the spool is `archive`, the files go to the stack's SeaweedFS
        argv += s3_args(infra, prefix)
    mongo: MongoClient[Any] = MongoClient(infra["mongo_uri"])
    instances = mongo[dbname]["instances"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(s3_env(infra) if kind == "s3" else {})}
    try:
        first = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and first.poll() is None:
            if instances.count_documents({"case_id": case}) >= INSTANCES // 3:
                break
            time.sleep(0.02)
        assert first.poll() is None, "the first run ended before it could be killed"
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        received = list(instances.find({"case_id": case, "state": "received"}))
        verified = {d["sop_uid"] for d in received}
        assert INSTANCES // 3 <= len(verified) < INSTANCES
        # Every verified instance is stored, and nothing is stored under a content
        # address but a complete file: it hashes to its name. (A file stored but not
        # yet recorded when the kill came, up to a batch, is fetched again: it was
        # never verified.)
        stored = stored_objects(infra, prefix) if kind == "s3" else stored_files(archive)
        assert {d["sha256"] for d in received} <= set(stored)
        assert all(hashlib.sha256(body).hexdigest() == name for name, body in stored.items())
        assert len(stored) - len(verified) <= BATCH
        sent_before = Counter(pacs.sent)
        pacs.requests.clear()
        # The dead process's lease would hold the case for 10 minutes: let it lapse.
        lapsed = datetime.now(UTC) - timedelta(seconds=1)
        mongo[dbname]["fetches"].update_one({"_id": case}, {"$set": {"lease_until": lapsed}})
        second = subprocess.run(
            [*argv, "--resume"], cwd=ROOT, env=env, capture_output=True, timeout=120
        )
        assert second.returncode == 0, second.stderr[-2000:]
        again = pacs.sent - sent_before
        assert not set(again) & verified  # nothing verified was fetched again ...
        assert sorted(again) == sorted(set(again)) and len(again) == INSTANCES - len(verified)
        assert not any(SERIES_PATH.fullmatch(p) for p in pacs.requests)  # ... one by one
        docs = list(instances.find({"case_id": case}))
        assert len(docs) == INSTANCES and all(d["state"] == "received" for d in docs)
        assert all(d["retrievals"] == 1 for d in docs if d["sop_uid"] in verified)
        if kind == "s3":
            assert len(s3_keys(infra, prefix)) == INSTANCES
    finally:
        pacs.stop()
        mongo.drop_database(dbname)
        mongo.close()
