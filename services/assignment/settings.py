"""assignment's settings (env prefix ASSIGNMENT_): the roster file, the SLA policy
(deadlines per tier and urgency, the business calendar, warnings, escalation
ladder, acceptance window) and the timer loop."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.assignment.calendar import CalendarSpec
from services.assignment.domain import EscalationStep, SlaPolicy
from shared.settings import REPO_ROOT, ServiceSettings


class AssignmentSettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="ASSIGNMENT_", extra="ignore", populate_by_name=True
    )
    service_name: str = "assignment"
    mongo_database: str = "assignment"
    http_port: int = 8003
    roster_file: Path = REPO_ROOT / "deploy" / "local" / "roster.json"
    # The reviewer organisation's business calendar, on which review deadlines count.
    calendar: CalendarSpec = CalendarSpec(timezone="America/New_York", holidays="US")
    # Review budget per service tier, in business hours of `calendar` (8 h a day by
    # default: 24 h = three business days for an imaging re-read, 80 h = two weeks).
    tier_hours: dict[str, float] = {
        "imaging_reread": 24,
        "pathology_rereview": 40,
        "specialist_opinion": 40,
        "multi_specialist": 80,
    }
    urgency_factor: dict[str, float] = {"routine": 1.0, "priority": 0.75, "urgent": 0.25}
    # Urgent cases do not wait for Monday: their clock counts every hour.
    around_the_clock_urgencies: tuple[str, ...] = ("urgent",)
    warning_fractions: tuple[float, ...] = (0.5, 0.75, 0.9)
    at_risk_fraction: float = 0.75
    # After the breach (level 0, operations notified): steps in business hours past
    # the deadline; each emits sla.breached with its level.
    escalation: tuple[EscalationStep, ...] = (
        EscalationStep(after_hours=4, action="notify"),
        EscalationStep(after_hours=8, action="reassign"),
    )
    # A reviewer answers an offer within this many of their own working hours.
    acceptance_hours: float = 4.0
    timer_poll_seconds: float = 5.0
    # Waiting (unassignable) assignments one re-offer pass tries at most: on each
    # freed capacity, roster change and timer pass, least recently tried first.
    reoffer_batch: int = Field(default=20, ge=1)
    # Tests inject time: a file holding an ISO instant replaces the system clock.
    clock_file: Path | None = None
    turnaround_window_days: int = 90
    # How often the timer loop recomputes the reported-work part of the metrics.
    reported_refresh_seconds: float = 60.0
    # The operations view (docs/operations.md): a case with no event for this long
    # reads "stalled", whatever its stage; trends cover this many days; due times
    # are shown in this time zone (the organisation's calendar by default).
    ops_stall_hours: float = Field(default=8.0, gt=0)
    ops_trend_days: int = Field(default=30, ge=1, le=366)
    # Where the operations actions go (each the service's own API, called with the
    # operator's own key, so the owning service authorises and audits the operator),
    # and where the case page links the report and the records manifest.
    intake_url: str = "http://127.0.0.1:8001"
    records_fetch_url: str = "http://127.0.0.1:8002"
    reporting_url: str = "http://127.0.0.1:8004"
    notify_url: str = "http://127.0.0.1:8005"
    # An OTLP backend's query API (Tempo: /api/traces/{id}); empty: TRACE_DIR's files.
    trace_query_url: str = ""

    @property
    def ops_timezone(self) -> str:
        return self.calendar.timezone

    def policy(self) -> SlaPolicy:
        return SlaPolicy(
            calendar=self.calendar,
            tier_hours=self.tier_hours,
            urgency_factor=self.urgency_factor,
            around_the_clock_urgencies=self.around_the_clock_urgencies,
            warning_fractions=self.warning_fractions,
            at_risk_fraction=self.at_risk_fraction,
            escalation=self.escalation,
            acceptance_hours=self.acceptance_hours,
        )
