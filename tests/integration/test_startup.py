"""A service started while the broker is down waits for it instead of exiting
(nothing would restart it on a laptop, and a crash loop in production)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from deploy.local.stack import free_port, stop_pid
from tests.conftest import REPO


def infra_cmd(state: Path, *args: str) -> None:
    env = {**os.environ, "LOCAL_STATE_DIR": str(state)}
    subprocess.run(
        [sys.executable, str(REPO / "deploy/local/infra.py"), *args], env=env, check=True
    )


def status(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=1).status_code
    except httpx.HTTPError:
        return None


def launch(module: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", module],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def waits_unready(proc: subprocess.Popen[bytes], port: int, away: str) -> None:
    """For 8 s, while `away` stays down: alive, not ready."""
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the service exited instead of waiting for {away}"
        time.sleep(0.5)
    assert status(f"http://127.0.0.1:{port}/readyz") != 200


def becomes_ready(proc: subprocess.Popen[bytes], port: int) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and status(f"http://127.0.0.1:{port}/readyz") != 200:
        assert proc.poll() is None
        time.sleep(0.5)
    assert status(f"http://127.0.0.1:{port}/readyz") == 200


def test_service_started_before_the_broker_becomes_ready_once_it_is_up(
    infra: dict[str, Any], stack_root: Path, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP": infra["kafka_bootstrap"],
        "MONGO_URI": infra["mongo_uri"],
        "TRACE_DIR": str(tmp_path),
        "ASSIGNMENT_HTTP_PORT": str(port),
        "ASSIGNMENT_MONGO_DATABASE": f"startup{port}",
    }
    infra_cmd(stack_root / "infra", "stop", "--only", "kafka")
    proc = launch("services.assignment", env, tmp_path / "assignment.log")
    try:
        waits_unready(proc, port, "the broker")
        infra_cmd(stack_root / "infra", "start", "--only", "kafka")
        becomes_ready(proc, port)
        assert b"start-up waits" in (tmp_path / "assignment.log").read_bytes()
    finally:
        stop_pid(proc.pid)
        infra_cmd(stack_root / "infra", "start", "--only", "kafka")


class LateForwarder:
    """A loopback port that refuses connections until `open()`, then forwards them
    to `target` (the S3 store away for a while, then back)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target, self.port = target, free_port()
        self._server: socket.socket | None = None

    def open(self) -> None:
        self._server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        assert self._server is not None
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := a.recv(65536):
                b.sendall(data)
        with contextlib.suppress(OSError):
            b.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()


def test_records_fetch_started_while_the_s3_store_is_away_waits_for_it(
    infra: dict[str, Any], tmp_path: Path
) -> None:
    """The S3 store restarts with the broker on the local stack (a fault test hit
    records_fetch's start-up in that window, and it exited for good)."""
    s3 = urlsplit(infra["s3_url"])
    store = LateForwarder((s3.hostname or "127.0.0.1", s3.port or 80))
    port = free_port()
    providers = tmp_path / "providers.json"
    providers.write_text("{}")
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP": infra["kafka_bootstrap"],
        "MONGO_URI": infra["mongo_uri"],
        "TRACE_DIR": str(tmp_path),
        "RECORDS_FETCH_HTTP_PORT": str(port),
        "RECORDS_FETCH_MONGO_DATABASE": f"startup{port}",
        "RECORDS_FETCH_PROVIDERS_FILE": str(providers),
        "RECORDS_FETCH_ARCHIVE": "s3",
        "RECORDS_FETCH_S3_ENDPOINT": f"http://127.0.0.1:{store.port}",
        "RECORDS_FETCH_S3_BUCKET": f"startup-{port}",
        "RECORDS_FETCH_S3_REGION": infra["s3_region"],
        "RECORDS_FETCH_S3_ACCESS_KEY_ID": infra["s3_access_key_id"],
        "RECORDS_FETCH_S3_SECRET_ACCESS_KEY": infra["s3_secret_access_key"],
        "RECORDS_FETCH_SPOOL_DIR": str(tmp_path / "spool"),
        "RECORDS_FETCH_CHECK_PROCESSES": "0",
    }
    proc = launch("services.records_fetch", env, tmp_path / "records_fetch.log")
    try:
        waits_unready(proc, port, "S3")
        store.open()
        becomes_ready(proc, port)
        text = (tmp_path / "records_fetch.log").read_bytes()
        assert b"start-up waits: EndpointConnectionError" in text
    finally:
        stop_pid(proc.pid)
        store.close()
