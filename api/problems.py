"""Errors as ``application/problem+json`` (RFC 9457) and the API's JSON responses.

Every 4xx/5xx the API sends goes through ``problem()``: ``type``, ``title``,
``status``, ``detail`` (which names the offending field) and, for invalid
input, ``errors: [{"field": "retry.max_attempts", "message": ...}]``.
``install(app)`` maps the error tree of ``taskstream.schemas.errors`` and
FastAPI's own exceptions:

=========================== ====== ======================================
exception                   status problem type
=========================== ====== ======================================
RequestValidationError      422    validation (400 malformed-json,
                                   413 too-large: a field over its size)
body that cannot be parsed  400    malformed-json (FastAPI's bare 400)
schemas.ValidationError     422    validation
schemas.NotFound            404    not-found
schemas.CommandRejected     409    conflict
schemas.StaleVersion        412    stale-version (with the ETag now)
schemas.TooLarge            413    too-large (the event would not fit)
schemas.BrokerUnavailable   503    broker-unavailable (nothing unacknowledged
                                   was written: retrying is safe)
schemas.WriteOutcomeUnknown 504    write-outcome-unknown (the broker may
                                   have written it: retry with the same
                                   ``Idempotency-Key`` to learn the outcome)
schemas.RecordRefused       413    too-large (the broker refused a record
                                   for its size: retrying cannot help)
HTTPException (404/405/413) as is  about:blank
anything else               500    internal (logged, no details leaked)
=========================== ====== ======================================

JSON is rendered with orjson through ``schemas.codec``. ``document(openapi)``
puts the same statuses into the OpenAPI document, so clients (and the
schemathesis fuzz test) know every answer an operation can give.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar, cast

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import ExceptionHandler

from taskstream.schemas import (
    BrokerUnavailable,
    CommandRejected,
    NotFound,
    RecordRefused,
    StaleVersion,
    TooLarge,
    ValidationError,
    WriteOutcomeUnknown,
    codec,
)
from taskstream.schemas.limits import MAX_JSON_DEPTH

from .body_encoding import BodyNotUtf8

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
_TYPE = "urn:taskstream:problem:"


class JSONResponse(Response):
    """A JSON response rendered by ``codec.dumps_json_bytes`` (orjson)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return codec.dumps_json_bytes(content)


class ProblemResponse(JSONResponse):
    media_type = PROBLEM_JSON


def problem(
    status: int,
    title: str,
    detail: str,
    *,
    kind: str | None = None,
    errors: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> ProblemResponse:
    body: dict[str, Any] = {
        "type": _TYPE + kind if kind else "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
    }
    if errors is not None:
        body["errors"] = errors
    body.update(extra)
    return ProblemResponse(body, status_code=status, headers=headers)


def validation_problem(errors: list[dict[str, str]], *, status: int = 422,
                       title: str = "Invalid request") -> ProblemResponse:
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    kind = {400: "malformed-json", 413: "too-large"}.get(status, "validation")
    return problem(status, title, detail, kind=kind, errors=errors)


def field_path(loc: tuple | list) -> str:
    """``("body", "tasks", 3, "retry", "max_attempts")`` -> ``tasks[3].retry.max_attempts``.

    Parts that come from the client (dict keys: labels, unknown fields) are
    shown escaped and cut, so a field name is always short, valid UTF-8 text.
    """
    parts = [p for p in loc if p != "[key]"]  # pydantic's marker of an error in a dict key, not in its value
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:] or parts
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{_safe(p)}" if out else _safe(p))
    return out


def _safe(part: object) -> str:
    text = str(part).encode("utf-8", "backslashreplace").decode("utf-8") or '""'  # an empty key is still named
    return text if len(text) <= 64 else text[:61] + "..."


def error_message(err: Mapping[str, Any]) -> str:
    """A pydantic error's message as we show it (without pydantic's ``Value error, `` prefix)."""
    msg = str(err.get("msg", "invalid"))
    return msg.removeprefix("Value error, ")


def violation(err: Mapping[str, Any]) -> tuple[str, str]:
    """A pydantic error as (field, message), as HTTP (422) and gRPC (``BadRequest``) name it.

    A JSON document's own path (``models._json_document``) extends the field: ``payload`` + ``.n``.
    """
    return field_path(err.get("loc", ())) + (err.get("ctx") or {}).get("json_path", ""), error_message(err)


async def _request_validation(_: Request, exc: RequestValidationError) -> Response:
    raw = exc.errors()
    if any(e.get("type") == "json_invalid" for e in raw):
        first = next(e for e in raw if e.get("type") == "json_invalid")
        ctx = first.get("ctx") or {}
        why = ctx.get("error", "invalid JSON")
        return _malformed(f"malformed JSON: {why}")
    errors = [{"field": field, "message": message} for field, message in map(violation, raw)]
    if all(e.get("type") == "too_large" for e in raw):
        return validation_problem(errors, status=413, title="Request too large")
    return validation_problem(errors)


def _malformed(message: str) -> ProblemResponse:
    return validation_problem([{"field": "body", "message": message}], status=400, title="Malformed JSON")


#: What FastAPI's body parse (stdlib ``json.loads``) raised, for its bare "error parsing the body" 400.
_PARSE_ERRORS = {
    RecursionError: f"malformed JSON: nested too deeply (at most {MAX_JSON_DEPTH} levels are taken)",
    UnicodeDecodeError: "malformed JSON: not valid UTF-8",
    ValueError: "malformed JSON: a number too long to read",  # ints beyond sys.get_int_max_str_digits()
}


async def _validation(_: Request, exc: ValidationError) -> Response:
    return validation_problem([{"field": f, "message": m} for f, m in exc.violations])


async def _not_found(_: Request, exc: NotFound) -> Response:
    return problem(404, "Not found", str(exc) or "not found", kind="not-found")


async def _rejected(_: Request, exc: CommandRejected) -> Response:
    return problem(409, "Conflict", str(exc), kind="conflict")


async def _stale(_: Request, exc: StaleVersion) -> Response:
    return problem(412, "Precondition failed", f"If-Match: {exc}", kind="stale-version", version=exc.version,
                   headers={"ETag": f'"{exc.version}"'})


async def _too_large(_: Request, exc: TooLarge) -> Response:
    return problem(413, "Request body too large", str(exc), kind="too-large")


async def _broker(_: Request, exc: BrokerUnavailable) -> Response:
    if isinstance(exc, RecordRefused):
        return problem(413, "Request body too large", f"the event log refused the request's record: {exc}",
                       kind="too-large")
    if isinstance(exc, WriteOutcomeUnknown):
        log.warning("write outcome unknown: %s", exc)
        return problem(504, "Write outcome unknown",
                       f"the event log did not confirm the write in time and may have taken it all the same: {exc}; "
                       "retry with the same Idempotency-Key to learn the outcome (without one, a retry may create a "
                       "second task)", kind="write-outcome-unknown", headers={"Retry-After": "1"})
    log.warning("broker unavailable: %s", exc)
    return problem(503, "Broker unavailable", f"the event log could not be written: {exc}", kind="broker-unavailable",
                   headers={"Retry-After": "1"})


async def _http(request: Request, exc: StarletteHTTPException) -> Response:
    if isinstance(exc, BodyNotUtf8):
        return _malformed(exc.detail)
    if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
        cause = exc.__cause__
        why = next((m for t, m in _PARSE_ERRORS.items() if isinstance(cause, t)), "malformed JSON")
        return _malformed(why)
    titles = {404: "Not found", 405: "Method not allowed", 413: "Request body too large"}
    title = titles.get(exc.status_code, "HTTP error")
    detail = exc.detail if isinstance(exc.detail, str) else title
    if exc.status_code in (404, 405) and detail in ("Not Found", "Method Not Allowed"):
        detail = f"{request.method} {request.url.path}: {title.lower()}"
    return problem(exc.status_code, title, detail, headers=getattr(exc, "headers", None))


async def _internal(_: Request, exc: Exception) -> Response:
    log.exception("unhandled error", exc_info=exc)
    return problem(500, "Internal server error", "an unexpected error occurred; it was logged", kind="internal")


_E = TypeVar("_E", bound=Exception)


def _on(app: FastAPI, exc_type: type[_E], handler: Callable[[Request, _E], Awaitable[Response]]) -> None:
    """Register ``handler`` for ``exc_type``. Starlette calls a handler only with the class it is registered for,
    which its type for handlers (any ``Exception``) cannot say; this signature ties the two together instead."""
    app.add_exception_handler(exc_type, cast(ExceptionHandler, handler))


def install(app: FastAPI) -> None:
    _on(app, RequestValidationError, _request_validation)
    _on(app, ValidationError, _validation)
    _on(app, NotFound, _not_found)
    _on(app, CommandRejected, _rejected)
    _on(app, StaleVersion, _stale)
    _on(app, TooLarge, _too_large)
    _on(app, BrokerUnavailable, _broker)
    _on(app, StarletteHTTPException, _http)
    _on(app, Exception, _internal)


# ------------------------------------------------------------------ OpenAPI

_PROBLEM_SCHEMA = {
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "errors": {"type": "array", "items": {
            "type": "object", "required": ["field", "message"],
            "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
        }},
    },
}
_WHY = {
    400: "Malformed JSON (field ``body``)",
    404: "No such task or schedule",
    409: "The change is impossible in the current status",
    412: "``If-Match`` names a stale version",
    413: "Request body, payload or event over its limit (docs/limits.md)",
    422: "Invalid input; ``errors`` names each field",
    503: "The event log cannot be reached; nothing was written, retry (``Retry-After``)",
    504: "The event log did not confirm the write in time, which may have happened all the same: retry with the "
         "same ``Idempotency-Key`` to learn the outcome",
}


def document(openapi: dict[str, Any]) -> dict[str, Any]:
    """Document the problem answers of every operation in ``openapi`` (FastAPI's own document, changed in place).

    FastAPI documents only the success status and a 422 of its own shape;
    this puts in the problem+json statuses each operation can answer (a
    body: 400, 413; a path id: 404; a write: 503, 504; a change of state or a taken name: 409,
    ``PATCH``: 412) and describes a 2xx that a route returns as a bare
    ``Response`` as a JSON object rather than a string.
    """
    openapi.setdefault("components", {}).setdefault("schemas", {})["Problem"] = _PROBLEM_SCHEMA
    openapi["components"]["schemas"].pop("HTTPValidationError", None)
    openapi["components"]["schemas"].pop("ValidationError", None)
    for path, operations in openapi.get("paths", {}).items():
        for method, op in operations.items():
            responses = op.setdefault("responses", {})
            for status, response in responses.items():
                content = response.get("content", {}).get("application/json")
                if status.startswith("2") and content is not None and content.get("schema") == {"type": "string"}:
                    content["schema"] = {"type": "object"}
            statuses = set()
            if op.get("parameters") or "requestBody" in op:
                statuses.add(422)
            if "requestBody" in op:
                statuses |= {400, 413}
            if "{" in path:
                statuses.add(404)
            if method in ("post", "patch", "delete"):
                statuses |= {503, 504}
            action = "}:" in path  # /schedules/{id}:pause and the like: refused in some statuses
            named = method == "post" and path.endswith("/triggers")  # a name the client chose may be taken
            if method in ("patch", "delete") or path.endswith("/retry") or action or named:
                statuses.add(409)
            if method == "patch":
                statuses.add(412)
            if path == "/readyz":
                statuses.add(503)
            for status in sorted(statuses):
                responses[str(status)] = {
                    "description": _WHY[status],
                    "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
                }
    return openapi
