"""HTTP plumbing shared by the services' APIs: problem+json errors (RFC 9457),
health, readiness and Prometheus metrics, and the OpenAPI document that says
all of it (`describe_api`: the bearer scheme on every gated operation, every
error answer with its problem+json schema, the real media types)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.errors import RetryableError, RouterError, transient_errors

PROBLEM = "application/problem+json"
FHIR_JSON = "application/fhir+json"
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


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    """Starlette's and FastAPI's own refusals (a body that cannot be parsed, an
    unknown path, a method not allowed) as problem+json like every other error."""
    assert isinstance(exc, HTTPException)
    title = HTTPStatus(exc.status_code).phrase if exc.status_code in _STATUSES else "Error"
    return problem(exc.status_code, title, str(exc.detail), headers=dict(exc.headers or {}) or None)


_STATUSES = {s.value for s in HTTPStatus}


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return problem(422, "Invalid input", "the request failed validation", field_errors(exc))


def create_api(
    title: str, description: str, ready: Callable[[], Awaitable[bool]], version: str = "1"
) -> FastAPI:
    app = FastAPI(title=title, description=description, version=version)
    app.add_exception_handler(RouterError, _router_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    for transient in transient_errors():
        app.add_exception_handler(transient, _dependency_away)

    @app.get("/healthz", tags=["ops"], summary="Liveness")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["ops"],
        summary="Readiness: broker and database reachable",
        responses={
            200: {"content": {"application/json": {"schema": READY_SCHEMA}}},
            503: {
                "description": "Not ready",
                "content": {"application/json": {"schema": READY_SCHEMA}},
            },
        },
    )
    async def readyz() -> Response:
        ok = await ready()
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @app.get(
        "/metrics",
        tags=["ops"],
        summary="Prometheus metrics",
        response_class=PlainTextResponse,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app


# ---------------------------------------------------------------- the OpenAPI document

READY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["ready"],
    "properties": {"ready": {"type": "boolean"}},
}
SCHEME = "apiKey"  # shared.auth.BEARER's scheme name
# The shape of every error answer (RFC 9457 problem details, as `problem` builds it).
PROBLEM_SCHEMAS: dict[str, dict[str, Any]] = {
    "FieldError": {
        "type": "object",
        "title": "FieldError",
        "description": "One refused field; the submitted value is never echoed (it may be PHI).",
        "required": ["loc", "msg"],
        "properties": {
            "loc": {"type": "string", "description": "Where: e.g. body.patient.birth_date"},
            "msg": {"type": "string"},
            "type": {"type": "string", "description": "A stable code, e.g. missing"},
        },
    },
    "Problem": {
        "type": "object",
        "title": "Problem",
        "description": "RFC 9457 problem details.",
        "required": ["type", "title", "status", "detail"],
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "errors": {
                "type": "array",
                "items": {"$ref": "#/components/schemas/FieldError"},
                "description": "Every refused field at once (400, 422)",
            },
        },
    },
    "OperationOutcome": {
        "type": "object",
        "title": "OperationOutcome",
        "description": "A FHIR R4 OperationOutcome: every issue of a refused FHIR request.",
        "required": ["resourceType", "issue"],
        "properties": {
            "resourceType": {"type": "string", "enum": ["OperationOutcome"]},
            "issue": {"type": "array", "items": {"type": "object"}},
        },
    },
}
ERROR_TITLES = {
    400: "Malformed request body",
    401: "No valid API key (Authorization: Bearer <key>)",
    403: "The key's role or tenant may not do this",
    404: "No such resource for this tenant",
    409: "Conflicts with the resource's current state",
    413: "Body over the size cap",
    415: "Unsupported content type",
    422: "Invalid input: every refused field in errors[]",
    502: "The owning service could not be reached (an operations action)",
    503: "A dependency was briefly unavailable: send the request again (Retry-After)",
}
METHODS_WITH_BODY = {"post", "put", "patch"}


def problem_content(*, fhir: bool = False) -> dict[str, Any]:
    content: dict[str, Any] = {PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}}
    if fhir:  # a FHIR client may be answered in FHIR
        content[FHIR_JSON] = {"schema": {"$ref": "#/components/schemas/OperationOutcome"}}
    return content


# The refusals a FHIR client may be answered in FHIR (the others come from the gate).
FHIR_REFUSALS = {400, 409, 415, 422}


def errors(*statuses: int, fhir: bool = False) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route that can answer these statuses besides those every
    operation of its kind declares (see `describe_api`), e.g. `errors(409)`."""
    return {
        s: {
            "description": ERROR_TITLES[s],
            "content": problem_content(fhir=fhir and s in FHIR_REFUSALS),
        }
        for s in statuses
    }


def fhir_response(description: str, schema: dict[str, Any] | None = None) -> dict[int | str, Any]:
    """`responses=` of a route answering `application/fhir+json` (with
    `response_class=FhirJSONResponse`)."""
    body = schema or {"type": "object", "description": "a FHIR R4 resource"}
    return {200: {"description": description, "content": {FHIR_JSON: {"schema": body}}}}


def binary_response(media_type: str, description: str) -> dict[int | str, Any]:
    """`responses=` of a route answering a file (with `response_class=Response`)."""
    schema = {"type": "string", "format": "binary"}
    return {200: {"description": description, "content": {media_type: {"schema": schema}}}}


class FhirJSONResponse(JSONResponse):
    media_type = FHIR_JSON


def describe_api(app: FastAPI, public: Callable[[str], bool]) -> None:
    """Make the app's OpenAPI document say what the API really does:

    * every operation behind the request gate (not `public`) requires the bearer
      scheme and declares 401; one that checks the key's role declares 403;
    * every error answer is problem+json (`Problem`, with `errors[]`), FastAPI's
      `{detail}` 422 schema replaced; 413 everywhere (the gate caps every body),
      422 where there is input, 404 where a path names a resource, 503 where the
      database is involved (every gated call is audited);
    * what a route declares itself (`errors(409)`, `fhir_response`, ...) is kept."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = original()
        components = schema.setdefault("components", {})
        schemas = components.setdefault("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        schemas.update(PROBLEM_SCHEMAS)
        for model in schemas.values():
            _local_times(model)
        components.setdefault("securitySchemes", {})[SCHEME] = {
            "type": "http",
            "scheme": "bearer",
            "description": "Authorization: Bearer <key_id>.<secret> (a per-tenant API key)",
        }
        for path, operations in schema.get("paths", {}).items():
            for method, operation in operations.items():
                _describe_operation(path, method, operation, gated=not public(path))
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _local_times(schema: Any) -> None:
    """A `datetime.time` field is a wall-clock time without an offset ("09:00:00"),
    which JSON Schema's `time` format (RFC 3339 full-time, offset required) refuses:
    declared as RFC 3339's `partial-time`, which is what the API sends."""
    if isinstance(schema, dict):
        if schema.get("format") == "time":
            schema["format"] = "partial-time"
        for value in schema.values():
            _local_times(value)
    elif isinstance(schema, list):
        for value in schema:
            _local_times(value)


def _describe_operation(path: str, method: str, operation: dict[str, Any], gated: bool) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    fhir = FHIR_JSON in operation.get("requestBody", {}).get("content", {})
    has_input = bool(operation.get("parameters")) or "requestBody" in operation
    wanted = {413}
    if gated:
        role_checked = bool(operation.get("security"))
        operation["security"] = [{SCHEME: []}]
        wanted |= {401, 503} | ({403} if role_checked else set())
    if has_input or method in METHODS_WITH_BODY:
        wanted.add(422)
    if "{" in path and gated:
        wanted.add(404)
    if "requestBody" in operation:
        wanted.add(400)  # a body that is not JSON at all (bad UTF-8, truncated)
    if "422" in responses:  # FastAPI's {detail} shape: replaced by what is returned
        responses["422"] = errors(422, fhir=fhir)[422]
    for status in sorted(wanted):
        responses.setdefault(str(status), errors(status, fhir=fhir)[status])
    for code, response in responses.items():
        if code[0] in "45":
            refusal = fhir and int(code) in FHIR_REFUSALS
            response.setdefault("content", problem_content(fhir=refusal))


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
