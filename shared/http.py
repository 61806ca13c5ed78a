"""HTTP plumbing shared by the services' APIs: problem+json errors (RFC 9457),
health, readiness and Prometheus metrics."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.errors import RetryableError, RouterError, transient_errors

PROBLEM = "application/problem+json"
# What a client is told to wait before sending a request again after a 503.
RETRY_AFTER = {"Retry-After": "1"}
log = logging.getLogger(__name__)


def problem(
    status: int,
    title: str,
    detail: str,
    errors: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, object] = {
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
    }
    if errors:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def field_errors(exc: RequestValidationError) -> list[dict[str, str]]:
    """Field-level errors without echoing the submitted values (they may be PHI)."""
    return [
        {"loc": ".".join(str(p) for p in e["loc"]), "msg": e["msg"], "type": e["type"]}
        for e in exc.errors()
    ]


async def _router_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RouterError)
    retry = RETRY_AFTER if isinstance(exc, RetryableError) else None
    return problem(exc.status_code, exc.title, exc.detail, exc.errors or None, retry)


async def _dependency_away(_: Request, exc: Exception) -> JSONResponse:
    """The database or broker dropped out under a request: 503 and when to retry,
    not a bare 500. The write may or may not have landed; sending it again is safe
    (a case submission is idempotent by external_id, a repeated opinion is a 409)."""
    log.warning("request failed on a dependency: %s", type(exc).__name__)  # no message: PHI
    return problem(
        503,
        "Temporarily unavailable",
        "a service this request needs was briefly unavailable; send the request again",
        headers=RETRY_AFTER,
    )


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return problem(422, "Invalid input", "the request failed validation", field_errors(exc))


def create_api(
    title: str, description: str, ready: Callable[[], Awaitable[bool]], version: str = "1"
) -> FastAPI:
    app = FastAPI(title=title, description=description, version=version)
    app.add_exception_handler(RouterError, _router_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    for transient in transient_errors():
        app.add_exception_handler(transient, _dependency_away)

    @app.get("/healthz", tags=["ops"], summary="Liveness")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"], summary="Readiness: broker and database reachable")
    async def readyz() -> Response:
        ok = await ready()
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @app.get("/metrics", tags=["ops"], summary="Prometheus metrics")
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app


# ---------------------------------------------------------------- the request gate


class PayloadTooLarge(RouterError):
    status_code = 413
    title = "Payload too large"


class RequestGate:
    """ASGI middleware in front of every route: the caller is authenticated before
    a byte of the body is read, and no body is read past its cap.

    * A route that is not public needs a valid `Authorization: Bearer <key>`;
      without one the answer is 401 at once, whatever the body (the role is
      checked by the route's own dependency, `Service.require`).
    * A declared `Content-Length` over the cap is 413 at once; a body without
      one (chunked) is counted as it is read and refused with 413 when it passes
      the cap, so nothing larger is ever held in memory.

    Public routes (health, the API description, report verification, the
    dashboard page) have a smaller cap of their own."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        authenticate: Callable[[str], object],
        public: Callable[[str], bool],
        max_body_bytes: int,
        public_max_body_bytes: int,
    ) -> None:
        self.app = app
        self.authenticate = authenticate
        self.public = public
        self.max_body_bytes = max_body_bytes
        self.public_max_body_bytes = public_max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        headers = Headers(scope=scope)
        public = self.public(path)
        if not public:
            from shared.auth import Unauthorized, bearer_key

            try:
                self.authenticate(bearer_key(headers.get("authorization", "")))
            except Unauthorized as exc:
                await problem(401, exc.title, exc.detail)(scope, receive, send)
                return
        cap = self.public_max_body_bytes if public else self.max_body_bytes
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cap:
            await problem(413, "Payload too large", f"body exceeds {cap} bytes")(
                scope, receive, send
            )
            return
        seen, exceeded, started = 0, False, False

        async def counted() -> Message:
            nonlocal seen, exceeded
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > cap:
                    exceeded = True
                    raise PayloadTooLarge(f"body exceeds {cap} bytes")
            return message

        async def guarded(message: Message) -> None:
            nonlocal started
            if exceeded:
                return  # whatever the route made of the cut body, the answer is 413
            started = True
            await send(message)

        try:
            await self.app(scope, counted, guarded)
        except Exception:
            if not exceeded or started:
                raise
        if exceeded and not started:
            await problem(413, "Payload too large", f"body exceeds {cap} bytes")(
                scope, receive, send
            )
