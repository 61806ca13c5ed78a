"""Business calendars, free of I/O: the arithmetic the review clock counts on.

A `BusinessCalendar` is a time zone, daily working hours, working weekdays and
a holiday list (the `holidays` package, by country and optional subdivision,
plus organisation closures). It answers two questions: "when are N business
seconds after this instant used up?" (`add`) and "how many business seconds lie
between two instants?" (`between`). Local working hours are turned into UTC
instants day by day through zoneinfo, so daylight-saving changes are exact.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from functools import cached_property, lru_cache
from zoneinfo import ZoneInfo

import holidays
from pydantic import BaseModel, ConfigDict, Field, field_validator

# A calendar with no working day at all would loop forever; ten years is far
# beyond any review deadline.
MAX_DAYS = 3660


class CalendarSpec(BaseModel):
    """How an organisation (or a reviewer) works; settings and the roster hold these."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    timezone: str = "America/New_York"
    day_start: time = time(9, 0)
    day_end: time = time(17, 0)
    workdays: tuple[int, ...] = Field(default=(0, 1, 2, 3, 4), description="Monday is 0")
    holidays: str = Field(default="US", description="Country[-subdivision], e.g. US-CA; '' none")
    closures: tuple[date, ...] = ()
    around_the_clock: bool = Field(default=False, description="24x7: no hours, no holidays")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (KeyError, ValueError, OSError):  # ZoneInfoNotFoundError is a KeyError
            raise ValueError("unknown time zone") from None
        return v


@lru_cache(maxsize=256)
def country_holidays(country: str, subdiv: str | None) -> holidays.HolidayBase:
    """One holiday table per country and subdivision for the process: a calendar is
    made per clock and per reviewer, and a fresh table computes each year's holidays
    again on first use (in a soak profile, 8 % of assignment's CPU went there).
    The table fills in years as they are asked for; the dates never change."""
    return holidays.country_holidays(country, subdiv=subdiv)


class BusinessCalendar:
    """Working time arithmetic on one `CalendarSpec`."""

    def __init__(self, spec: CalendarSpec) -> None:
        self.spec = spec
        self.zone = ZoneInfo(spec.timezone)

    @cached_property
    def _holidays(self) -> holidays.HolidayBase | dict[date, str]:
        if not self.spec.holidays:
            return {}
        country, _, subdiv = self.spec.holidays.partition("-")
        return country_holidays(country, subdiv or None)

    def is_working_day(self, day: date) -> bool:
        return (
            day.weekday() in self.spec.workdays
            and day not in self._holidays
            and day not in self.spec.closures
        )

    def _windows(self, start: datetime) -> Iterator[tuple[datetime, datetime]]:
        """Working intervals (UTC) that end after `start`, in order."""
        day = start.astimezone(self.zone).date()
        for _ in range(MAX_DAYS):
            if self.is_working_day(day):
                opens = datetime.combine(day, self.spec.day_start, self.zone).astimezone(UTC)
                closes = datetime.combine(day, self.spec.day_end, self.zone).astimezone(UTC)
                if closes > start:
                    yield max(opens, start), closes
            day += timedelta(days=1)
        raise ValueError("calendar has no working time within ten years")

    def add(self, start: datetime, seconds: float) -> datetime:
        """The instant at which `seconds` of working time after `start` are used up."""
        start = start.astimezone(UTC)
        if self.spec.around_the_clock:
            return start + timedelta(seconds=seconds)
        if seconds <= 0:
            return start
        remaining = timedelta(seconds=seconds)
        for opens, closes in self._windows(start):
            if remaining <= closes - opens:
                return opens + remaining
            remaining -= closes - opens
        raise AssertionError("unreachable")  # _windows raises first

    def between(self, start: datetime, end: datetime) -> float:
        """Working seconds in [start, end) (0 if end is not after start)."""
        start, end = start.astimezone(UTC), end.astimezone(UTC)
        if end <= start:
            return 0.0
        if self.spec.around_the_clock:
            return (end - start).total_seconds()
        total = 0.0
        for opens, closes in self._windows(start):
            if opens >= end:
                break
            total += (min(closes, end) - opens).total_seconds()
        return total


AROUND_THE_CLOCK = CalendarSpec(timezone="UTC", holidays="", around_the_clock=True)
