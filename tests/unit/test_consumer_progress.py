"""Consumer progress bookkeeping (shared/progress.py) on a manual clock, and the
Prometheus rule that alarms on it, evaluated by Prometheus's own promtool.
The same alarm on a consumer stalled on purpose on the real broker:
tests/integration/test_consumer_stall_alarm.py."""

from __future__ import annotations

import shutil
from datetime import timedelta

import pytest

from shared.clock import ManualClock
from shared.progress import END_OFFSET, OFFSET, STALLED, ConsumerProgress
from tests.promrules import alerts_fired

GROUP = "router.unit.case.status"
L = f'{{group="{GROUP}",topic="case.status",partition="0"}}'


def gauge(metric: object, partition: int = 0) -> float:
    return metric.labels(GROUP, "case.status", str(partition))._value.get()  # type: ignore[attr-defined]


def test_a_consumer_that_stands_still_with_more_to_read_is_stalled_after_the_threshold() -> None:
    clock = ManualClock()
    progress = ConsumerProgress(clock, stall_seconds=120)
    progress.observe(GROUP, "case.status", 0, offset=5, end=5)
    for minute in range(1, 4):
        clock.advance(timedelta(seconds=60))
        progress.observe(GROUP, "case.status", 0, offset=5, end=5 + minute * 10)
        assert progress.snapshot()[0]["stalled"] is (minute >= 2)
    assert (gauge(OFFSET), gauge(END_OFFSET), gauge(STALLED)) == (5, 35, 1)
    row = progress.snapshot()[0]
    assert (row["behind"], row["seconds_since_progress"]) == (30, 180.0)


def test_an_advancing_or_caught_up_consumer_is_not_stalled() -> None:
    clock = ManualClock()
    progress = ConsumerProgress(clock, stall_seconds=120)
    for step in range(10):  # behind by 100, but moving
        clock.advance(timedelta(seconds=60))
        progress.observe(GROUP, "case.status", 1, offset=step * 10, end=100 + step * 10)
    assert progress.snapshot()[0]["stalled"] is False
    for _ in range(10):  # caught up and idle for ten minutes: nothing to read
        clock.advance(timedelta(seconds=60))
        progress.observe(GROUP, "case.status", 1, offset=500, end=500)
    assert progress.snapshot()[0]["stalled"] is False
    assert gauge(STALLED, 1) == 0


def test_a_partition_taken_by_another_instance_is_no_longer_reported() -> None:
    progress = ConsumerProgress(ManualClock(), stall_seconds=120)
    progress.observe(GROUP, "case.status", 2, offset=1, end=9)
    progress.forget(set())
    assert progress.snapshot() == []


needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool (Debian package prometheus) not installed"
)


@needs_promtool
def test_the_rule_fires_on_a_consumer_standing_still_while_its_partition_grows() -> None:
    # One sample a minute for 30 minutes: the offset stays at 7, the end grows.
    series = {
        f"router_consumer_offset{L}": "7x30",
        f"router_consumer_end_offset{L}": "7+3x30",
        f"router_consumer_stalled{L}": "0x30",
    }
    assert ("ConsumerStalled", GROUP, "case.status", "0") in alerts_fired(series, at_minutes=30)


@needs_promtool
def test_the_rule_stays_quiet_for_a_consumer_that_keeps_up() -> None:
    series = {
        f"router_consumer_offset{L}": "7+3x30",
        f"router_consumer_end_offset{L}": "9+3x30",
        f"router_consumer_stalled{L}": "0x30",
    }
    assert not [a for a in alerts_fired(series, at_minutes=30) if a[0] == "ConsumerStalled"]
