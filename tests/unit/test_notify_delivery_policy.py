"""notify's delivery policy, pure and in-process: the three-day retry schedule
(full jitter, capped interval), the per-endpoint circuit breaker, sequence
numbers per subscription (fan-out on a ManualClock with an in-memory store),
the settings that fail closed, and what the clinician and alert e-mails say.
The same rules against the real database, HTTP and SMTP:
tests/integration/test_notify_delivery.py."""

from __future__ import annotations

import itertools
import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.notify import domain, handlers
from services.notify.domain import AttemptResult, Breaker, BreakerPolicy, RetryPolicy
from services.notify.handlers import Notify
from services.notify.models import Delivery, Subscription
from services.notify.settings import NotifySettings
from shared.clock import ManualClock
from shared.envelope import EventMeta
from shared.events import ReportLinks, ReportReady
from shared.settings import InsecureSettings

T0 = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
DAY = 24 * 3600.0
FAILED = AttemptResult(False, True, 503, "HTTP 503", 1.0)
REFUSED = AttemptResult(False, False, 400, "HTTP 400", 1.0)
OK = AttemptResult(True, False, 204, "", 1.0)
DEFAULTS = NotifySettings(dev_mode=True)
POLICY = RetryPolicy(
    DEFAULTS.max_attempts,
    DEFAULTS.base_backoff_seconds,
    DEFAULTS.max_backoff_seconds,
    DEFAULTS.retry_window_seconds,
)


@pytest.mark.parametrize("seed", range(20))
def test_default_schedule_spans_three_days_with_capped_jittered_intervals(seed: int) -> None:
    times = domain.retry_schedule(POLICY, T0, random.Random(seed))
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
    assert times[-1] - T0 == timedelta(days=3)  # the last try is at the deadline itself
    assert all(0 <= g <= 3600 for g in gaps)  # the 1 h cap
    assert len(times) > 100  # hourly-ish tries for three days, not a minute's worth
    # Early intervals are bounded by the exponential (10 s, 20 s, 40 s...), jittered.
    assert all(g <= 10 * 2**i for i, g in enumerate(gaps[:8]))


def test_the_schedule_is_a_pure_function_of_its_inputs() -> None:
    one = domain.retry_schedule(POLICY, T0, random.Random(7))
    assert one == domain.retry_schedule(POLICY, T0, random.Random(7))
    assert one != domain.retry_schedule(POLICY, T0, random.Random(8))  # jitter is real


def test_next_state_dead_letters_at_the_window_and_never_schedules_past_it() -> None:
    end = T0 + timedelta(days=3)
    late = end - timedelta(seconds=5)
    state, at = domain.next_state(POLICY, 150, FAILED, late, T0, random.Random(1))
    assert state == "pending" and at is not None and T0 < at <= end
    assert domain.next_state(POLICY, 151, FAILED, end, T0) == ("dead_letter", None)
    assert domain.next_state(POLICY, 1, REFUSED, T0, T0) == ("dead_letter", None)
    assert domain.next_state(POLICY, 1, OK, T0, T0) == ("delivered", None)
    capped = RetryPolicy(3, 1, 60, 3 * DAY)  # an operator's count bound still applies
    assert domain.next_state(capped, 3, FAILED, T0, T0) == ("dead_letter", None)
    throttled = AttemptResult(False, True, 429, "HTTP 429", 1.0, retry_after=7200)
    _, at = domain.next_state(POLICY, 1, throttled, T0, T0, random.Random(1))
    assert at == T0 + timedelta(seconds=3600)  # Retry-After honoured, within the cap


def test_breaker_opens_after_threshold_probes_half_open_and_closes() -> None:
    policy = BreakerPolicy(failure_threshold=3, base_seconds=30, cap_seconds=3600)
    rng = random.Random(3)
    b = Breaker()
    for n in (1, 2):
        b = domain.breaker_after(policy, b, FAILED, T0, rng)
        assert b.state == "closed" and b.failures == n
        assert domain.breaker_admits(b, T0) == "send"
    b = domain.breaker_after(policy, b, FAILED, T0, rng)
    assert b.state == "open" and b.opened == 1 and b.opened_at == T0
    assert b.retry_at is not None and T0 + timedelta(seconds=30) <= b.retry_at
    assert domain.breaker_admits(b, T0) == "hold"
    assert domain.breaker_admits(b, b.retry_at - timedelta(seconds=1)) == "hold"
    assert domain.breaker_admits(b, b.retry_at) == "probe"
    # The probe fails: open again, for an interval that may grow to the cap.
    later = b.retry_at
    again = domain.breaker_after(policy, b.model_copy(update={"state": "half_open"}), FAILED, later)
    assert again.state == "open" and again.opened == 2 and again.opened_at == T0
    assert again.retry_at is not None and again.retry_at <= later + timedelta(seconds=3600)
    # A probe that succeeds closes it; so does a refusal of one message (the endpoint is up).
    assert domain.breaker_after(policy, again, OK, later) == Breaker()
    assert domain.breaker_after(policy, again, REFUSED, later) == Breaker()


def test_breaker_open_intervals_stay_within_base_and_cap() -> None:
    policy = BreakerPolicy(failure_threshold=1, base_seconds=30, cap_seconds=3600)
    rng = random.Random(11)
    b = Breaker()
    for _ in range(40):
        b = domain.breaker_after(policy, b, FAILED, T0, rng)
        assert b.retry_at is not None
        assert 30 <= (b.retry_at - T0).total_seconds() <= 3600


# ---------------------------------------------------------------- sequence numbers


class MemoryStore:
    """What fan_out needs of NotifyStore, in memory (the real one, with its
    atomic $inc, is tested against the database in the integration tier)."""

    def __init__(self, subs: list[Subscription]) -> None:
        self.subs = {s.id: s for s in subs}
        self.deliveries: dict[str, Delivery] = {}
        self.clinicians: dict[str, str] = {}

    async def active_subscriptions(self, tenant_id: str, event_type: str) -> list[Subscription]:
        return [s for s in self.subs.values() if s.tenant_id == tenant_id and s.sends]

    async def delivery_exists(self, delivery_id: str) -> bool:
        return delivery_id in self.deliveries

    async def allocate_sequence(self, sub_id: str, delivery_id: str) -> int:
        sub = self.subs[sub_id]
        if sub.last_sequenced != delivery_id:
            sub.sequence += 1
            sub.last_sequenced = delivery_id
        return sub.sequence

    async def create_delivery(self, delivery: Delivery) -> bool:
        if delivery.id in self.deliveries:
            return False
        self.deliveries[delivery.id] = delivery
        return True

    async def clinician_of(self, tenant_id: str, case_id: str) -> str:
        return self.clinicians.get(case_id, "")


def _sub(sub_id: str) -> Subscription:
    return Subscription(
        id=sub_id,
        tenant_id="t1",
        event_types=["report.ready"],
        url="http://127.0.0.1:9/h",
        created_at=T0,
    )


def _ready(case_id: str) -> ReportReady:
    return ReportReady(
        case_id=case_id,
        tenant_id="t1",
        report_id=f"r-{case_id}",
        reviewer_id="rev",
        concordance="confirmed",
        signed_at=T0,
        content_sha256="0" * 64,
        links=ReportLinks(report="/v1/reports/x"),
    )


def _meta() -> EventMeta:
    return EventMeta(str(uuid.uuid4()), ReportReady.ce_type(), "/t", T0.isoformat(), "t1")


def _ctx(store: Any) -> Notify:
    return Notify(store, NotifySettings(dev_mode=True), ManualClock(T0))


async def test_sequence_numbers_per_subscription_monotonic_without_gaps() -> None:
    store = MemoryStore([_sub("sub_a"), _sub("sub_b")])
    ctx = _ctx(store)
    metas = [_meta() for _ in range(5)]
    for i, m in enumerate(metas):
        assert await handlers.fan_out(ctx, _ready(f"case-{i}"), m) == 2
    assert await handlers.fan_out(ctx, _ready("case-0"), metas[0]) == 0  # redelivered
    for sub_id in ("sub_a", "sub_b"):
        mine = [d for d in store.deliveries.values() if d.subscription_id == sub_id]
        assert [d.sequence for d in mine] == [1, 2, 3, 4, 5]
        assert [d.payload["sequence"] for d in mine] == [1, 2, 3, 4, 5]
        assert [d.payload["data"]["case_id"] for d in mine] == [f"case-{i}" for i in range(5)]
        assert len({d.shard for d in mine}) == 1  # one worker per subscription: in order


async def test_a_fan_out_retried_after_a_crash_reuses_its_sequence_number() -> None:
    store = MemoryStore([_sub("sub_a")])
    ctx = _ctx(store)
    m = _meta()
    # The process died after numbering the delivery and before storing it.
    await store.allocate_sequence("sub_a", domain.delivery_id_for(m.event_id, "sub_a"))
    assert await handlers.fan_out(ctx, _ready("case-0"), m) == 1
    assert await handlers.fan_out(ctx, _ready("case-1"), _meta()) == 1
    assert sorted(d.sequence or 0 for d in store.deliveries.values()) == [1, 2]


async def test_report_ready_also_goes_to_the_known_treating_clinician() -> None:
    store = MemoryStore([_sub("sub_a")])
    store.clinicians["case-0"] = "dr.who@clinic.example"
    ctx = _ctx(store)
    m = _meta()
    assert await handlers.fan_out(ctx, _ready("case-0"), m) == 2
    clinician = store.deliveries[domain.clinician_delivery_id(m.event_id)]
    assert clinician.audience == "treating_clinician" and clinician.channel == "email"
    assert clinician.recipient == "dr.who@clinic.example" and clinician.subscription_id == ""
    assert clinician.sequence is None  # no subscription, no sequence
    assert await handlers.fan_out(ctx, _ready("case-1"), _meta()) == 1  # no clinician known


def test_shards_are_stable_and_in_range() -> None:
    shards = {domain.shard_of(f"sub_{i}", 4) for i in range(100)}
    assert shards == {0, 1, 2, 3}
    assert domain.shard_of("sub_x", 4) == domain.shard_of("sub_x", 4)


# ---------------------------------------------------------------- settings and content


def test_smtp_without_starttls_fails_closed_outside_dev_mode(tmp_path: Any) -> None:
    creds = tmp_path / "creds.json"
    creds.write_text("[]")
    prod = {"dev_mode": False, "credentials_file": creds, "kafka_allow_plaintext": True}
    with pytest.raises(InsecureSettings, match="STARTTLS"):
        NotifySettings(**prod).check_production()
    with pytest.raises(InsecureSettings, match="REPORTING_API_KEY"):
        NotifySettings(
            **prod, smtp_starttls=True, clinician_report_policy={"t1": "attachment"}
        ).check_production()
    NotifySettings(**prod, smtp_starttls=True).check_production()


def test_clinician_policy_per_tenant_and_message_content() -> None:
    s = NotifySettings(dev_mode=True, clinician_report_policy={"t1": "attachment"})
    assert s.clinician_policy("t1") == "attachment" and s.clinician_policy("t2") == "link"
    data = {"case_id": "case-9", "report_id": "r9", "concordance": "changed_diagnosis"}
    subject, text = domain.clinician_message(data, "https://reports.example", "attachment")
    assert "case-9" in text and "https://reports.example/v1/reports/r9" in text
    assert "attached" in text and "changed" not in text + subject
    _, linked = domain.clinician_message(data, "https://reports.example", "link")
    assert "attached" not in linked


def test_dead_letter_alert_names_ids_and_how_to_resend() -> None:
    dead = {
        "_id": "msg_1",
        "event_type": "report.ready",
        "sequence": 7,
        "attempts": [{"status": 503, "error": "HTTP 503"}],
        "payload": {"data": {"concordance": "confirmed"}},
    }
    subject, text = domain.dead_letter_alert_message(dead, "sub_a", "https://p.example/h")
    assert "sub_a" in subject
    for part in ("msg_1", "report.ready", "Sequence number: 7", "HTTP 503", "resend"):
        assert part in text
    assert "confirmed" not in text
