"""notify's rules: SSRF guard, retry classification, backoff, delivery identity."""

from datetime import UTC, datetime

import pytest

from services.notify import domain, webhooks
from services.notify.models import Subscription
from shared.errors import UnregisteredEndpoint


@pytest.mark.parametrize(
    ("url", "resolved"),
    [
        ("http://169.254.169.254/latest/meta-data", ["169.254.169.254"]),
        ("https://internal.example/hook", ["10.0.0.1"]),
        ("https://intranet.example/hook", ["192.168.1.20"]),
        ("https://v6.example/hook", ["fd00::1"]),
        ("https://user:pw@partner.example/hook", ["93.184.216.34"]),
        ("ftp://partner.example/hook", ["93.184.216.34"]),
        ("https://nowhere.example/hook", []),
    ],
)
def test_private_metadata_and_malformed_urls_refused(url: str, resolved: list[str]) -> None:
    with pytest.raises(UnregisteredEndpoint):
        domain.check_webhook_url(url, resolved, production=False, allow_loopback=True)


def test_loopback_only_in_local_development() -> None:
    domain.check_webhook_url(
        "http://127.0.0.1:9/h", ["127.0.0.1"], production=False, allow_loopback=True
    )
    with pytest.raises(UnregisteredEndpoint):
        domain.check_webhook_url(
            "http://127.0.0.1:9/h", ["127.0.0.1"], production=False, allow_loopback=False
        )
    with pytest.raises(UnregisteredEndpoint):
        domain.check_webhook_url(
            "https://127.0.0.1/h", ["127.0.0.1"], production=True, allow_loopback=True
        )


def test_production_requires_https() -> None:
    domain.check_webhook_url(
        "https://partner.example/h", ["93.184.216.34"], production=True, allow_loopback=False
    )
    with pytest.raises(UnregisteredEndpoint, match="https"):
        domain.check_webhook_url(
            "http://partner.example/h", ["93.184.216.34"], production=True, allow_loopback=False
        )


@pytest.mark.parametrize(
    ("status", "retry"),
    [(500, True), (503, True), (429, True), (408, True), (400, False), (404, False), (410, False)],
)
def test_retryable_statuses(status: int, retry: bool) -> None:
    assert domain.retryable_status(status) is retry


def test_backoff_grows_is_capped_and_honours_retry_after() -> None:
    for attempt in range(1, 12):
        assert 0 <= domain.backoff_seconds(attempt, 1.0, 60.0) <= min(60.0, 2 ** (attempt - 1))
    assert domain.backoff_seconds(1, 1.0, 60.0, retry_after=30) >= 30
    assert domain.backoff_seconds(1, 1.0, 60.0, retry_after=3600) == 60.0


def test_one_delivery_id_per_event_and_subscriber() -> None:
    assert domain.delivery_id_for("e1", "s1") == domain.delivery_id_for("e1", "s1")
    assert domain.delivery_id_for("e1", "s1") != domain.delivery_id_for("e1", "s2")


def test_signature_verifies_with_the_secret_only() -> None:
    from standardwebhooks import Webhook
    from standardwebhooks.webhooks import WebhookVerificationError

    secret, other = webhooks.new_secret(), webhooks.new_secret()
    body = '{"type":"report.ready"}'
    headers = webhooks.signed_headers(secret, "msg_1", body, datetime.now(UTC))
    assert Webhook(secret).verify(body, headers) == {"type": "report.ready"}
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(body, headers)


def test_rotated_secret_signs_twice_during_grace_only() -> None:
    from datetime import timedelta

    from standardwebhooks import Webhook

    now = datetime.now(UTC)  # Webhook.verify checks the timestamp against the real time
    old, new = webhooks.new_secret(), webhooks.new_secret()
    sub = Subscription.load(
        {
            "_id": "sub_1",
            "tenant_id": "t1",
            "event_types": ["report.ready"],
            "created_at": now,
            "secret": new,
            "previous_secrets": [{"secret": old, "expires_at": now + timedelta(1)}],
        }
    )
    assert sub.signing_secrets(now) == [new, old]
    assert sub.signing_secrets(now + timedelta(2)) == [new]
    headers = webhooks.signed_headers(sub.signing_secrets(now), "msg_1", "{}", now)
    for secret in (old, new):
        assert Webhook(secret).verify("{}", headers) == {}


def test_retry_after_seconds_or_http_date() -> None:
    now = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
    assert domain.parse_retry_after("120", now) == 120
    assert domain.parse_retry_after("Fri, 20 Nov 2026 10:01:00 GMT", now) == 60
    assert domain.parse_retry_after("soon", now) is None
    assert domain.parse_retry_after("", now) is None


def test_next_state_retries_only_transient_failures_within_budget() -> None:
    now = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
    policy = domain.RetryPolicy(max_attempts=3, base_seconds=1, cap_seconds=600)
    fail = domain.AttemptResult(False, True, 503, "HTTP 503", 5.0)
    assert domain.next_state(policy, 1, domain.AttemptResult(True, False, 204, "", 1), now) == (
        "delivered",
        None,
    )
    state, at = domain.next_state(policy, 1, fail, now)
    assert state == "pending" and at is not None and at >= now
    assert domain.next_state(policy, 3, fail, now) == ("dead_letter", None)
    gone = domain.AttemptResult(False, False, 410, "HTTP 410", 5.0)
    assert domain.next_state(policy, 1, gone, now) == ("dead_letter", None)
    throttled = domain.AttemptResult(False, True, 429, "HTTP 429", 5.0, retry_after=120)
    _, at = domain.next_state(policy, 1, throttled, now)
    assert at is not None and (at - now).total_seconds() >= 120


def test_email_carries_a_link_not_clinical_content() -> None:
    data = {
        "case_id": "case-9",
        "concordance": "changed_diagnosis",
        "reviewer_id": "rev-neuro-1",
        "report_id": "r9",
        "links": {"report": "https://phish.example/login"},
    }
    subject, body = domain.email_message("report.ready", data, "https://reports.example/")
    assert "https://reports.example/v1/reports/r9" in body and "case-9" in body
    assert "phish" not in body  # the link is built from the report id, not taken
    assert "changed" not in body + subject and "rev-neuro" not in body


@pytest.mark.parametrize(
    "address", ["a@b", "x y@clinic.example", "<a@b.example>", "a@b.example,c@d.example"]
)
def test_odd_email_addresses_refused(address: str) -> None:
    from shared.errors import InvalidInput

    with pytest.raises(InvalidInput):
        domain.check_email_address(address)


def test_unknown_event_types_refused() -> None:
    from shared.errors import InvalidInput

    assert domain.check_event_types(["sla.breached", "report.ready"]) == [
        "report.ready",
        "sla.breached",
    ]
    with pytest.raises(InvalidInput):
        domain.check_event_types(["case.submitted"])
