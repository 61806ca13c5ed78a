"""Business-calendar arithmetic of the review clock: working hours, weekends,
holidays, time zones (with daylight saving) and pauses."""

from datetime import UTC, datetime, time
from zoneinfo import ZoneInfo

from services.assignment.calendar import AROUND_THE_CLOCK, BusinessCalendar, CalendarSpec
from services.assignment.domain import ReviewClock, deadline, pause_clock, resume_clock

NY = ZoneInfo("America/New_York")
NY_CAL = BusinessCalendar(CalendarSpec(timezone="America/New_York", holidays="US"))
H = 3600


def ny(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=NY)


def clock_from(start: datetime, hours: float) -> ReviewClock:
    return ReviewClock(budget_seconds=hours * H, started_at=start, running_since=start)


def test_48_business_hours_from_friday_17h_skip_weekend_and_thanksgiving() -> None:
    # Mon-Wed 24 h, Thu 26 Nov 2026 is Thanksgiving, Fri 32 h, Mon 40 h, Tue 48 h.
    start = ny(2026, 11, 20, 17)
    assert NY_CAL.add(start, 48 * H) == ny(2026, 12, 1, 17)
    assert NY_CAL.between(start, ny(2026, 12, 1, 17)) == 48 * H


def test_48_business_hours_with_a_pause_for_records() -> None:
    start = ny(2026, 11, 20, 17)
    clock = clock_from(start, 48)
    assert deadline(clock, NY_CAL) == ny(2026, 12, 1, 17)
    # Paused Mon 11:00 (2 h used) to Tue 10:00: 7 business hours lost, the
    # weekend and the night cost nothing.
    paused = pause_clock(clock, NY_CAL, ny(2026, 11, 23, 11), "records", "CT missing", "rf")
    assert deadline(paused, NY_CAL) is None and paused.consumed_seconds == 2 * H
    resumed = resume_clock(paused, ny(2026, 11, 24, 10), "records", "rf")
    assert deadline(resumed, NY_CAL) == ny(2026, 12, 2, 16)
    assert resumed.pauses[0].reason == "CT missing" and resumed.pauses[0].resumed_at is not None


def test_pauses_for_two_reasons_resume_only_when_both_end() -> None:
    clock = clock_from(ny(2026, 11, 16, 9), 16)
    clock = pause_clock(clock, NY_CAL, ny(2026, 11, 16, 10), "records", "labs", "rf")
    clock = pause_clock(clock, NY_CAL, ny(2026, 11, 16, 11), "consent", "release", "ops")
    clock = resume_clock(clock, ny(2026, 11, 16, 12), "records", "rf")
    assert deadline(clock, NY_CAL) is None and clock.paused_for == ["consent"]
    clock = resume_clock(clock, ny(2026, 11, 16, 13), "consent", "ops")
    # 1 h used Monday morning; 15 h from Mon 13:00 = Mon 4 h + Tue 8 h + Wed 3 h.
    assert deadline(clock, NY_CAL) == ny(2026, 11, 18, 12)


def test_start_outside_hours_and_daylight_saving_change() -> None:
    # 8 business hours from Friday evening end Monday 17:00 New York time; DST
    # began on Sunday 8 March 2026, so that is 21:00 UTC, not 22:00.
    due = NY_CAL.add(ny(2026, 3, 6, 18, 30), 8 * H)
    assert due == ny(2026, 3, 9, 17)
    assert due.astimezone(UTC) == datetime(2026, 3, 9, 21, tzinfo=UTC)


def test_same_instant_other_time_zone_and_holidays() -> None:
    berlin = BusinessCalendar(
        CalendarSpec(timezone="Europe/Berlin", holidays="DE", day_start=time(8), day_end=time(16))
    )
    start = datetime(2026, 12, 23, 16, tzinfo=UTC)  # 17:00 in Berlin, after hours
    # Thu 24 Dec works, Fri 25 and Sat 26 are holidays/weekend, Mon 28 works.
    assert berlin.is_working_day(datetime(2026, 12, 24).date())
    assert not berlin.is_working_day(datetime(2026, 12, 25).date())
    assert berlin.add(start, 12 * H) == datetime(2026, 12, 28, 12, tzinfo=ZoneInfo("Europe/Berlin"))
    assert NY_CAL.add(start, 12 * H) == ny(2026, 12, 24, 15)  # New York: 11:00 + 4 h Wed


def test_around_the_clock_for_urgent_cases() -> None:
    cal = BusinessCalendar(AROUND_THE_CLOCK)
    start = ny(2026, 11, 20, 17)
    assert cal.add(start, 12 * H) == ny(2026, 11, 21, 5)
    assert cal.between(start, ny(2026, 11, 21, 5)) == 12 * H


def test_organisation_closures() -> None:
    spec = CalendarSpec(
        timezone="America/New_York", holidays="", closures=(ny(2026, 11, 23).date(),)
    )
    assert BusinessCalendar(spec).add(ny(2026, 11, 20, 17), 8 * H) == ny(2026, 11, 24, 17)
