"""HTTP plumbing shared by the services' APIs: problem+json errors (RFC 9457),
health, readiness and Prometheus metrics."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from shared.errors import RouterError

PROBLEM = "application/problem+json"


def problem(
    status: int, title: str, detail: str, errors: list[dict[str, str]] | None = None
) -> JSONResponse:
    body: dict[str, object] = {
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
    }
    if errors:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, media_type=PROBLEM)


def field_errors(exc: RequestValidationError) -> list[dict[str, str]]:
    """Field-level errors without echoing the submitted values (they may be PHI)."""
    return [
        {"loc": ".".join(str(p) for p in e["loc"]), "msg": e["msg"], "type": e["type"]}
        for e in exc.errors()
    ]


async def _router_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RouterError)
    return problem(exc.status_code, exc.title, exc.detail, exc.errors or None)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return problem(422, "Invalid input", "the request failed validation", field_errors(exc))


def create_api(
    title: str, description: str, ready: Callable[[], Awaitable[bool]], version: str = "1"
) -> FastAPI:
    app = FastAPI(title=title, description=description, version=version)
    app.add_exception_handler(RouterError, _router_error)
    app.add_exception_handler(RequestValidationError, _validation_error)

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
