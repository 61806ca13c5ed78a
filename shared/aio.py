"""Small asyncio helpers shared by the background loops."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


async def sleep_until_woken(wake: asyncio.Event, seconds: float) -> None:
    """Sleep until `wake` is set or `seconds` pass, then re-arm it.

    Background loops (outbox relay, webhook dispatcher) are woken at once by
    new work and otherwise poll, which is what recovers work left by a crash."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await wake.wait()
    wake.clear()


async def drain_forever(
    step: Callable[[], Awaitable[bool]], wake: asyncio.Event, seconds: float, name: str
) -> None:
    """Run `step` until it reports no more work, then sleep until woken; forever.

    A failure (the database is down) pauses the loop until the next round
    instead of ending it: the work is durable and is picked up again."""
    while True:
        try:
            while await step():
                pass
        except Exception as exc:
            log.warning("%s paused: %s", name, type(exc).__name__)
        await sleep_until_woken(wake, seconds)


async def gather_all(*aws: Awaitable[T]) -> list[T]:
    """Run `aws` together, let every one finish, then raise the first failure if any.

    Unlike `asyncio.gather`, nothing is still running (and writing) when the
    caller sees a failure, and the caller gets the original exception; unlike a
    TaskGroup, a part that was about to succeed (an instance half downloaded) is
    not cancelled because another one failed."""
    results = await asyncio.gather(*aws, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results  # type: ignore[return-value]


class Slots:
    """At most `n` jobs at once, shared by polling loops (which wait for a slot:
    `async with slots`) and work handed over as it arrives (which only takes a free
    one: `try_take`, then `start`)."""

    def __init__(self, n: int) -> None:
        self._free = asyncio.Semaphore(n)
        self._running: set[asyncio.Task[None]] = set()  # referenced until done

    async def try_take(self) -> bool:
        if self._free.locked():
            return False
        await self._free.acquire()  # returns at once: a slot is free
        return True

    def release(self) -> None:
        self._free.release()

    def start(self, job: Coroutine[Any, Any, None], name: str) -> None:
        """Run `job` in the background in a slot already taken; freed when it ends."""

        async def run() -> None:
            try:
                await job
            finally:
                self.release()

        task = asyncio.create_task(run(), name=name)
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def __aenter__(self) -> None:
        await self._free.acquire()

    async def __aexit__(self, *_: object) -> None:
        self.release()
