"""records_fetch's check workers (`services.records_fetch.checker`), with real
worker processes: a check that ends its worker (as a crashing native decoder
would, here `os._exit`) is tried once more on a fresh worker and then reported,
the checks that died beside it are run again and pass, and the service's own
process goes on; real DICOM files get the same verdict in a worker as in a
thread.
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
import pytest_asyncio

from services.records_fetch import dicom
from services.records_fetch.checker import WORKER_DIED, Checker

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


@pytest_asyncio.fixture(loop_scope="session")
async def checker() -> AsyncIterator[Checker]:
    c = Checker(processes=1)
    await c.start()
    yield c
    await asyncio.to_thread(c.close)


def died() -> float:
    return WORKER_DIED._value.get()


async def test_a_check_that_kills_its_worker_is_reported_and_the_others_survive(
    checker: Checker,
) -> None:
    first = await checker.run(os.getpid, died=-1)
    assert first not in (-1, os.getpid())  # a process of its own
    before = died()
    # The killer is queued first: the innocent check is lost with its worker, then
    # run again on the next one; the killer ends that one too and is reported.
    killer = asyncio.ensure_future(checker.run(partial(os._exit, 70), died="died twice"))
    await asyncio.sleep(0)
    innocent = asyncio.ensure_future(checker.run(partial(pow, 2, 10), died=-1))
    assert await killer == "died twice"
    assert await innocent == 1024
    assert died() - before == 2  # one death per worker, not per check it held
    after = await checker.run(os.getpid, died=-1)
    assert after not in (-1, first, os.getpid())  # a fresh worker checks on


async def test_a_check_that_kills_its_worker_once_passes_on_the_second_try(
    checker: Checker, tmp_path: Path
) -> None:
    marker = tmp_path / "crashed-once"
    before = died()
    result = await checker.run(partial(_crash_once, str(marker)), died="died twice")
    assert result == "second try" and died() - before == 1


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
    check = asyncio.ensure_future(checker.run(partial(_slow, 0.5), died="died"))
    ticks = 0
    while not check.done():
        await asyncio.sleep(0.01)
        ticks += 1
    assert await check == "slept" and ticks >= 20


def _slow(seconds: float) -> str:
    time.sleep(seconds)
    return "slept"
