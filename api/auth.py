"""Who is calling, what they may do, and how often: authentication, authorization and rate limits.

Every request passes ``AuthMiddleware`` (pure ASGI, so it guards every
route: FastAPI operations, the docs pages, mounts) before any route code
runs:

1. The route the request matches is looked up in ``ROUTE_ROLES``, the one
   table of who may call what. A route that is not in it is refused (403)
   whoever calls it: deny by default, so a new route cannot be served by
   accident. A path that matches no route needs a reader (then 404/405).
2. ``OPEN`` routes (``/healthz``, ``/readyz``) pass. ``METRICS``
   (``/metrics``) passes with the ``metrics_token`` bearer token; with no
   token configured it is open while the API listens on loopback (or runs
   without authentication by ``auth_allow_unauthenticated``), else refused.
3. Otherwise ``Authenticator.authenticate`` turns the ``Authorization`` /
   ``X-API-Key`` headers into a ``Principal`` (401 if missing or bad, 503 if
   keys or the JWKS cannot be checked right now) and ``authorize`` checks
   its role (403). With no authentication configured every caller is
   ``ANONYMOUS``, an admin: the API then serves loopback only
   (``check_exposure``).
4. The principal's token bucket is charged (``rate_limit``; 429 with
   ``Retry-After`` when empty) and the ``RateLimit-*`` headers go on the answer.

Route code finds the caller in ``request.state.principal`` (or the
``principal`` dependency). Other front ends (gRPC) call ``authenticate``
and ``authorize`` themselves with their metadata. Roles are ordered:
``reader`` < ``submitter`` < ``operator`` < ``admin``; each may do what the
ones below it may. Errors are problem+json with ``WWW-Authenticate``
(RFC 6750: ``error="invalid_token"`` on a rejected credential,
``error="insufficient_scope"`` on a 403). docs/security.md has the how-to.
"""

from __future__ import annotations

import asyncio
import fnmatch
import hmac
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import jwt
from fastapi import FastAPI, Request
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from taskstream.schemas import Settings

from .hosts import loopback
from .keys import PREFIX as KEY_PREFIX
from .keys import KeyStore, KeysUnavailable
from .problems import problem
from .rate_limit import Decision, TokenBuckets

log = logging.getLogger(__name__)


class Role(IntEnum):
    READER = 1
    SUBMITTER = 2
    OPERATOR = 3
    ADMIN = 4

    def __str__(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, name: str) -> Role | None:
        return cls.__members__.get(name.strip().upper()) if isinstance(name, str) else None


#: A route anyone may call.
OPEN = "open"
#: ``/metrics``: the ``metrics_token`` bearer token; with none set, open on a loopback API only.
METRICS = "metrics"

#: Who may call each route: ``(method, path template)`` -> the lowest role, ``OPEN`` or ``METRICS``.
#: HEAD is checked as GET; ``("*", path)`` covers every method of a mount. A route missing here is refused.
ROUTE_ROLES: dict[tuple[str, str], Role | str] = {
    ("GET", "/healthz"): OPEN,
    ("GET", "/readyz"): OPEN,
    ("GET", "/metrics"): METRICS,
    ("GET", "/openapi.json"): Role.READER,
    ("GET", "/docs"): Role.READER,
    ("GET", "/docs/oauth2-redirect"): Role.READER,
    ("GET", "/redoc"): Role.READER,
    ("GET", "/api/v1/tasks"): Role.READER,
    ("GET", "/api/v1/tasks/{task_id}"): Role.READER,
    ("GET", "/api/v1/tasks/{task_id}/events"): Role.READER,
    ("GET", "/api/v1/tasks/{task_id}/watch"): Role.READER,
    ("GET", "/api/v1/tasks/watch"): Role.READER,
    ("GET", "/api/v1/workflows"): Role.READER,
    ("GET", "/api/v1/workflows/{workflow_id}"): Role.READER,
    ("GET", "/api/v1/schedules"): Role.READER,
    ("GET", "/api/v1/schedules/{schedule_id}"): Role.READER,
    ("GET", "/api/v1/stats"): Role.READER,
    ("GET", "/api/v1/workers"): Role.READER,
    ("GET", "/api/v1/limits"): Role.READER,
    ("GET", "/api/v1/pauses"): Role.READER,
    ("POST", "/api/v1/handlers/{handler}:{action}"): Role.OPERATOR,
    ("POST", "/api/v1/workflows/{workflow_id}:{action}"): Role.OPERATOR,
    ("GET", "/api/v1/limits/handlers"): Role.READER,
    ("PUT", "/api/v1/limits/handlers/{handler}"): Role.OPERATOR,
    ("DELETE", "/api/v1/limits/handlers/{handler}"): Role.OPERATOR,
    ("POST", "/api/v1/tasks"): Role.SUBMITTER,
    ("POST", "/api/v1/tasks:batch"): Role.SUBMITTER,
    ("POST", "/api/v1/workflows"): Role.SUBMITTER,
    ("POST", "/api/v1/schedules"): Role.SUBMITTER,
    ("PATCH", "/api/v1/tasks/{task_id}"): Role.OPERATOR,
    ("DELETE", "/api/v1/tasks/{task_id}"): Role.OPERATOR,
    ("POST", "/api/v1/tasks/{task_id}/retry"): Role.OPERATOR,
    ("DELETE", "/api/v1/schedules/{schedule_id}"): Role.OPERATOR,
    ("POST", "/api/v1/schedules/{schedule_id}:{action}"): Role.OPERATOR,
    ("POST", "/api/v1/schedules/{schedule_id}:backfill"): Role.OPERATOR,
    ("GET", "/api/v1/triggers"): Role.READER,
    ("GET", "/api/v1/triggers/{name}"): Role.READER,
    ("POST", "/api/v1/triggers"): Role.SUBMITTER,
    ("POST", "/api/v1/triggers/{name}:{action}"): Role.OPERATOR,
    ("DELETE", "/api/v1/triggers/{name}"): Role.OPERATOR,
    ("GET", "/api/v1/cluster"): Role.ADMIN,
    # The dashboard: its pages and static files are shells without data (a browser cannot send a header when it
    # navigates); the data comes from the API above with the key the page holds, and from these readers.
    ("GET", "/ui"): OPEN,
    ("GET", "/ui/"): OPEN,
    ("GET", "/ui/tasks"): OPEN,
    ("GET", "/ui/tasks/{task_id}"): OPEN,
    ("GET", "/ui/workflows"): OPEN,
    ("GET", "/ui/workflows/{workflow_id}"): OPEN,
    ("GET", "/ui/dead-letters"): OPEN,
    ("GET", "/ui/schedules"): OPEN,
    ("GET", "/ui/schedules/{schedule_id}"): OPEN,
    ("GET", "/ui/workers"): OPEN,
    ("GET", "/ui/limits"): OPEN,
    ("GET", "/ui/triggers"): OPEN,
    ("GET", "/ui/static/{name}"): OPEN,
    ("GET", "/ui/api/throughput"): Role.READER,
    ("GET", "/ui/api/latency"): Role.READER,
    ("GET", "/ui/api/lag"): Role.READER,
}


def required(method: str, path: str) -> Role | str | None:
    """What ``ROUTE_ROLES`` asks of ``method path`` (a route template); None: not declared (refused)."""
    method = "GET" if method == "HEAD" else method
    return ROUTE_ROLES.get((method, path), ROUTE_ROLES.get(("*", path)))


@dataclass(frozen=True, slots=True)
class Principal:
    """Who sent a request: ``id`` is the API key id, the JWT subject or ``"anonymous"``."""

    id: str
    role: Role | None
    kind: str  # "api-key", "jwt" or "anonymous"
    name: str = ""
    handlers: tuple[str, ...] = ()  # fnmatch patterns of handlers it may submit to; empty: any

    def may_use(self, handler: str) -> bool:
        return not self.handlers or any(fnmatch.fnmatchcase(handler, p) for p in self.handlers)


#: The caller when no authentication is configured (loopback only): may do everything.
ANONYMOUS = Principal("anonymous", Role.ADMIN, "anonymous")
#: The caller of an open route when authentication is on.
NOBODY = Principal("anonymous", None, "anonymous")


class AuthError(Exception):
    status = 401

    def __init__(self, detail: str, error: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.error = error


class Unauthenticated(AuthError):
    """No credential, or one that is malformed, unknown, revoked, expired or wrongly signed (401)."""


class Forbidden(AuthError):
    """A known principal whose role (or handler patterns) does not allow the request (403)."""

    status = 403


class AuthUnavailable(AuthError):
    """Credentials cannot be checked right now: key store stale, JWKS unreachable (503, retry)."""

    status = 503


class InsecureConfig(ValueError):
    """Settings the API refuses to start with: no authentication beyond loopback, or a JWT setup that checks
    too little or cannot be read."""


def jwt_enabled(settings: Settings) -> bool:
    return bool(settings.auth_jwt_public_key or settings.auth_jwt_public_key_file or settings.auth_jwt_jwks_url)


def auth_enabled(settings: Settings) -> bool:
    return settings.auth_api_keys or jwt_enabled(settings)


def check_exposure(settings: Settings) -> None:
    """Refuse (``InsecureConfig``) to serve without authentication beyond loopback, unless explicitly allowed."""
    if not auth_enabled(settings) and not loopback(settings.api_host) and not settings.auth_allow_unauthenticated:
        raise InsecureConfig(
            f"refusing to serve the API on {settings.api_host} without authentication: turn on API keys "
            "(TASKSTREAM_AUTH_API_KEYS=true) or JWT (TASKSTREAM_AUTH_JWT_JWKS_URL or _PUBLIC_KEY), listen on "
            "127.0.0.1, or set TASKSTREAM_AUTH_ALLOW_UNAUTHENTICATED=true if something in front authenticates")


def authorize(principal: Principal, role: Role) -> None:
    """Raise ``Forbidden`` unless ``principal`` has ``role`` or a higher one."""
    if principal.role is None or principal.role < role:
        raise Forbidden(f"this needs the role {role}; {principal.kind} {principal.id!r} has "
                        f"{principal.role or 'no role'}", "insufficient_scope")


def authorize_handlers(principal: Principal, handlers: Iterable[str]) -> None:
    """Raise ``Forbidden`` if ``principal`` is limited to handler patterns that one of ``handlers`` misses."""
    for h in handlers:
        if not principal.may_use(h):
            raise Forbidden(f"{principal.kind} {principal.id!r} may not use handler {h!r} (it may use "
                            f"{', '.join(principal.handlers)})", "insufficient_scope")


class _Jwt:
    """Verifies bearer JWTs: signature (public key or JWKS by ``kid``), ``exp``, ``iss``, ``aud``, ``sub``."""

    def __init__(self, settings: Settings) -> None:
        if not settings.auth_jwt_issuer or not settings.auth_jwt_audience:
            raise InsecureConfig("JWT authentication needs TASKSTREAM_AUTH_JWT_ISSUER and TASKSTREAM_AUTH_JWT_AUDIENCE")
        weak = [a for a in settings.auth_jwt_algorithms if not a.startswith(("RS", "ES", "PS", "EdDSA"))]
        if weak or not settings.auth_jwt_algorithms:
            raise InsecureConfig(f"auth_jwt_algorithms takes public-key algorithms only (RS*, ES*, PS*, EdDSA), "
                                 f"not {weak or 'none'}")
        self.settings = settings
        self.algorithms = list(settings.auth_jwt_algorithms)
        self.key: Any = None
        pem = settings.auth_jwt_public_key
        if settings.auth_jwt_public_key_file is not None:
            try:
                pem = settings.auth_jwt_public_key_file.read_text()
            except OSError as exc:
                raise InsecureConfig(f"auth_jwt_public_key_file cannot be read: {exc}") from None
        if pem:
            from cryptography.hazmat.primitives.serialization import load_pem_public_key

            try:
                self.key = load_pem_public_key(pem.encode())
            except ValueError as exc:
                raise InsecureConfig(f"auth_jwt_public_key is not a PEM public key: {exc}") from None
        self.jwks = jwt.PyJWKClient(settings.auth_jwt_jwks_url, cache_jwk_set=True, lifespan=300, timeout=5) \
            if settings.auth_jwt_jwks_url else None
        #: A JWKS fetch may block on the network: call ``verify`` off the event loop then.
        self.blocking = self.jwks is not None

    def verify(self, token: str) -> Principal:
        s = self.settings
        try:
            key = self.key
            if self.jwks is not None and (key is None or jwt.get_unverified_header(token).get("kid")):
                key = self.jwks.get_signing_key_from_jwt(token).key
            claims = jwt.decode(
                token, key, algorithms=self.algorithms, audience=s.auth_jwt_audience, issuer=s.auth_jwt_issuer,
                leeway=s.auth_jwt_leeway_s, options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.PyJWKClientConnectionError as exc:
            raise AuthUnavailable(f"the JWKS of the identity provider cannot be fetched: {exc}") from None
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the bearer token has expired", "invalid_token") from None
        except (jwt.PyJWTError, jwt.PyJWKClientError, ValueError) as exc:
            raise Unauthenticated(f"the bearer token is not valid: {exc}", "invalid_token") from None
        value: Any = claims
        for part in s.auth_jwt_roles_claim.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        names = value.replace(",", " ").split() if isinstance(value, str) else value if isinstance(value, list) else []
        roles = [r for r in (Role.parse(n) for n in names) if r is not None]
        return Principal(str(claims["sub"]), max(roles) if roles else None, "jwt")


class Authenticator:
    """Turns request credentials into a ``Principal``; one per API process (``ApiContext.authenticator``).

    ``start()`` starts the key store's thread (when API keys are on) and
    ``stop()`` ends it. Usable outside FastAPI (gRPC): ``authenticate`` takes
    the header values, ``authorize`` the principal.
    """

    def __init__(self, settings: Settings, keys: KeyStore | None = None) -> None:
        self.settings = settings
        self.enabled = auth_enabled(settings)
        self.jwt = _Jwt(settings) if jwt_enabled(settings) else None
        self.keys = (keys or KeyStore(settings)) if settings.auth_api_keys else None
        self.blocking = self.jwt is not None and self.jwt.blocking

    def start(self) -> Authenticator:
        if self.keys is not None:
            self.keys.start()  # once: the store's thread starts at its first call
        return self

    def stop(self) -> None:
        if self.keys is not None:
            self.keys.stop()

    def authenticate(self, authorization: str | None, api_key: str | None = None) -> Principal:
        """The principal of an ``Authorization`` header value and/or an ``X-API-Key`` value.

        ``Authorization: Bearer <token>`` takes a JWT or an API key
        (``tsk_...``); ``X-API-Key`` an API key. Raises ``Unauthenticated``,
        ``AuthUnavailable``.
        """
        if not self.enabled:
            return ANONYMOUS
        token = None
        if authorization:
            scheme, _, token = authorization.strip().partition(" ")
            token = token.strip()
            if scheme.lower() != "bearer" or not token:
                raise Unauthenticated("Authorization must be 'Bearer <token or API key>'", "invalid_request")
        if api_key and token and api_key.strip() != token:
            raise Unauthenticated("X-API-Key and Authorization name different credentials", "invalid_request")
        credential = (api_key or "").strip() or token
        if not credential:
            raise Unauthenticated("this needs credentials: 'Authorization: Bearer <token>' or 'X-API-Key: <key>'")
        if credential.startswith(KEY_PREFIX):
            return self._key(credential)
        if self.jwt is None:
            raise Unauthenticated("not an API key (JWT bearer tokens are not accepted here)", "invalid_token")
        return self.jwt.verify(credential)

    def _key(self, key: str) -> Principal:
        if self.keys is None:
            raise Unauthenticated("API keys are not accepted here", "invalid_token")
        try:
            record = self.keys.lookup(key)
        except KeysUnavailable as exc:
            raise AuthUnavailable(str(exc)) from None
        if record is None:
            raise Unauthenticated("unknown or revoked API key", "invalid_token")
        return Principal(record.key_id, Role.parse(record.role), "api-key", record.name, tuple(record.handlers))


# ------------------------------------------------------------------ HTTP


def _challenge(error: str | None, detail: str) -> str:
    out = 'Bearer realm="taskstream"'
    if error:
        out += f', error="{error}", error_description="{detail[:200].replace(chr(34), chr(39))}"'
    return out


def _refusal(exc: AuthError):
    if isinstance(exc, AuthUnavailable):
        return problem(503, "Authentication unavailable", exc.detail, kind="auth-unavailable",
                       headers={"Retry-After": "1"})
    title = "Unauthorized" if exc.status == 401 else "Forbidden"
    return problem(exc.status, title, exc.detail, kind=title.lower(),
                   headers={"WWW-Authenticate": _challenge(exc.error, exc.detail)})


class RateLimited(Exception):
    def __init__(self, decision: Decision, cost: int) -> None:
        super().__init__(f"rate limit: {decision.limit} burst")
        self.decision = decision
        self.cost = cost


def _limits(settings: Settings) -> dict[Role | None, tuple[float, int] | None]:
    return {Role.READER: settings.rate_limit_reader, Role.SUBMITTER: settings.rate_limit_submitter,
            Role.OPERATOR: settings.rate_limit_operator, Role.ADMIN: settings.rate_limit_admin}


class RateLimit:
    """The buckets of one API process and the limit that applies to a principal."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.buckets = TokenBuckets()
        self.by_role = _limits(settings)

    def take(self, principal: Principal, client: str, cost: int) -> Decision | None:
        """Charge ``cost``; None when no limit applies. Raises ``RateLimited`` when the bucket is short."""
        if principal.kind == "anonymous":
            limit, key = self.settings.rate_limit_anonymous, f"addr:{client}"
        else:
            limit, key = self.by_role.get(principal.role), f"{principal.kind}:{principal.id}"
        if limit is None:
            return None
        decision = self.buckets.take(key, float(limit[0]), int(limit[1]), cost)
        if not decision.allowed:
            raise RateLimited(decision, cost)
        return decision


def admit(request: Request, rate: RateLimit, handlers: Iterable[str], tasks: int = 1) -> None:
    """Let the caller submit ``tasks`` tasks to ``handlers``, or raise: call it before writing anything.

    ``Forbidden`` (403) when the caller is limited to handler patterns one of
    ``handlers`` misses; ``RateLimited`` (429) when its bucket in ``rate``
    lacks a token for each task beyond the first (the middleware charged the
    request one).
    """
    authorize_handlers(principal(request), handlers)
    try:
        charge(request, rate, tasks - 1)
    except RateLimited as exc:
        raise RateLimited(exc.decision, tasks) from None  # tell the cost of the whole request


def charge(request: Request, rate: RateLimit, cost: int) -> None:
    """Charge ``cost`` more tokens to the caller's bucket (``RateLimited``, 429, when it is short)."""
    principal = getattr(request.state, "principal", None)
    if principal is None or cost <= 0:
        return
    decision = rate.take(principal, _client(request.scope), cost)
    if decision is not None:
        request.state.rate_decision = decision


def principal(request: Request) -> Principal:
    """FastAPI dependency: the caller of this request."""
    return getattr(request.state, "principal", None) or ANONYMOUS


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return client[0] if client else "unknown"


def _rate_limited(decision: Decision, cost: int):
    return problem(429, "Too many requests",
                   f"rate limit exceeded: {decision.limit} requests (or batched tasks) in a burst; this request "
                   f"costs {cost}; retry in {decision.retry_after_s} s",
                   kind="rate-limited", headers=decision.headers())


async def _auth_error_handler(_: Request, exc: AuthError):
    return _refusal(exc)


async def _rate_limited_handler(_: Request, exc: RateLimited):
    return _rate_limited(exc.decision, exc.cost)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One route as the middleware matches it: its path template, methods (None: a mount, any) and regex."""

    path: str
    methods: frozenset[str] | None
    regex: re.Pattern


def endpoints(app: FastAPI) -> list[Endpoint]:
    """Every route of ``app``, included routers flattened, in matching order (what ``ROUTE_ROLES`` must cover)."""
    try:
        from fastapi.routing import iter_route_contexts  # FastAPI >= 0.165 keeps included routers nested
    except ImportError:  # pragma: no cover - older FastAPI: app.routes is flat
        contexts: Iterable[Any] = app.routes
    else:
        contexts = iter_route_contexts(app.routes)
    out = []
    for r in contexts:
        path, regex = getattr(r, "path", None), getattr(r, "path_regex", None)
        if path is None or regex is None:
            continue
        methods = getattr(r, "methods", None)
        out.append(Endpoint(path, frozenset(methods) if methods else None, regex))
    return out


class AuthMiddleware:
    """Applies ``ROUTE_ROLES``, authentication and rate limits to every HTTP request (see the module doc)."""

    def __init__(self, app: ASGIApp, fastapi: FastAPI, settings: Settings, authenticator: Authenticator,
                 rate_limit: RateLimit) -> None:
        self.app = app
        self.fastapi = fastapi
        self.settings = settings
        self.authenticator = authenticator
        self.rate_limit = rate_limit
        self._table: tuple[int, list[Endpoint]] | None = None

    def _route(self, scope: Scope) -> tuple[str, Endpoint | None]:
        routes = self.fastapi.router.routes
        table = self._table
        fresh = table is None or table[0] != len(routes)
        if table is None or fresh:
            table = self._table = (len(routes), endpoints(self.fastapi))
        found = self._match(scope, table[1])
        if found[0] != "full" and not fresh:  # a route added inside an included router since: look again
            table = self._table = (len(routes), endpoints(self.fastapi))
            found = self._match(scope, table[1])
        return found

    def _match(self, scope: Scope, table: list[Endpoint]) -> tuple[str, Endpoint | None]:
        path = scope.get("path", "")
        method = scope.get("method", "GET")
        partial = None
        for e in table:
            if e.regex.match(path):
                if e.methods is None or method in e.methods:
                    return "full", e
                partial = partial or e
        return ("partial", partial) if partial is not None else ("none", None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        authenticator = self.authenticator
        method = scope.get("method", "GET")
        found, route = self._route(scope)
        if found == "full" and route is not None:  # "full" always names its route
            need = required(method, route.path)
            if need is None:
                log.error("refused %s %s: the route has no entry in api/auth.py ROUTE_ROLES", method, route.path)
                return await self._deny(scope, receive, send, problem(
                    403, "Forbidden", f"{method} {route.path} has no declared role (api/auth.py ROUTE_ROLES): "
                    "refused", kind="forbidden"))
        else:
            need = Role.READER  # no such route or method: a reader learns that (404/405), nobody else
        scope.setdefault("state", {})["principal"] = NOBODY if authenticator.enabled else ANONYMOUS
        if need == OPEN:
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        if need == METRICS:
            refusal = self._metrics(scope, headers)
            if refusal is not None:
                return await self._deny(scope, receive, send, refusal)
            return await self.app(scope, receive, send)
        try:
            if authenticator.blocking:
                who = await asyncio.to_thread(authenticator.authenticate, headers.get("authorization"),
                                              headers.get("x-api-key"))
            else:
                who = authenticator.authenticate(headers.get("authorization"), headers.get("x-api-key"))
            assert isinstance(need, Role)  # OPEN and METRICS were served above
            authorize(who, need)
        except AuthError as exc:
            return await self._deny(scope, receive, send, _refusal(exc))
        scope["state"]["principal"] = who
        try:
            decision = self.rate_limit.take(who, _client(scope), 1)
        except RateLimited as exc:
            return await self._deny(scope, receive, send, _rate_limited(exc.decision, 1))
        scope["state"]["rate_decision"] = decision
        if decision is None:  # no limit applies to this principal: nothing to add to the answer
            return await self.app(scope, receive, send)

        async def send_with_limits(message) -> None:
            if message["type"] == "http.response.start":
                latest = scope["state"].get("rate_decision")
                if latest is not None:
                    names = {k.lower() for k, _ in message.get("headers", [])}
                    message = {**message, "headers": [*message.get("headers", []), *(
                        (k.lower().encode(), v.encode()) for k, v in latest.headers().items()
                        if k.lower() not in names)]}
            await send(message)

        await self.app(scope, receive, send_with_limits)

    def _metrics(self, scope: Scope, headers: Headers):
        token = self.settings.metrics_token
        if token:
            scheme, _, given = (headers.get("authorization") or "").partition(" ")
            if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
                return None
            detail = "/metrics needs 'Authorization: Bearer <metrics token>'"
            return problem(401, "Unauthorized", detail, kind="unauthorized",
                           headers={"WWW-Authenticate": _challenge("invalid_token" if given else None, detail)
                                    .replace('realm="taskstream"', 'realm="metrics"')})
        if loopback(self.settings.api_host) or not self.authenticator.enabled:
            return None  # only this machine can reach it, or the operator opened the whole API on purpose
        return problem(403, "Forbidden", "/metrics of an API listening beyond loopback needs a token: set "
                       "TASKSTREAM_METRICS_TOKEN and scrape with 'Authorization: Bearer <token>'", kind="forbidden")

    async def _deny(self, scope: Scope, receive: Receive, send: Send, response) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        await response(scope, receive, send)


_AUTH_WHY = {
    401: "No credentials, or a bad, expired, wrongly signed or revoked one (``WWW-Authenticate``)",
    403: "The caller's role (or handler patterns) does not allow this",
    429: "Rate limit exceeded (``Retry-After``, ``RateLimit-*``)",
}


def document(openapi: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Put the security schemes and each guarded operation's 401/403/429 into ``openapi`` (when auth is on)."""
    if not auth_enabled(settings):
        return openapi
    schemes = openapi.setdefault("components", {}).setdefault("securitySchemes", {})
    schemes["apiKey"] = {"type": "apiKey", "in": "header", "name": "X-API-Key",
                         "description": "taskstream keys create; also accepted as a bearer token"}
    schemes["bearer"] = {"type": "http", "scheme": "bearer", "bearerFormat": "JWT or API key"}
    for path, operations in openapi.get("paths", {}).items():
        for method, op in operations.items():
            need = required(method.upper(), path)
            if need in (OPEN, METRICS, None):
                continue
            op["security"] = [{"apiKey": []}, {"bearer": []}]
            op["description"] = (op.get("description") or "") + f"\n\nNeeds the role `{need}` or higher."
            for status, why in _AUTH_WHY.items():
                op.setdefault("responses", {})[str(status)] = {
                    "description": why, "content": {"application/problem+json": {
                        "schema": {"$ref": "#/components/schemas/Problem"}}}}
    return openapi


def install(app: FastAPI, settings: Settings, authenticator: Authenticator, rate_limit: RateLimit) -> None:
    """Put authentication (by ``authenticator``), authorization and rate limits (``rate_limit``) in front of every
    route of ``app``.

    Raises ``InsecureConfig`` for settings that would expose the API without
    authentication or check JWTs too weakly. The app's lifespan must call
    ``authenticator.start()`` and ``.stop()``.
    """
    check_exposure(settings)
    # Starlette calls a handler only with the class it is registered for; its type cannot say so.
    app.add_exception_handler(RateLimited, _rate_limited_handler)  # type: ignore[arg-type]
    app.add_exception_handler(AuthError, _auth_error_handler)  # type: ignore[arg-type]
    app.add_middleware(AuthMiddleware, fastapi=app, settings=settings, authenticator=authenticator,
                       rate_limit=rate_limit)
