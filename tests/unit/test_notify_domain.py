"""notify's rules: SSRF guard, retry classification, backoff, delivery identity."""

import pytest

from services.notify import domain, webhooks
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
    headers = webhooks.signed_headers(secret, "msg_1", body, webhooks.now())
    assert Webhook(secret).verify(body, headers) == {"type": "report.ready"}
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(body, headers)
