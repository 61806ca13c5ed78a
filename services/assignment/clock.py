"""The service's notion of now, injectable: the system clock in production, a
file holding an ISO instant in tests (so a test can move time across a deadline
and restart the service process in between)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class FileClock:
    """Reads the instant from `path` on every call (written by a test)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def now(self) -> datetime:
        instant = datetime.fromisoformat(self.path.read_text().strip())
        return instant if instant.tzinfo else instant.replace(tzinfo=UTC)


def clock_from(path: Path | None) -> Clock:
    return FileClock(path) if path else SystemClock()
