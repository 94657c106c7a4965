"""Authentication, authorization and rate limits of the running API, on the real broker (docs/security.md).

The auth matrix is generated from the app's own route table
(``auth.endpoints``: every route, included routers flattened), so a route
added later is checked too, and one without a declared role fails it.
API keys are made with the CLI's functions (``cli.keys``) and reach the
API through ``<p>.admin``; JWTs are signed with keys generated here and
checked against a public-key setting or a JWKS served from 127.0.0.1.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import uuid
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import Depends
from fastapi.testclient import TestClient

from taskstream.api import auth, create_app
from taskstream.api.keys import ROLES, KeysUnavailable
from taskstream.cli.keys import create_key, list_keys, revoke_key
from taskstream.schemas import Settings
from tests.conftest import wait_until

pytestmark = pytest.mark.integration

ISS, AUD = "https://idp.test", "taskstream"
PROBLEM = "application/problem+json"
NO_LIMITS = dict(rate_limit_reader=None, rate_limit_submitter=None, rate_limit_operator=None, rate_limit_admin=None)


@pytest.fixture(scope="module")
def signer():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(private) -> str:
    return private.public_key().public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def token(private, role: str, *, alg: str = "RS256", minutes: float = 5, kid: str | None = None,
          sub: str = "alice") -> str:
    now = datetime.now(UTC)
    claims = {"sub": sub, "iss": ISS, "aud": AUD, "iat": now - timedelta(minutes=10),
              "exp": now + timedelta(minutes=minutes), "roles": [role]}
    return jwt.encode(claims, private, algorithm=alg, headers={"kid": kid} if kid else None)


def secured(settings: Settings, signer, **more) -> Settings:
    return settings.model_copy(update={"auth_api_keys": True, "auth_jwt_public_key": pem(signer),
                                       "auth_jwt_issuer": ISS, "auth_jwt_audience": AUD, **NO_LIMITS, **more})


def key_ready(app, key: str, live: bool = True):
    """Wait until the app's key store has read ``key`` (live) or its revocation."""
    store = app.state.context.authenticator.keys

    def seen():
        try:
            return (store.lookup(key) is not None) == live
        except KeysUnavailable:
            return False
    wait_until(seen, timeout=15, message=f"the API's key store to see the key {'live' if live else 'revoked'}")


def concrete(path: str) -> str:
    """A route template with every parameter filled with an id that exists nowhere."""
    return re.sub(r"\{[^}]+\}", lambda _: uuid.uuid4().hex, path)


def call(client: TestClient, method: str, path: str, headers: dict):
    body = {} if method in ("POST", "PATCH", "PUT") else None
    # the SSE watch of all tasks never ends by itself: a bad cursor makes an admitted caller's answer a 422
    params = {"cursor": "not-a-cursor"} if path.endswith("/tasks/watch") else None
    return client.request(method, path, headers=headers, json=body, params=params)


def test_auth_matrix_over_every_route(settings: Settings, signer) -> None:
    s = secured(settings, signer)
    keys = {role: create_key(s, role, f"matrix-{role}", [])[0] for role in ROLES}
    revoked, record = create_key(s, "admin", "matrix-revoked", [])
    revoke_key(s, record.key_id)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    principals: dict[str, tuple[dict, auth.Role | None]] = {"anonymous": ({}, None)}
    for role in auth.Role:
        principals[f"key-{role}"] = ({"X-API-Key": keys[str(role)]}, role)
        principals[f"jwt-{role}"] = ({"Authorization": f"Bearer {token(signer, str(role))}"}, role)
    principals["key-in-bearer"] = ({"Authorization": f"Bearer {keys['reader']}"}, auth.Role.READER)
    bad = {
        "revoked-key": {"X-API-Key": revoked},
        "expired-jwt": {"Authorization": f"Bearer {token(signer, 'admin', minutes=-5)}"},
        "wrongly-signed-jwt": {"Authorization": f"Bearer {token(other, 'admin')}"},
        "garbage-key": {"X-API-Key": "tsk_" + "0" * 16 + "_" + "A" * 43},
    }
    app = create_app(s)
    with TestClient(app) as c:
        key_ready(app, keys["admin"])
        key_ready(app, revoked, live=False)
        wait_until(lambda: c.get("/readyz").status_code == 200, timeout=15, message="the API to be ready")
        assert c.get("/readyz").json()["checks"]["api_keys"] == "ok"
        endpoints = auth.endpoints(app)
        assert len(endpoints) >= 20
        checked = set()
        for e in endpoints:
            for method in sorted(e.methods or {"GET"}):
                if method == "HEAD":
                    continue
                path = concrete(e.path if e.methods else e.path + "/index.html")
                need = auth.required(method, e.path)
                assert need is not None, f"{method} {e.path} has no entry in api/auth.py ROUTE_ROLES"
                baseline = call(c, method, path, {"X-API-Key": keys["admin"]}).status_code
                assert baseline not in (401, 403, 429) and baseline < 500, (method, e.path, baseline)
                for name, (headers, role) in principals.items():
                    r = call(c, method, path, headers)
                    where = f"{name}: {method} {e.path} -> {r.status_code} {r.text[:200]}"
                    if need in (auth.OPEN, auth.METRICS):
                        assert r.status_code not in (401, 403), where
                    elif role is None:
                        assert r.status_code == 401 and r.headers["content-type"] == PROBLEM, where
                        assert r.headers["www-authenticate"].startswith("Bearer realm="), where
                    elif role < need:
                        assert r.status_code == 403 and r.headers["content-type"] == PROBLEM, where
                        assert 'error="insufficient_scope"' in r.headers["www-authenticate"], where
                    elif e.path != "/readyz":
                        assert r.status_code == baseline, where
                for name, headers in bad.items():
                    r = call(c, method, path, headers)
                    where = f"{name}: {method} {e.path} -> {r.status_code} {r.text[:200]}"
                    if need in (auth.OPEN, auth.METRICS):
                        assert r.status_code not in (401, 403), where
                    else:
                        assert r.status_code == 401 and 'error="invalid_token"' in r.headers["www-authenticate"], where
                checked.add((method, e.path))
        # the matrix covered the routes the issue names, with real successes among them
        assert {("GET", "/api/v1/tasks"), ("POST", "/api/v1/tasks:batch"), ("GET", "/api/v1/cluster"),
                ("DELETE", "/api/v1/schedules/{schedule_id}"), ("GET", "/openapi.json"), ("GET", "/healthz")} <= checked
        assert c.get("/api/v1/tasks", headers={"X-API-Key": keys["reader"]}).status_code == 200
        assert c.get("/docs", headers={"X-API-Key": keys["reader"]}).status_code == 200
        doc = c.get("/openapi.json", headers={"X-API-Key": keys["reader"]}).json()
        assert set(doc["components"]["securitySchemes"]) == {"apiKey", "bearer"}
        assert {"401", "403", "429"} <= set(doc["paths"]["/api/v1/cluster"]["get"]["responses"])
        assert "security" not in doc["paths"]["/healthz"]["get"]
        assert c.get("/api/v1/nowhere").status_code == 401  # an unknown path tells nothing to strangers
        assert c.get("/api/v1/nowhere", headers={"X-API-Key": keys["reader"]}).status_code == 404


def test_route_code_sees_the_principal(settings: Settings, signer, monkeypatch) -> None:
    s = secured(settings, signer)
    key, record = create_key(s, "submitter", "whoami", ["email.*"])
    app = create_app(s)
    monkeypatch.setitem(auth.ROUTE_ROLES, ("GET", "/whoami"), auth.Role.READER)

    @app.get("/whoami")
    async def whoami(p: auth.Principal = Depends(auth.principal)) -> dict:
        return {"id": p.id, "role": str(p.role), "kind": p.kind}

    with TestClient(app) as c:
        key_ready(app, key)
        assert c.get("/whoami", headers={"X-API-Key": key}).json() == {
            "id": record.key_id, "role": "submitter", "kind": "api-key"}
        assert c.get("/whoami", headers={"Authorization": f"Bearer {token(signer, 'reader', sub='bob')}"}).json() \
            == {"id": "bob", "role": "reader", "kind": "jwt"}
        # a key limited to handler patterns submits to those only, and nothing else is written
        ok = c.post("/api/v1/tasks", headers={"X-API-Key": key}, json={"handler": "email.send"})
        assert ok.status_code == 202
        refused = c.post("/api/v1/tasks:batch", headers={"X-API-Key": key},
                         json={"tasks": [{"handler": "email.send"}, {"handler": "sms.send"}]})
        assert refused.status_code == 403 and "sms.send" in refused.json()["detail"]


def test_every_event_the_api_writes_names_who_asked(settings: Settings, signer) -> None:
    """The log is the audit trail: ``actor`` is the key id or token subject; null for an anonymous caller."""
    s = secured(settings, signer)
    key, record = create_key(s, "submitter", "audit", [])
    app = create_app(s)
    with TestClient(app) as c:
        key_ready(app, key)
        task = c.post(
            "/api/v1/tasks", headers={"X-API-Key": key}, json={"handler": "h", "run_at": "2999-01-01T00:00:00Z"}
        )
        assert task.status_code == 202, task.text
        tid = task.json()["id"]
        carol = {"Authorization": f"Bearer {token(signer, 'operator', sub='carol')}"}
        assert c.delete(f"/api/v1/tasks/{tid}", headers=carol).status_code == 202

        def events():
            r = c.get(f"/api/v1/tasks/{tid}/events", headers=carol)
            return r.status_code == 200 and len(r.json()["events"]) == 2 and r.json()["events"]
        got = wait_until(events, timeout=15, message="both events in the log")
    assert [(e["type"], e["actor"]) for e in got] == [("TaskCreated", record.key_id), ("TaskCancelled", "carol")]
    # without authentication nobody is named
    with TestClient(create_app(settings)) as c:
        tid = c.post("/api/v1/tasks", json={"handler": "h", "run_at": "2999-01-01T00:00:00Z"}).json()["id"]
        got = wait_until(lambda: c.get(f"/api/v1/tasks/{tid}/events").json().get("events"), timeout=15,
                         message="the event in the log")
    assert got[0]["actor"] is None


def test_auth_off_the_principal_is_anonymous(settings: Settings, monkeypatch) -> None:
    app = create_app(settings)
    monkeypatch.setitem(auth.ROUTE_ROLES, ("GET", "/whoami"), auth.Role.READER)

    @app.get("/whoami")
    async def whoami(request_principal: auth.Principal = Depends(auth.principal)) -> dict:
        return {"id": request_principal.id}

    with TestClient(app) as c:
        assert c.get("/whoami").json() == {"id": "anonymous"}
        assert c.get("/api/v1/tasks").status_code == 200
        assert "ratelimit-limit" not in c.get("/api/v1/tasks").headers  # no anonymous limit by default


# ------------------------------------------------------------------ rate limits


def test_a_burst_over_the_limit_gets_429_with_retry_after(settings: Settings, signer) -> None:
    s = secured(settings, signer, rate_limit_reader=(0.001, 5), rate_limit_submitter=(0.001, 10))
    reader, _ = create_key(s, "reader", "burst", [])
    calm, _ = create_key(s, "reader", "calm", [])
    submitter, _ = create_key(s, "submitter", "batches", [])
    app = create_app(s)
    with TestClient(app) as c:
        key_ready(app, calm)
        answers = [c.get("/api/v1/tasks", headers={"X-API-Key": reader}) for _ in range(7)]
        assert [r.status_code for r in answers] == [200] * 5 + [429] * 2
        assert [r.headers["RateLimit-Remaining"] for r in answers[:5]] == ["4", "3", "2", "1", "0"]
        refused = answers[-1]
        assert refused.headers["content-type"] == PROBLEM and int(refused.headers["Retry-After"]) >= 1
        assert refused.headers["RateLimit-Limit"] == "5" and refused.json()["status"] == 429
        # under the limit: another principal's burst up to its size is never refused
        assert [c.get("/api/v1/stats", headers={"X-API-Key": calm}).status_code for _ in range(5)] == [200] * 5
        # a batch counts its tasks: 8 of 10 tokens, then 8 more do not fit
        batch = {"tasks": [{"handler": "noop"} for _ in range(8)]}
        first = c.post("/api/v1/tasks:batch", headers={"X-API-Key": submitter}, json=batch)
        assert first.status_code == 202 and first.headers["RateLimit-Remaining"] == "2"
        second = c.post("/api/v1/tasks:batch", headers={"X-API-Key": submitter}, json=batch)
        assert second.status_code == 429 and "costs 8" in second.json()["detail"]


def test_anonymous_callers_are_limited_per_address_when_configured(settings: Settings) -> None:
    s = settings.model_copy(update={"rate_limit_anonymous": (0.001, 3)})
    with TestClient(create_app(s)) as c:
        codes = [c.get("/api/v1/stats").status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        assert c.get("/healthz").status_code == 200  # open routes are never limited


# ------------------------------------------------------------------ keys from the CLI's functions


def test_a_revoked_key_is_refused_by_a_running_api(settings: Settings, signer) -> None:
    s = secured(settings, signer)
    key, record = create_key(s, "operator", "ci", [])
    app = create_app(s)
    with TestClient(app) as c:
        wait_until(lambda: c.get("/api/v1/tasks", headers={"X-API-Key": key}).status_code == 200, timeout=15,
                   message="the new key to work")
        revoke_key(s, record.key_id)
        wait_until(lambda: c.get("/api/v1/tasks", headers={"X-API-Key": key}).status_code == 401,
                   timeout=s.auth_api_key_max_staleness_s + 5, message="the revoked key to be refused")
    listed = {k.key_id: k for k in list_keys(s)}
    assert listed[record.key_id].revoked_at is not None


def test_api_keys_503_until_the_key_store_has_read_the_topic(settings: Settings, signer) -> None:
    s = secured(settings, signer, prefix=settings.prefix + "-nokeys")  # its <p>.admin does not exist
    with TestClient(create_app(s)) as c:
        r = c.get("/api/v1/tasks", headers={"X-API-Key": "tsk_" + "0" * 16 + "_" + "A" * 43})
        assert r.status_code == 503 and r.headers["Retry-After"] == "1" and "cannot be checked" in r.json()["detail"]
        ready = c.get("/readyz").json()
        assert ready["checks"]["api_keys"] == "stale" and any("API keys" in x for x in ready["reasons"])
        # JWTs do not depend on the key store
        jwt_read = c.get(
            f"/api/v1/tasks/{uuid.uuid4().hex}", headers={"Authorization": f"Bearer {token(signer, 'reader')}"}
        )
        assert jwt_read.status_code == 404


# ------------------------------------------------------------------ JWKS, metrics, exposure, hosts


class _Jwks(BaseHTTPRequestHandler):
    body = b"{}"

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args) -> None:
        pass


def test_jwt_from_a_jwks_url_on_loopback(settings: Settings) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    handler = type("Jwks", (_Jwks,), {"body": json.dumps({"keys": [{**jwk, "kid": "k1", "use": "sig"}]}).encode()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()
    try:
        s = settings.model_copy(update={"auth_jwt_jwks_url": f"http://127.0.0.1:{server.server_port}/jwks.json",
                                        "auth_jwt_issuer": ISS, "auth_jwt_audience": AUD, **NO_LIMITS})
        with TestClient(create_app(s)) as c:
            good = token(key, "reader", alg="ES256", kid="k1")
            assert c.get("/api/v1/tasks", headers={"Authorization": f"Bearer {good}"}).status_code == 200
            unknown = token(key, "reader", alg="ES256", kid="k2")
            assert c.get("/api/v1/tasks", headers={"Authorization": f"Bearer {unknown}"}).status_code == 401
            forged = token(ec.generate_private_key(ec.SECP256R1()), "admin", alg="ES256", kid="k1")
            assert c.get("/api/v1/tasks", headers={"Authorization": f"Bearer {forged}"}).status_code == 401
            assert c.get("/api/v1/tasks", headers={"X-API-Key": "tsk_x"}).status_code == 401  # keys are off here
    finally:
        server.shutdown()


def test_metrics_needs_its_token_when_one_is_set(settings: Settings, signer) -> None:
    secret = secrets.token_hex(16)
    with TestClient(create_app(settings.model_copy(update={"metrics_token": secret}))) as c:
        r = c.get("/metrics")
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith('Bearer realm="metrics"')
        assert c.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/metrics", headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    with TestClient(create_app(settings)) as c:  # loopback API, no token: open
        assert c.get("/metrics").status_code == 200
    exposed = secured(settings, signer, api_host="0.0.0.0")
    with TestClient(create_app(exposed)) as c:  # beyond loopback with no token: refused, says how
        r = c.get("/metrics")
        assert r.status_code == 403 and "TASKSTREAM_METRICS_TOKEN" in r.json()["detail"]


def test_the_api_refuses_a_non_loopback_host_without_auth_and_starts_with_it(settings: Settings, signer) -> None:
    with pytest.raises(auth.InsecureConfig, match="refusing to serve the API on 0.0.0.0"):
        create_app(settings.model_copy(update={"api_host": "0.0.0.0"}))
    app = create_app(secured(settings, signer, api_host="0.0.0.0"))  # TestClient: nothing binds 0.0.0.0
    with TestClient(app) as c:
        assert c.get("/healthz").status_code == 200
        assert c.get("/api/v1/tasks").status_code == 401
        ok = c.get("/api/v1/tasks", headers={"Authorization": f"Bearer {token(signer, 'reader')}"})
        assert ok.status_code == 200


def test_a_dns_rebinding_host_is_refused_on_a_loopback_api(settings: Settings) -> None:
    s = settings.model_copy(update={"trusted_hosts": None})  # the default: loopback names
    with TestClient(create_app(s), base_url="http://127.0.0.1:8080") as c:
        assert c.get("/healthz").status_code == 200
        assert c.get("/healthz", headers={"Host": "localhost:8080"}).status_code == 200
        assert c.get("/healthz", headers={"Host": "[::1]:8080"}).status_code == 200
        r = c.get("/api/v1/tasks", headers={"Host": "evil.example:8080"})
        assert r.status_code == 400 and r.headers["content-type"] == PROBLEM
        assert r.json()["errors"][0]["field"] == "Host"
