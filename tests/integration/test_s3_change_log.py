"""The S3 store's change log stays bounded on the real SeaweedFS (issue 22).

SeaweedFS's filer logs every namespace change in minute files under
/topics/.system/log; under the local broker that log grew by about 400 MB an
hour (docs/performance.md, "The S3 store's change log"). The reaper prunes it
(deploy/local/filer_log.py). Here, on the test stack's own filer: the names it
really writes are the ones the pruning parses, the listing pages through a
directory, and the running reaper deletes an old minute file by itself."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from typing import Any

import httpx
import pytest

from deploy.local import filer_log
from deploy.local.filer_log import LOG_DIR


def filer_url(infra: dict[str, Any]) -> str:
    return f"http://127.0.0.1:{infra['ports']['weed_filer']}"


def plant(infra: dict[str, Any], path: str, body: bytes = b"not a real log") -> None:
    answer = httpx.post(filer_url(infra) + path, files={"file": (path.rsplit("/", 1)[-1], body)})
    assert answer.status_code == 201, answer.text


@pytest.mark.asyncio(loop_scope="session")
async def test_the_filer_writes_minute_files_the_pruning_understands(
    infra: dict[str, Any],
) -> None:
    filer = filer_log.Filer(filer_url(infra))
    # The filer flushes its log about once a minute; the stack changes objects all the time
    # (the reaper, offsets), so a file of the current day appears within a couple of minutes.
    deadline = time.monotonic() + 150
    while True:
        today = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
        names = await asyncio.to_thread(filer.list_names, f"{LOG_DIR}/{today}")
        if names:
            break
        assert time.monotonic() < deadline, "no change-log file written in 150 s"
        await asyncio.sleep(3)
    for name in names:
        ends = filer_log.minute_ends(today, name)
        assert ends is not None, f"a change-log name the pruning cannot read: {name}"
        assert ends <= dt.datetime.now(dt.UTC) + dt.timedelta(minutes=2)


@pytest.mark.asyncio(loop_scope="session")
async def test_listing_pages_through_a_directory(
    infra: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = f"/it-filer-{uuid.uuid4().hex[:8]}"
    for minute in range(7):
        plant(infra, f"{folder}/10-{minute:02d}.abcdef01")
    monkeypatch.setattr(filer_log, "PAGE", 3)
    filer = filer_log.Filer(filer_url(infra))
    names = await asyncio.to_thread(filer.list_names, folder)
    assert sorted(names) == [f"10-{m:02d}.abcdef01" for m in range(7)]
    assert await asyncio.to_thread(filer.list_names, f"{folder}-absent") == []
    await asyncio.to_thread(filer.delete, folder, True)
    assert await asyncio.to_thread(filer.list_names, folder) == []
    await asyncio.to_thread(filer.delete, folder, True)  # already gone: no error


@pytest.mark.asyncio(loop_scope="session")
async def test_the_running_reaper_prunes_an_old_minute_file_and_keeps_the_rest(
    infra: dict[str, Any],
) -> None:
    filer = filer_log.Filer(filer_url(infra))
    day = "2019-03-0" + str(1 + uuid.uuid4().int % 9)  # long past: older than any keep window
    plant(infra, f"{LOG_DIR}/{day}/10-00.abcdef01")
    plant(infra, f"{LOG_DIR}/{day}/README")  # not a log file: the pruning leaves it
    assert "10-00.abcdef01" in await asyncio.to_thread(filer.list_names, f"{LOG_DIR}/{day}")
    deadline = time.monotonic() + 30  # the reaper passes every 5 s
    while "10-00.abcdef01" in (names := filer.list_names(f"{LOG_DIR}/{day}")):
        assert time.monotonic() < deadline, "the reaper did not prune an old minute file"
        await asyncio.sleep(1)
    assert names == ["README"]  # and the day stays, since it is not empty
    await asyncio.to_thread(filer.delete, f"{LOG_DIR}/{day}", True)
