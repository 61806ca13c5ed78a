"""records_fetch's check workers (`services.records_fetch.checker`), with real
worker processes: a check that ends its worker (as a crashing native decoder
would, here `os._exit`) is tried once more on a fresh worker and then reported,
the checks queued beside it pass, and the service's own process goes on; a check
that hangs is stopped at the timeout, its worker replaced, and the checks behind
it run; real DICOM files get the same verdict in a worker as in a thread.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import pydicom
import pytest
import pytest_asyncio

from services.records_fetch import dicom
from services.records_fetch.checker import (
    CHECK_TIMED_OUT,
    DIED_TWICE,
    WORKER_DIED,
    Checker,
    took_too_long,
)

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


@pytest_asyncio.fixture(loop_scope="session")
async def checker() -> AsyncIterator[Checker]:
    c = Checker(processes=1)
    await c.start()
    yield c
    await asyncio.to_thread(c.close)


def died() -> float:
    return WORKER_DIED._value.get()


def reason(why: str) -> str:
    return f"failed: {why}"


async def test_a_check_that_kills_its_worker_is_reported_and_the_others_survive(
    checker: Checker,
) -> None:
    first = await checker.run(os.getpid, lambda why: -1)
    assert first not in (-1, os.getpid())  # a process of its own
    before = died()
    # The killer is queued first, the innocent check behind it: the killer ends a
    # worker, is tried on a fresh one, ends that one too and is reported; the
    # innocent check runs on the next worker and passes.
    killer = asyncio.ensure_future(checker.run(partial(os._exit, 70), reason))
    await asyncio.sleep(0)
    innocent = asyncio.ensure_future(checker.run(partial(pow, 2, 10), lambda why: -1))
    assert await killer == reason(DIED_TWICE)
    assert await innocent == 1024
    assert died() - before == 2  # two workers ended, both by the killer
    after = await checker.run(os.getpid, lambda why: -1)
    assert after not in (-1, first, os.getpid())  # a fresh worker checks on


async def test_a_check_that_kills_its_worker_once_passes_on_the_second_try(
    checker: Checker, tmp_path: Path
) -> None:
    marker = tmp_path / "crashed-once"
    before = died()
    result = await checker.run(partial(_crash_once, str(marker)), reason)
    assert result == "second try" and died() - before == 1


async def test_a_hanging_check_is_stopped_and_the_checks_behind_it_run() -> None:
    checker = Checker(processes=1, timeout=1.0)
    await checker.start()
    try:
        first = await checker.run(os.getpid, lambda why: -1)
        before = CHECK_TIMED_OUT._value.get()
        started = time.monotonic()
        hanging = asyncio.ensure_future(checker.run(partial(_slow, 60), reason))
        await asyncio.sleep(0)
        behind = asyncio.ensure_future(checker.run(partial(pow, 3, 3), lambda why: -1))
        assert await hanging == reason(took_too_long(1.0))
        assert time.monotonic() - started < 30  # stopped, not slept out
        assert await behind == 27
        assert CHECK_TIMED_OUT._value.get() - before == 1
        after = await checker.run(os.getpid, lambda why: -1)
        assert after not in (-1, first)  # the hanging check's worker was killed
        with pytest.raises(ProcessLookupError):
            os.kill(first, 0)
    finally:
        await asyncio.to_thread(checker.close)


def _crash_once(marker: str) -> str:
    """Ends its worker the first time it is run (a decoder's transient crash)."""
    if not os.path.exists(marker):
        Path(marker).touch()
        os._exit(70)
    return "second try"


async def test_real_files_get_the_same_verdict_in_a_worker_as_in_a_thread(
    checker: Checker, tmp_path: Path
) -> None:
    threads = Checker(processes=0)
    for name in ["CT_small.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm"]:
        path = tmp_path / name
        shutil.copy(TEST_FILES / name, path)
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        args = (path, ds.StudyInstanceUID, ds.SeriesInstanceUID, str(ds.PatientID), True)
        in_worker = await checker.series_part(*args)
        in_thread = await threads.series_part(*args)
        assert in_worker == in_thread == dicom.inspect_series_part(*args[:4], decode=True)
        assert in_worker[1].ok, in_worker[1].problems
        assert in_worker[0] == ds.SOPInstanceUID
        wrong = await checker.instance(path, ds.SOPInstanceUID, "ANOTHER-PATIENT")
        assert not wrong.ok and wrong.foreign_patient


async def test_the_service_goes_on_while_a_check_runs(checker: Checker) -> None:
    """A check holds its worker, not the service's event loop."""
    check = asyncio.ensure_future(checker.run(partial(_slow, 0.5), reason))
    ticks = 0
    while not check.done():
        await asyncio.sleep(0.01)
        ticks += 1
    assert await check == "slept" and ticks >= 20


def _slow(seconds: float) -> str:
    time.sleep(seconds)
    return "slept"
