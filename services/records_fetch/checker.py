"""Where the checks of retrieved instances run: worker processes of their own.

A check is pydicom's header read and, for a sample of compressed frames, a
decode by a native codec (libjpeg, openjpeg, RLE) of bytes a provider sent:
untrusted input to C code. In worker processes it

* cannot take the service down: a codec that crashes on a crafted file ends
  its worker, not records_fetch (in a thread it would end the process, and the
  restarted service would fetch the same case and crash again);
* does not hold the service's GIL: the stream of a study (the receive, the
  multipart parse, the spool writes) goes on beside it. Measured on a 300-slice
  CT (docs/performance.md, imaging): the stream with the checks in threads
  165 MB/s, in one worker process 226 MB/s, alone 291 MB/s.

A check runs on one worker at a time (pebble's process pool), so a worker that
dies takes only that check with it: the check is run once more on a fresh
worker (a transient death, e.g. the kernel's OOM killer), and a file whose check
ends a worker again is reported corrupt with that reason, never retried for
ever. A check that runs longer than `timeout` seconds (a decoder looping on a
crafted file) has its worker killed and replaced, and the file is reported
corrupt: a hanging check holds no other case's fetch for longer than that.

`processes=0` runs the checks in threads of this process instead (for tests
that count threads or run without a process start; no timeout there).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from collections.abc import Callable
from concurrent.futures import Future
from functools import partial
from pathlib import Path
from typing import TypeVar

from pebble import ProcessExpired, ProcessPool
from prometheus_client import Counter

from services.records_fetch import dicom
from services.records_fetch.domain import InstanceCheck

log = logging.getLogger(__name__)

T = TypeVar("T")

WORKER_DIED = Counter(
    "records_fetch_check_worker_died_total",
    "Check worker processes that died while checking a retrieved file",
)
CHECK_TIMED_OUT = Counter(
    "records_fetch_check_timed_out_total",
    "Checks of retrieved files stopped (their worker killed) for running too long",
)
DIED_TWICE = "the check's worker process died twice on this file (a crashing decoder?)"
# A check of a 0.73 GB whole-slide level, its sample of frames decoded, took 1.6 s
# on the 2-core development machine under load.
CHECK_TIMEOUT_SECONDS = 120.0


def took_too_long(seconds: float) -> str:
    return f"the check ran longer than {seconds:g} s and was stopped (a hanging decoder?)"


def _warm() -> bool:
    """A worker's first job: the imports done and the decoders looked up, before a
    study's first part arrives."""
    return dicom._decoder_available(dicom.RLE_LOSSLESS)


class Checker:
    """Runs `dicom` checks off this process (see the module's docstring)."""

    def __init__(self, processes: int = 1, timeout: float = CHECK_TIMEOUT_SECONDS) -> None:
        self.processes = processes
        self.timeout = timeout
        self._pool: ProcessPool | None = None

    def _executor(self) -> ProcessPool:
        if self._pool is None:
            # forkserver: a clean process (no copy of this one's threads and sockets)
            # that has imported the checks once; each worker forks from it.
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload([dicom.__name__])
            self._pool = ProcessPool(max_workers=self.processes, context=context)
        return self._pool

    async def start(self) -> None:
        """Start the workers now (the service's startup), not on the first study."""
        if self.processes:
            await self._run(_warm)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.stop()
            self._pool.join(timeout=10)
            self._pool = None

    async def series_part(
        self, path: Path, study_uid: str, series_uid: str, patient_id: str, decode: bool
    ) -> tuple[str, InstanceCheck]:
        """`dicom.inspect_series_part`, off this process."""
        check = partial(
            dicom.inspect_series_part, path, study_uid, series_uid, patient_id, decode=decode
        )
        return await self.run(check, lambda why: ("", InstanceCheck(ok=False, problems=[why])))

    async def instance(
        self, path: Path, expected_sop_uid: str, expected_patient_id: str | None
    ) -> InstanceCheck:
        """`dicom.inspect_file` with a decode of the sampled frames, off this process."""
        check = partial(
            dicom.inspect_file, path, expected_sop_uid, expected_patient_id, decode=True
        )
        return await self.run(check, lambda why: InstanceCheck(ok=False, problems=[why]))

    async def run(self, check: Callable[[], T], failed: Callable[[str], T]) -> T:
        """`check()` in a worker; `failed(reason)` if it ended its worker on both
        tries or ran past the timeout."""
        try:
            return await self._run(check)
        except ProcessExpired:
            log.warning("a check ended its worker process twice; the file is reported corrupt")
            return failed(DIED_TWICE)
        except TimeoutError:
            CHECK_TIMED_OUT.inc()
            log.warning("a check ran past %g s; its worker was replaced", self.timeout)
            return failed(took_too_long(self.timeout))

    async def _run(self, fn: Callable[[], T]) -> T:
        if not self.processes:
            return await asyncio.to_thread(fn)
        try:
            return await self._schedule(fn)
        except ProcessExpired:
            WORKER_DIED.inc()
            log.warning("a check worker process died; its check is run again")
        try:
            return await self._schedule(fn)
        except ProcessExpired:
            WORKER_DIED.inc()
            raise

    async def _schedule(self, fn: Callable[[], T]) -> T:
        # The pool starts a fresh worker for one that died or was killed; a
        # cancelled await (the attempt given up) stops the check's worker too.
        future: Future[T] = self._executor().schedule(fn, timeout=self.timeout)
        return await asyncio.wrap_future(future)
