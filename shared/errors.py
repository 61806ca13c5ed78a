"""The error tree that decides what happens to a failed message or request.

    RouterError
    ├── RetryableError          transient: retry with backoff, never skip the message
    │   └── ProviderUnavailable     a PACS / FHIR peer / webhook endpoint is down or slow
    └── PermanentError          will fail the same way every time: dead-letter or 4xx
        ├── InvalidInput            schema-invalid payload, missing fields (422)
        ├── UnknownEventType        wrong ce_type / unknown schema version (dead-letter)
        ├── Forbidden               authenticated but not allowed (403)
        ├── NotFound                no such resource for this tenant (404)
        ├── Conflict                the same key with different content (409)
        └── UnregisteredEndpoint    a URL that is not a registered endpoint (SSRF guard)

Database and broker connection failures from pymongo / aiokafka are classified as
retryable by `is_retryable`, so handlers never catch them themselves.
"""

from __future__ import annotations

from typing import Any


class RouterError(Exception):
    """Base of every error the router raises on purpose."""

    status_code = 500
    title = "Internal error"

    def __init__(self, detail: str, *, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors or []


class RetryableError(RouterError):
    status_code = 503
    title = "Temporarily unavailable"


class ProviderUnavailable(RetryableError):
    title = "Provider unavailable"


class PermanentError(RouterError):
    status_code = 400
    title = "Permanent failure"


class InvalidInput(PermanentError):
    status_code = 422
    title = "Invalid input"


class UnknownEventType(PermanentError):
    title = "Unknown event type or version"


class Forbidden(PermanentError):
    status_code = 403
    title = "Forbidden"


class NotFound(PermanentError):
    status_code = 404
    title = "Not found"


class Conflict(PermanentError):
    status_code = 409
    title = "Conflict"


class UnregisteredEndpoint(PermanentError):
    status_code = 422
    title = "Endpoint not registered"


def is_retryable(exc: BaseException) -> bool:
    """True for failures that another attempt may cure (infrastructure, not data)."""
    return isinstance(exc, (RetryableError, *transient_errors()))


def transient_errors() -> tuple[type[Exception], ...]:
    """The driver errors of a dependency that is briefly away (database, broker,
    an HTTP peer), as opposed to anything wrong with the data."""
    # Imported lazily so the domain layer never pulls in driver packages.
    # botocore's: an S3 store briefly away (records_fetch's archive; its own classes,
    # not the builtin ConnectionError): a restart of the store must not end a
    # service's start-up or fail a message for good.
    from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError
    from botocore.exceptions import ConnectionError as S3ConnectionError
    from botocore.exceptions import HTTPClientError as S3HTTPClientError
    from httpx import TransportError
    from pymongo.errors import AutoReconnect, ConnectionFailure, ServerSelectionTimeoutError

    return (
        AutoReconnect,
        ConnectionFailure,
        ServerSelectionTimeoutError,
        KafkaConnectionError,
        KafkaTimeoutError,
        TransportError,
        ConnectionError,
        TimeoutError,
        S3ConnectionError,
        S3HTTPClientError,
    )
