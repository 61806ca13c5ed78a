"""The local reaper's rules (deploy/local/reaper.py), as pure functions: what a
committed offset releases, what a partner topic's cap cuts, which topics are
partner topics. The same rules on the real broker: tests/integration/
test_partition_depth.py."""

from __future__ import annotations

from deploy.local.reaper import beyond_cap, deletable, is_partner_topic


def test_a_batch_goes_only_when_the_next_one_starts_at_or_below_the_floor() -> None:
    bases = [0, 5, 10, 15, 20]
    # offset 12 committed: batch 10 still holds record 12, so 0 and 5 go
    assert deletable(bases, floor=12, keep=0) == [0, 5]
    assert deletable(bases, floor=15, keep=0) == [0, 5, 10]
    assert deletable(bases, floor=100, keep=2) == [0, 5, 10]  # the newest 2 stay


def test_the_partner_cap_keeps_the_newest_batches_whatever_was_read() -> None:
    assert beyond_cap([0, 1, 2, 3, 4], keep=3) == [0, 1]
    assert beyond_cap([0, 1], keep=3) == []
    assert beyond_cap([], keep=3) == []


def test_only_partner_topics_and_never_a_dead_letter_topic_are_capped() -> None:
    assert is_partner_topic("partner.demo-health.report.ready")
    assert not is_partner_topic("partner.demo-health.report.ready.dlq")
    assert not is_partner_topic("report.ready")
    assert not is_partner_topic("case.status.dlq")
    assert not is_partner_topic("partners.report.ready")
