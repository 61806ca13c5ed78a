"""The one notion of "now" every service reads: injected, never `datetime.now`.

Production uses `SystemClock`. Tests use `ManualClock` (in-process: set or advance
it) or `FileClock` (a file holding an ISO instant, for a service run as a
process, so a test can move time across a deadline and restart the process in
between). Services receive a `Clock` from their bootstrap, `create_service(settings,
clock)`, and pass `clock.now()` into pure domain functions as `now`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class ManualClock:
    """A clock a test sets and advances; it never moves by itself."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 5, 9, 0, tzinfo=UTC)

    def now(self) -> datetime:
        return self._now

    def set(self, instant: datetime) -> None:
        self._now = instant if instant.tzinfo else instant.replace(tzinfo=UTC)

    def advance(self, delta: timedelta) -> None:
        self._now += delta


class FileClock:
    """Reads the instant from `path` on every call (written by a test)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def now(self) -> datetime:
        instant = datetime.fromisoformat(self.path.read_text().strip())
        return instant if instant.tzinfo else instant.replace(tzinfo=UTC)


def clock_from(path: Path | None) -> Clock:
    """The system clock, or a file clock when a test names a clock file."""
    return FileClock(path) if path else SystemClock()


SYSTEM_CLOCK: Clock = SystemClock()
