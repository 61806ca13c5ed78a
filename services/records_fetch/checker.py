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

A worker that dies fails every check it had in flight (`BrokenProcessPool`):
the pool is replaced and each of those checks is run once more on a fresh
worker; a file whose check kills a worker again is reported corrupt with that
reason, never retried for ever, and the service goes on with the rest.

`processes=0` runs the checks in threads of this process instead (for tests
that count threads or run without a process start).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from pathlib import Path
from typing import TypeVar

from prometheus_client import Counter

from services.records_fetch import dicom
from services.records_fetch.domain import InstanceCheck

log = logging.getLogger(__name__)

T = TypeVar("T")

WORKER_DIED = Counter(
    "records_fetch_check_worker_died_total",
    "Check worker processes that died while checking a retrieved file",
)
DIED_TWICE = "the check's worker process died twice on this file (a crashing decoder?)"


def _warm() -> bool:
    """A worker's first job: the imports done and the decoders looked up, before a
    study's first part arrives."""
    return dicom._decoder_available(dicom.RLE_LOSSLESS)


class Checker:
    """Runs `dicom` checks off this process (see the module's docstring)."""

    def __init__(self, processes: int = 1) -> None:
        self.processes = processes
        self._pool: ProcessPoolExecutor | None = None
        self._retrying: asyncio.Lock | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # forkserver: a clean process (no copy of this one's threads and sockets)
            # that has imported the checks once; each worker forks from it.
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload([dicom.__name__])
            self._pool = ProcessPoolExecutor(self.processes, mp_context=context)
        return self._pool

    async def start(self) -> None:
        """Start the workers now (the service's startup), not on the first study."""
        if self.processes:
            await self._run(_warm)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    async def series_part(
        self, path: Path, study_uid: str, series_uid: str, patient_id: str, decode: bool
    ) -> tuple[str, InstanceCheck]:
        """`dicom.inspect_series_part`, off this process."""
        check = partial(
            dicom.inspect_series_part, path, study_uid, series_uid, patient_id, decode=decode
        )
        return await self.run(check, died=("", InstanceCheck(ok=False, problems=[DIED_TWICE])))

    async def instance(
        self, path: Path, expected_sop_uid: str, expected_patient_id: str | None
    ) -> InstanceCheck:
        """`dicom.inspect_file` with a decode of the sampled frames, off this process."""
        check = partial(
            dicom.inspect_file, path, expected_sop_uid, expected_patient_id, decode=True
        )
        return await self.run(check, died=InstanceCheck(ok=False, problems=[DIED_TWICE]))

    async def run(self, check: Callable[[], T], died: T) -> T:
        """`check()` in a worker; `died` if it ended its worker on both tries."""
        try:
            return await self._run(check)
        except BrokenProcessPool:
            log.warning("a check ended its worker process twice; the file is reported corrupt")
            return died

    async def _run(self, fn: Callable[[], T]) -> T:
        if not self.processes:
            return await asyncio.to_thread(fn)
        loop = asyncio.get_running_loop()
        pool = self._executor()
        try:
            return await loop.run_in_executor(pool, fn)
        except BrokenProcessPool:
            self._replace(pool)
        # The second tries one at a time: the file that kills a worker then fails
        # only its own second try, not the innocent checks that died with it.
        self._retrying = self._retrying or asyncio.Lock()
        async with self._retrying:
            pool = self._executor()
            try:
                return await loop.run_in_executor(pool, fn)
            except BrokenProcessPool:
                self._replace(pool)
                raise

    def _replace(self, broken: Executor) -> None:
        """A new pool for the next checks (once per broken pool, however many of
        its checks failed with it)."""
        if self._pool is broken:
            WORKER_DIED.inc()
            log.warning("a check worker process died; its checks are run again")
            self._pool = None
            broken.shutdown(wait=False, cancel_futures=True)
