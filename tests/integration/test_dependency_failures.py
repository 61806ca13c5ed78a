"""The database going away under the services, on a real SecantusDB of the test's
own (started by deploy/local/mongo_server.py, as the stack starts it): pooled
connections are dropped before the server closes them as idle, and an API whose
database is gone answers 503 with Retry-After instead of a bare 500."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs

import httpx
import pytest
from pymongo import AsyncMongoClient
from pymongo.errors import AutoReconnect

from deploy.local import infra
from deploy.local.mongo_server import IDLE_CLOSE_SECONDS
from deploy.local.stack import free_port, stop_pid
from shared.http import create_api
from shared.store import connect

pytestmark = pytest.mark.integration
HERE = Path(__file__).resolve().parents[2]
SERVER_IDLE_SECONDS = 2.0


@pytest.fixture
def mongo(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A SecantusDB that closes idle connections after SERVER_IDLE_SECONDS."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            str(HERE / "deploy" / "local" / "mongo_server.py"),
            "--port",
            str(port),
            "--storage-path",
            str(tmp_path / "db"),
            "--client-idle-timeout",
            str(SERVER_IDLE_SECONDS),
            "--log-level",
            "WARNING",
        ],
        start_new_session=True,  # its own process group, which stop_pid stops
    )
    try:
        yield f"mongodb://127.0.0.1:{port}/?directConnection=true&retryWrites=false", proc
    finally:
        if proc.poll() is None:
            stop_pid(proc.pid)


async def _writes_after_idle(uri: str) -> list[str]:
    """Eight writes on a warm pool, a pause past the server's idle limit, eight more:
    the failures of the second round."""
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(uri, w="majority")
    try:
        for _ in range(50):  # the server takes about a second to start
            try:
                await client.admin.command("ping")
                break
            except Exception:
                await asyncio.sleep(0.2)
        coll = client.db.t
        await asyncio.gather(*(coll.insert_one({}) for _ in range(8)))
        await asyncio.sleep(SERVER_IDLE_SECONDS + 1)
        failures = []
        for _ in range(8):
            try:
                await coll.insert_one({})
            except AutoReconnect as exc:
                failures.append(type(exc).__name__)
        return failures
    finally:
        await client.close()


async def test_pooled_connections_are_dropped_before_the_server_closes_them(
    mongo: tuple[str, subprocess.Popen[bytes]],
) -> None:
    uri, _ = mongo
    # The quirk is real: a pool that keeps idle connections fails its next write.
    assert await _writes_after_idle(uri) == ["AutoReconnect"]
    # The local stack's options drop them first, in the same proportion as here.
    local_idle_ms = float(parse_qs(infra.MONGO_OPTIONS)["maxIdleTimeMS"][0])
    assert local_idle_ms < IDLE_CLOSE_SECONDS * 1000
    scaled = local_idle_ms / (IDLE_CLOSE_SECONDS * 1000) * SERVER_IDLE_SECONDS * 1000
    assert await _writes_after_idle(f"{uri}&maxIdleTimeMS={scaled:.0f}") == []


async def test_an_api_whose_database_is_gone_answers_503_with_retry_after(
    mongo: tuple[str, subprocess.Popen[bytes]],
) -> None:
    uri, proc = mongo
    client, db = connect(f"{uri}&serverSelectionTimeoutMS=1000", "api")

    async def ready() -> bool:
        return True

    api = create_api("t", "t", ready)

    @api.post("/v1/things")
    async def add_thing() -> dict[str, str]:
        await db.things.insert_one({"name": "x"})
        return {"ok": "yes"}

    transport = httpx.ASGITransport(app=api)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
            for _ in range(50):
                if (await http.post("/v1/things")).status_code == 200:
                    break
                await asyncio.sleep(0.2)
            else:
                pytest.fail("the database never came up")
            proc.kill()
            proc.wait()
            r = await http.post("/v1/things")
    finally:
        await client.close()
    assert r.status_code == 503
    assert r.headers["retry-after"] == "1"
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["title"] == "Temporarily unavailable"
    assert "127.0.0.1" not in r.text  # the driver's message stays in the server
