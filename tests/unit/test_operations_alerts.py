"""The capacity alert of the operations view (docs/operations.md, "Capacity"),
evaluated by Prometheus's own promtool on the gauges assignment exports
(`assignment_specialty_demand`, `assignment_specialty_eligible_reviewers`): a
subspecialty with open demand and no eligible reviewer in a jurisdiction fires
after 15 minutes; demand with a reviewer, or a reviewer without demand, does not."""

from __future__ import annotations

import shutil

import pytest

from tests.promrules import alerts_fired

pytestmark = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool (Debian prometheus) absent"
)
ALERT = ("SpecialtyWithoutEligibleReviewer",)
KEYS = ("subspecialty", "jurisdiction", "severity")


def gauges(demand: int, eligible: int, subspecialty: str, jurisdiction: str) -> dict[str, str]:
    labels = f'instance="assignment-0",subspecialty="{subspecialty}",jurisdiction="{jurisdiction}"'
    return {
        f"assignment_specialty_demand{{{labels}}}": f"{demand}x40",
        f"assignment_specialty_eligible_reviewers{{{labels}}}": f"{eligible}x40",
    }


def test_demand_without_an_eligible_reviewer_fires_after_fifteen_minutes() -> None:
    series = {
        **gauges(3, 0, "cardiology", "US-NY"),  # stuck: fires
        **gauges(2, 1, "neuroradiology", "US-CA"),  # a reviewer: no alert
        **gauges(0, 0, "pathology", "US-TX"),  # nobody, but no demand: no alert
    }
    assert alerts_fired(series, 10, ALERT, KEYS) == set()  # not yet: `for: 15m`
    assert alerts_fired(series, 20, ALERT, KEYS) == {
        ("SpecialtyWithoutEligibleReviewer", "cardiology", "US-NY", "critical")
    }


def test_a_reviewer_licensed_in_time_clears_it() -> None:
    labels = 'instance="assignment-0",subspecialty="cardiology",jurisdiction="US-NY"'
    series = {
        f"assignment_specialty_demand{{{labels}}}": "1x40",
        # no eligible reviewer for 10 minutes, then one is licensed there
        f"assignment_specialty_eligible_reviewers{{{labels}}}": "0x10 1x30",
    }
    assert alerts_fired(series, 30, ALERT, KEYS) == set()


IMPORT = ("ReviewPacsImportFailing",)


def test_a_review_pacs_refusing_imports_for_twenty_minutes_fires() -> None:
    failing = {'records_fetch_review_import_failures_total{namespace="router"}': "0+2x60"}
    assert alerts_fired(failing, 15, IMPORT, ("namespace", "severity")) == set()
    assert alerts_fired(failing, 35, IMPORT, ("namespace", "severity")) == {
        ("ReviewPacsImportFailing", "router", "critical")
    }


def test_one_failed_import_that_the_retry_cured_does_not() -> None:
    blip = {'records_fetch_review_import_failures_total{namespace="router"}': "0x5 1x55"}
    assert alerts_fired(blip, 40, IMPORT, ("namespace", "severity")) == set()


CHECKS = ("RetrievedFilesBreakTheChecks",)


def test_a_file_that_crashes_or_hangs_the_checks_fires() -> None:
    died = {
        'records_fetch_check_worker_died_total{namespace="router"}': "0x10 2x50",
        'records_fetch_check_timed_out_total{namespace="router"}': "0x60",
    }
    assert alerts_fired(died, 5, CHECKS, ("namespace", "severity")) == set()
    assert alerts_fired(died, 15, CHECKS, ("namespace", "severity")) == {
        ("RetrievedFilesBreakTheChecks", "router", "warning")
    }
    hung = {'records_fetch_check_timed_out_total{namespace="router"}': "0x10 1x50"}
    assert alerts_fired(hung, 15, CHECKS, ("namespace", "severity")) == {
        ("RetrievedFilesBreakTheChecks", "router", "warning")
    }


def test_checks_that_never_fail_do_not_fire() -> None:
    quiet = {
        'records_fetch_check_worker_died_total{namespace="router"}': "0x60",
        'records_fetch_check_timed_out_total{namespace="router"}': "0x60",
    }
    assert alerts_fired(quiet, 40, CHECKS, ("namespace", "severity")) == set()
