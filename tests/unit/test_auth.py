"""Authentication, authorization and rate limits without a broker (docs/security.md).

Contracts: every route of the app has an entry in ``auth.ROUTE_ROLES``;
roles are ordered; JWTs are accepted only when signed by the configured key,
unexpired, for the configured issuer and audience, with roles from the
configured claim; API keys are hashed and parsed as documented and their
revocation is final; the token bucket refuses a burst over its size and never
refuses traffic at its rate; the API refuses to serve unauthenticated beyond
loopback; the Host check's defaults.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from taskstream.api import auth, create_app
from taskstream.api.hosts import allowed_hosts, loopback
from taskstream.api.keys import fold, hash_key, key_id_of, new_key
from taskstream.api.rate_limit import TokenBuckets
from taskstream.schemas import Settings

NOW = datetime(2026, 12, 5, 10, 0, tzinfo=UTC)
ISS, AUD = "https://idp.test", "taskstream"


def pem(private) -> str:
    return private.public_key().public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo).decode()


@pytest.fixture(scope="module")
def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def token(private, alg="RS256", **claims) -> str:
    now = datetime.now(UTC)
    body = {
        "sub": "alice",
        "iss": ISS,
        "aud": AUD,
        "iat": now,
        "exp": now + timedelta(minutes=5),
        "roles": ["operator"],
    }
    body.update(claims)
    return jwt.encode({k: v for k, v in body.items() if v is not None}, private, algorithm=alg)


def hs256(claims: dict, secret: bytes) -> str:
    """A JWT signed with HMAC-SHA256 by hand (PyJWT refuses a public key as an HMAC secret)."""
    import base64
    import hashlib
    import hmac
    import json

    b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()  # noqa: E731
    signing = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + "." + b64(json.dumps(claims).encode())
    return signing + "." + b64(hmac.new(secret, signing.encode(), hashlib.sha256).digest())


def jwt_auth(private, **settings) -> auth.Authenticator:
    return auth.Authenticator(Settings(auth_jwt_public_key=pem(private), auth_jwt_issuer=ISS, auth_jwt_audience=AUD,
                                       **settings))


# ------------------------------------------------------------------ route table


def test_every_route_of_the_app_has_a_declared_role() -> None:
    app = create_app(Settings())
    routes = auth.endpoints(app)
    assert {e.path for e in routes} >= {"/api/v1/tasks", "/healthz", "/docs", "/openapi.json"}
    missing = [(m, e.path) for e in routes for m in (e.methods or {"*"}) if auth.required(m, e.path) is None]
    assert missing == []


def test_an_undeclared_route_is_refused_even_with_auth_off() -> None:
    from fastapi.testclient import TestClient

    app = create_app(Settings())

    @app.get("/api/v1/undeclared")
    async def undeclared() -> dict:
        return {"reached": True}

    r = TestClient(app).get("/api/v1/undeclared")  # no lifespan (no broker): refused before the route runs
    assert r.status_code == 403 and "no declared role" in r.json()["detail"]


def test_a_route_added_to_an_included_router_later_is_refused_too() -> None:
    from fastapi import APIRouter
    from fastapi.testclient import TestClient

    app = create_app(Settings())
    router = APIRouter()
    app.include_router(router)
    c = TestClient(app)  # no lifespan: nothing here needs the broker
    assert c.get("/api/v1/late").status_code == 404  # the table is built now, without the route

    @router.get("/api/v1/late")
    async def late() -> dict:
        return {"reached": True}

    r = c.get("/api/v1/late")
    assert r.status_code == 403 and "no declared role" in r.json()["detail"]


def test_roles_are_ordered_and_authorize_checks_the_minimum() -> None:
    op = auth.Principal("k1", auth.Role.OPERATOR, "api-key")
    auth.authorize(op, auth.Role.READER)
    auth.authorize(op, auth.Role.OPERATOR)
    with pytest.raises(auth.Forbidden):
        auth.authorize(op, auth.Role.ADMIN)
    with pytest.raises(auth.Forbidden):
        auth.authorize(auth.Principal("x", None, "jwt"), auth.Role.READER)


def test_handler_patterns_limit_a_principal() -> None:
    p = auth.Principal("k1", auth.Role.SUBMITTER, "api-key", handlers=("email.*", "noop"))
    auth.authorize_handlers(p, ["email.send", "noop"])
    with pytest.raises(auth.Forbidden, match="sms.send"):
        auth.authorize_handlers(p, ["email.send", "sms.send"])
    auth.authorize_handlers(auth.Principal("k2", auth.Role.SUBMITTER, "api-key"), ["anything"])


# ------------------------------------------------------------------ JWT


def test_a_valid_rs256_token_gives_its_subject_and_highest_role(rsa_key) -> None:
    a = jwt_auth(rsa_key)
    p = a.authenticate(f"Bearer {token(rsa_key, roles=['reader', 'operator', 'unknown'])}")
    assert (p.id, p.role, p.kind) == ("alice", auth.Role.OPERATOR, "jwt")


def test_an_es256_token_with_roles_in_a_nested_space_separated_claim() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    a = jwt_auth(key, auth_jwt_roles_claim="realm_access.roles")
    t = token(key, alg="ES256", roles=None, realm_access={"roles": "reader admin"})
    assert a.authenticate(f"Bearer {t}").role is auth.Role.ADMIN


@pytest.mark.parametrize("why, claims", [
    ("expired", {"exp": datetime.now(UTC) - timedelta(minutes=5)}),
    ("issuer", {"iss": "https://other.test"}),
    ("audience", {"aud": "someone-else"}),
    ("no subject", {"sub": None}),
    ("no expiry", {"exp": None}),
])
def test_a_token_that_fails_a_check_is_401(rsa_key, why, claims) -> None:
    with pytest.raises(auth.Unauthenticated):
        jwt_auth(rsa_key).authenticate(f"Bearer {token(rsa_key, **claims)}")


def test_a_token_signed_by_another_key_or_with_hs256_is_401(rsa_key) -> None:
    a = jwt_auth(rsa_key)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(auth.Unauthenticated, match="not valid"):
        a.authenticate(f"Bearer {token(other)}")
    forged = hs256({"sub": "eve", "iss": ISS, "aud": AUD, "exp": int(datetime.now(UTC).timestamp()) + 300,
                    "roles": ["admin"]}, pem(rsa_key).encode())  # the classic key-confusion forgery
    with pytest.raises(auth.Unauthenticated):
        a.authenticate(f"Bearer {forged}")


def test_a_token_without_a_known_role_authenticates_but_is_forbidden(rsa_key) -> None:
    p = jwt_auth(rsa_key).authenticate(f"Bearer {token(rsa_key, roles=['guest'])}")
    assert p.role is None
    with pytest.raises(auth.Forbidden):
        auth.authorize(p, auth.Role.READER)


@pytest.mark.parametrize("authorization, api_key, match", [
    (None, None, "needs credentials"),
    ("Basic dXNlcjpwYXNz", None, "Bearer"),
    ("Bearer", None, "Bearer"),
    (None, "tsk_nope", "API keys are not accepted"),
])
def test_missing_or_malformed_credentials_are_401(rsa_key, authorization, api_key, match) -> None:
    with pytest.raises(auth.Unauthenticated, match=match):
        jwt_auth(rsa_key).authenticate(authorization, api_key)


def test_jwt_settings_that_check_too_little_refuse_to_start(rsa_key) -> None:
    with pytest.raises(auth.InsecureConfig, match="ISSUER"):
        auth.Authenticator(Settings(auth_jwt_public_key=pem(rsa_key), auth_jwt_audience=AUD))
    with pytest.raises(auth.InsecureConfig, match="public-key algorithms"):
        jwt_auth(rsa_key, auth_jwt_algorithms=["HS256"])
    with pytest.raises(auth.InsecureConfig, match="not a PEM public key"):
        auth.Authenticator(Settings(auth_jwt_public_key="nonsense", auth_jwt_issuer=ISS, auth_jwt_audience=AUD))
    with pytest.raises(auth.InsecureConfig, match="cannot be read"):
        auth.Authenticator(Settings(auth_jwt_public_key_file="/nonexistent/key.pem", auth_jwt_issuer=ISS,
                                    auth_jwt_audience=AUD))


def test_auth_off_everyone_is_the_anonymous_admin() -> None:
    p = auth.Authenticator(Settings()).authenticate(None)
    assert p is auth.ANONYMOUS and p.id == "anonymous" and p.role is auth.Role.ADMIN


# ------------------------------------------------------------------ API keys


def test_a_new_key_is_stored_only_as_its_hash() -> None:
    key, record = new_key("operator", "ci", "cli-test", NOW, ["email.*"])
    assert key.startswith("tsk_") and key_id_of(key) == record.key_id and len(record.key_id) == 16
    assert record.secret_hash == hash_key(key) and key not in repr(record)
    assert key_id_of(key[:-1]) is None and key_id_of("tsk_" + "g" * 16 + "_" + "a" * 43) is None
    with pytest.raises(ValueError, match="role"):
        new_key("root", "x", "cli-test", NOW)


def test_revocation_is_final_in_the_fold() -> None:
    from dataclasses import replace

    _, record = new_key("reader", "r", "cli-test", NOW)
    keys: dict = {}
    fold(keys, record)
    fold(keys, replace(record, revoked_at=NOW))
    fold(keys, record)  # an older record read again (a replay) does not bring it back
    assert keys[record.key_id].revoked_at == NOW


# ------------------------------------------------------------------ rate limits


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_a_burst_over_the_bucket_is_refused_with_retry_after() -> None:
    clock = Clock()
    buckets = TokenBuckets(clock=clock)
    decisions = [buckets.take("k", rate=2.0, burst=5) for _ in range(7)]
    assert [d.allowed for d in decisions] == [True] * 5 + [False] * 2
    refused = decisions[-1]
    assert refused.headers()["Retry-After"] == "1" and refused.remaining == 0
    assert decisions[0].headers() == {"RateLimit-Limit": "5", "RateLimit-Remaining": "4", "RateLimit-Reset": "1"}
    clock.t += 0.5  # one token back at 2/s
    assert buckets.take("k", rate=2.0, burst=5).allowed


def test_traffic_at_the_rate_is_never_refused() -> None:
    clock = Clock()
    buckets = TokenBuckets(clock=clock)
    for _ in range(1000):
        assert buckets.take("k", rate=10.0, burst=1).allowed
        clock.t += 0.1


def test_a_batch_costs_its_tasks_and_a_full_bucket_admits_one_dearer_than_its_burst() -> None:
    clock = Clock()
    buckets = TokenBuckets(clock=clock)
    assert buckets.take("k", rate=10.0, burst=100, cost=60).allowed
    refused = buckets.take("k", rate=10.0, burst=100, cost=60)
    assert not refused.allowed and refused.retry_after_s == 2  # 40 left, 20 more at 10/s
    clock.t += 1000
    assert buckets.take("k", rate=10.0, burst=100, cost=500).allowed  # full: passes once, leaves a debt
    assert not buckets.take("k", rate=10.0, burst=100, cost=1).allowed


def test_buckets_are_bounded() -> None:
    buckets = TokenBuckets(max_buckets=3, clock=Clock())
    for i in range(10):
        buckets.take(f"addr:{i}", rate=1.0, burst=1)
    assert len(buckets._buckets) == 3


# ------------------------------------------------------------------ exposure and hosts


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "api.example.com"])
def test_unauthenticated_api_refuses_a_non_loopback_address(host) -> None:
    with pytest.raises(auth.InsecureConfig, match="refusing"):
        create_app(Settings(api_host=host))
    create_app(Settings(api_host=host, auth_api_keys=True))
    create_app(Settings(api_host=host, auth_allow_unauthenticated=True))


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_addresses_need_no_authentication(host) -> None:
    assert loopback(host)
    create_app(Settings(api_host=host))


def test_trusted_hosts_default_to_loopback_names_on_loopback_and_any_elsewhere() -> None:
    assert allowed_hosts(Settings(api_host="127.0.0.1", trusted_hosts=None)) == ["localhost", "127.0.0.1", "[::1]"]
    assert allowed_hosts(Settings(api_host="0.0.0.0", auth_api_keys=True, trusted_hosts=None)) == ["*"]
    assert allowed_hosts(Settings(trusted_hosts=["api.example.com"])) == ["api.example.com"]


def test_the_shipped_deployments_start_an_api_that_authenticates(monkeypatch) -> None:
    """docker-compose.yml and deploy/k8s put the API on 0.0.0.0: their settings must pass ``check_exposure``."""
    import os
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[2]
    compose = yaml.safe_load((root / "docker-compose.yml").read_text())
    (config,) = [d for d in yaml.safe_load_all((root / "deploy/k8s/configmap.yaml").read_text())
                 if d and d["kind"] == "ConfigMap"]
    for where, env in (("compose", compose["services"]["api-1"]["environment"]), ("k8s", config["data"])):
        for name in [n for n in os.environ if n.startswith("TASKSTREAM_")]:
            monkeypatch.delenv(name)
        for name, value in env.items():
            if name.startswith("TASKSTREAM_"):
                monkeypatch.setenv(name, str(value))
        s = Settings()
        assert not loopback(s.api_host), where
        auth.check_exposure(s)
        assert auth.auth_enabled(s), where


@pytest.mark.parametrize(("peer", "address"), [
    ("ipv4:127.0.0.1:51234", "127.0.0.1"), ("ipv6:[::1]:51234", "::1"), ("ipv6:%5B::1%5D:51234", "::1"),
    ("10.0.0.7:80", "10.0.0.7"), ("10.0.0.7", "10.0.0.7"), ("2001:db8::7", "2001:db8::7"),
    ("unix:/run/api.sock", "unix:/run/api.sock"), ("unknown", "unknown"),
])
def test_client_address_drops_the_port_whatever_the_form(peer: str, address: str) -> None:
    from taskstream.api.rate_limit import client_address

    assert client_address(peer) == address
