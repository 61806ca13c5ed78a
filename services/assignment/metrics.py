"""Prometheus metrics of the review SLA, from the latest dashboard snapshot.

Labels are aggregates only (stage, tier, status, subspecialty, reviewer id,
event type): never a case id, assignment id or anything about the patient.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from prometheus_client import REGISTRY
from prometheus_client import Counter as PromCounter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from services.assignment.dashboard import Dashboard
from shared.envelope import OutboxEntry

EVENTS = PromCounter(
    "assignment_events_emitted", "Events the assignment service emitted", ["topic"]
)


def count_emitted(outbox: Sequence[OutboxEntry]) -> None:
    for entry in outbox:
        EVENTS.labels(entry.topic).inc()


class SlaCollector(Collector):
    """Turns the latest `Dashboard` (refreshed by the service's loop) into gauges."""

    def __init__(self) -> None:
        self.snapshot: Dashboard | None = None

    def collect(self) -> Iterable[Metric]:
        d = self.snapshot
        if d is None:
            return
        cases = GaugeMetricFamily(
            "assignment_cases", "Assignments by stage and tier", labels=["stage", "tier"]
        )
        for c in d.by_stage_and_tier:
            if c.stage != "reported":
                cases.add_metric([c.stage, c.tier], c.count)
        yield cases
        yield from self._sla(d)
        yield from self._reviewers(d)
        yield from self._turnaround(d)

    def _sla(self, d: Dashboard) -> Iterable[Metric]:
        status = GaugeMetricFamily(
            "assignment_sla_cases",
            "Open assignments by SLA status and tier",
            labels=["status", "tier"],
        )
        for (s, tier), n in sorted(Counter((r.status, r.tier) for r in d.cases).items()):
            status.add_metric([s, tier], n)
        yield status
        remaining = GaugeMetricFamily(
            "assignment_sla_min_remaining_business_hours",
            "Least business time left among open assignments, by tier",
            labels=["tier"],
        )
        least: dict[str, float] = {}
        for r in d.cases:
            least[r.tier] = min(
                least.get(r.tier, r.remaining_business_hours), r.remaining_business_hours
            )
        for tier, hours in sorted(least.items()):
            remaining.add_metric([tier], hours)
        yield remaining

    def _reviewers(self, d: Dashboard) -> Iterable[Metric]:
        load = GaugeMetricFamily(
            "assignment_reviewer_load", "Open assignments", labels=["reviewer_id"]
        )
        cap = GaugeMetricFamily("assignment_reviewer_capacity", "Capacity", labels=["reviewer_id"])
        for r in d.reviewers:
            load.add_metric([r.reviewer_id], r.load)
            cap.add_metric([r.reviewer_id], r.capacity)
        yield load
        yield cap

    def _turnaround(self, d: Dashboard) -> Iterable[Metric]:
        t = GaugeMetricFamily(
            "assignment_turnaround_hours",
            "Turnaround from records complete to report, by subspecialty",
            labels=["subspecialty", "quantile"],
        )
        for row in d.turnaround:
            t.add_metric([row.subspecialty, "0.5"], row.median_hours)
            t.add_metric([row.subspecialty, "0.9"], row.p90_hours)
        yield t


COLLECTOR = SlaCollector()
REGISTRY.register(COLLECTOR)
