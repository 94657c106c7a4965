"""The built-in ``http`` handler against servers on 127.0.0.1 that the tests start, and its guard.

Loopback is allowed only where a test says so (``http_allowed_networks``). Refusals are proved to happen before
any connection: a refused target raises ``TargetRefused`` (the guard's own error, raised before a client exists),
and a listening socket that was the target records no accepted connection.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taskstream.executors.builtin import builtins
from taskstream.executors.builtin_http import (
    HttpHandler,
    HttpStatusError,
    TargetRefused,
    _public,
    carried_ipv4,
    check,
)
from taskstream.executors.context import TaskContext
from taskstream.executors.errors import PermanentError
from taskstream.schemas import Settings

CTX = TaskContext(task_id="t-http", attempt=1, handler="http", priority="medium")


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:  # quiet
        pass

    def _answer(self) -> None:
        server = self.server
        server.seen.append((self.command, self.path, self.headers.get("Host")))
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path = self.path.split("?")[0]
        if path == "/ok":
            self._send(200, json.dumps({"hello": "world"}).encode(), "application/json")
        elif path == "/headers":
            self._send(200, json.dumps(dict(self.headers.items())).encode(), "application/json")
        elif path == "/echo":
            self._send(200, body, self.headers.get("Content-Type", "text/plain"))
        elif path.startswith("/status/"):
            self._send(int(path.rsplit("/", 1)[1]), b"status body")
        elif path == "/big":
            self._send(200, b"x" * 300_000)
        elif path == "/slow":
            time.sleep(2)
            self._send(200, b"late")
        elif path == "/redirect":
            self.send_response(302)
            self.send_header("Location", self.path.split("to=", 1)[1])
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self._send(404, b"no")

    def _send(self, status: int, body: bytes, ctype: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _answer


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.seen = []
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


class Silent:
    """A listening socket nobody should ever connect to: ``accepted()`` says whether someone did."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.setblocking(False)

    def getsockname(self):
        return self.sock.getsockname()

    def accepted(self) -> bool:
        try:
            conn, _ = self.sock.accept()
            conn.close()
            return True
        except BlockingIOError:
            return False


@pytest.fixture
def silent():
    s = Silent()
    yield s
    s.sock.close()


def loopback(**kw) -> Settings:
    return Settings(http_allowed_hosts=["127.0.0.1"], http_allowed_networks=["127.0.0.1/32"], **kw)


def call(settings: Settings, payload):
    return asyncio.run(HttpHandler(settings)(payload, CTX))


def url(srv, path: str) -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}{path}"


# ----------------------------------------------------------------- success


def test_get_returns_status_headers_and_body(server) -> None:
    got = call(loopback(), {"url": url(server, "/ok")})
    assert got["status"] == 200 and json.loads(got["body"]) == {"hello": "world"} and got["truncated"] is False
    assert got["headers"]["content-type"] == "application/json"
    assert server.seen == [("GET", "/ok", f"127.0.0.1:{server.server_address[1]}")]


def test_post_json_and_body(server) -> None:
    got = call(loopback(), {"method": "post", "url": url(server, "/echo"), "json": {"a": [1, 2]}})
    assert json.loads(got["body"]) == {"a": [1, 2]} and got["headers"]["content-type"] == "application/json"
    got = call(loopback(), {"method": "PUT", "url": url(server, "/echo"), "body": "plain", "headers": {"X-A": "1"}})
    assert got["body"] == "plain"


def test_the_body_is_capped(server) -> None:
    got = call(loopback(http_max_response_bytes=1000), {"url": url(server, "/big")})
    assert got["truncated"] is True and len(got["body"]) == 1000


def test_a_redirect_to_an_allowed_target_is_followed(server) -> None:
    got = call(loopback(), {"url": url(server, "/redirect?to=/ok")})
    assert got["status"] == 200 and [p for _, p, _ in server.seen] == ["/redirect?to=/ok", "/ok"]


def test_credentials_are_not_sent_on_to_another_origin(server) -> None:
    port = server.server_address[1]
    s = Settings(http_allowed_hosts=["127.0.0.1", "localhost"], http_allowed_networks=["127.0.0.0/8", "::1/128"])
    if not asyncio.run(check(f"http://localhost:{port}/", s)).address.version == 4:
        pytest.skip("localhost does not resolve to IPv4 here")
    headers = {"Authorization": "Bearer t", "Cookie": "c=1", "X-Other": "kept"}
    same = call(s, {"url": url(server, "/redirect?to=/headers"), "headers": headers})
    assert {"Authorization", "Cookie", "X-Other"} <= set(json.loads(same["body"]))
    other = call(s, {"url": url(server, f"/redirect?to=http://localhost:{port}/headers"), "headers": headers})
    got = json.loads(other["body"])
    assert "Authorization" not in got and "Cookie" not in got and got["X-Other"] == "kept"
    assert got["Host"] == f"localhost:{port}"


def test_the_name_is_sent_as_host_while_the_connection_goes_to_the_checked_address(server) -> None:
    port = server.server_address[1]
    s = Settings(http_allowed_hosts=["localhost"], http_allowed_networks=["127.0.0.0/8", "::1/128"])
    target = asyncio.run(check(f"http://localhost:{port}/ok", s))
    assert target.address.is_loopback and target.host == "localhost"
    if target.address.version == 4:  # the test server listens on IPv4 only
        assert call(s, {"url": f"http://localhost:{port}/ok"})["status"] == 200
        assert server.seen[-1][2] == f"localhost:{port}"


def test_proxies_from_the_environment_are_ignored(server, monkeypatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://10.255.255.1:3128")
    monkeypatch.setenv("ALL_PROXY", "http://10.255.255.1:3128")
    assert call(loopback(), {"url": url(server, "/ok")})["status"] == 200


# ----------------------------------------------------------------- outcomes


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503])
def test_retryable_statuses_fail_the_attempt(server, status: int) -> None:
    with pytest.raises(HttpStatusError) as err:
        call(loopback(), {"url": url(server, f"/status/{status}")})
    assert not isinstance(err.value, PermanentError) and str(err.value) == f"http: status {status} (retryable)"


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 422])
def test_other_4xx_fail_the_task_for_good(server, status: int) -> None:
    with pytest.raises(PermanentError, match=f"http: status {status}$"):
        call(loopback(), {"url": url(server, f"/status/{status}")})


def test_expect_status(server) -> None:
    assert call(loopback(), {"url": url(server, "/status/404"), "expect_status": [404]})["status"] == 404
    with pytest.raises(PermanentError):
        call(loopback(), {"url": url(server, "/ok"), "expect_status": 201})


def test_a_slow_answer_times_out(server) -> None:
    with pytest.raises(TimeoutError):
        call(loopback(), {"url": url(server, "/slow"), "timeout_s": 0.3})


@pytest.mark.parametrize("payload", [None, [], {"url": 5}, {"url": "http://127.0.0.1/", "method": "TRACE"},
                                     {"url": "http://127.0.0.1/", "headers": {"a": 1}},
                                     {"url": "http://127.0.0.1/", "json": 1, "body": "x"},
                                     {"url": "http://127.0.0.1/", "timeout_s": -1}])
def test_bad_payloads_are_permanent(payload) -> None:
    with pytest.raises(PermanentError):
        call(loopback(), payload)


# ----------------------------------------------------------------- refusals, before any connection


def test_loopback_is_refused_unless_allowed(silent) -> None:
    port = silent.getsockname()[1]
    s = Settings(http_allowed_hosts=["127.0.0.1"])  # the host is listed, its network is not allowed
    with pytest.raises(TargetRefused, match="non-public"):
        call(s, {"url": f"http://127.0.0.1:{port}/"})
    assert not silent.accepted()


def test_an_empty_allow_list_allows_nothing(silent) -> None:
    port = silent.getsockname()[1]
    with pytest.raises(TargetRefused, match="not in http_allowed_hosts"):
        call(Settings(http_allowed_networks=["127.0.0.1/32"]), {"url": f"http://127.0.0.1:{port}/"})
    assert not silent.accepted()


@pytest.mark.parametrize("host", ["10.0.0.1", "169.254.169.254", "192.168.1.1", "172.16.0.1", "100.64.0.1",
                                  "0.0.0.0", "224.0.0.1", "[::1]", "[fd00::1]", "[fe80::1]", "[::ffff:127.0.0.1]",
                                  "[::]", "127.1", "2130706433", "0x7f000001"])
def test_private_link_local_ula_multicast_and_unspecified_addresses_are_refused(host: str) -> None:
    s = Settings(http_allowed_hosts=[host])
    with pytest.raises(TargetRefused, match="non-public"):
        asyncio.run(check(f"http://{host}/latest/meta-data/", s))
    with pytest.raises(TargetRefused):
        call(s, {"url": f"http://{host}/latest/meta-data/"})


#: IPv6 forms of an IPv4 address ``v`` (an int), each reaching ``v`` (or, for 6to4 and Teredo, a gateway at v).
EMBEDDINGS = {
    "compatible": lambda v: ipaddress.IPv6Address(v),
    "mapped": lambda v: ipaddress.IPv6Address((0xFFFF << 32) | v),
    "translated": lambda v: ipaddress.IPv6Address((0xFFFF << 48) | v),
    "nat64": lambda v: ipaddress.IPv6Address((0x64FF9B << 96) | v),
    "6to4": lambda v: ipaddress.IPv6Address((0x2002 << 112) | (v << 80) | 1),
    "teredo": lambda v: ipaddress.IPv6Address((0x20010000 << 96) | (int(TEREDO_SERVER) << 64) | (0xFFFFFFFF ^ v)),
}
TEREDO_SERVER = ipaddress.IPv4Address("65.54.227.120")


@pytest.mark.parametrize("host", ["[::7f00:1]", "[::a9fe:a9fe]", "[::ffff:0:7f00:1]", "[64:ff9b::7f00:1]",
                                  "[64:ff9b::a00:1]", "[64:ff9b:1::7f00:1]", "[64:ff9b:1::808:808]",
                                  "[2002:7f00:1::1]", "[2002:a9fe:a9fe::1]", "[2002:c0a8:101::]",
                                  "[2001:0:4136:e378:8000:63bf:80ff:fffe]"])  # Teredo, client 127.0.0.1
def test_ipv6_forms_that_carry_a_forbidden_ipv4_address_are_refused(host: str) -> None:
    s = Settings(http_allowed_hosts=[host])
    with pytest.raises(TargetRefused, match="non-public"):
        asyncio.run(check(f"http://{host}/", s))


@pytest.mark.parametrize("form", sorted(EMBEDDINGS))
def test_an_ipv6_form_that_carries_a_public_ipv4_address_passes_as_that_address(form: str) -> None:
    host = f"[{EMBEDDINGS[form](int(ipaddress.IPv4Address('8.8.8.8')))}]"
    assert asyncio.run(check(f"http://{host}/", Settings(http_allowed_hosts=[host]))).host == host.strip("[]")
    loopback = f"[{EMBEDDINGS[form](int(ipaddress.IPv4Address('127.0.0.1')))}]"
    allowed = Settings(http_allowed_hosts=[loopback], http_allowed_networks=["127.0.0.0/8"])
    assert asyncio.run(check(f"http://{loopback}/", allowed)).host == loopback.strip("[]")  # allowed like 127.0.0.1


@given(v=st.integers(0, 2**32 - 1), form=st.sampled_from(sorted(EMBEDDINGS)))
def test_an_ipv6_form_is_judged_as_the_ipv4_address_it_carries(v: int, form: str) -> None:
    ip = EMBEDDINGS[form](v)
    assert ipaddress.IPv4Address(v) in carried_ipv4(ip)
    assert _public(ip, []) == _public(ipaddress.IPv4Address(v), [])


def test_a_name_that_resolves_to_a_forbidden_address_is_refused(silent) -> None:
    port = silent.getsockname()[1]
    with pytest.raises(TargetRefused, match="non-public"):
        call(Settings(http_allowed_hosts=["localhost"]), {"url": f"http://localhost:{port}/"})
    assert not silent.accepted()


@pytest.mark.parametrize("target", ["http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/"])
def test_a_redirect_to_a_forbidden_host_is_refused(server, target: str) -> None:
    s = Settings(http_allowed_hosts=["127.0.0.1", "169.254.169.254", "10.0.0.1"],
                 http_allowed_networks=["127.0.0.1/32"])
    with pytest.raises(TargetRefused, match="non-public"):
        call(s, {"url": url(server, f"/redirect?to={target}")})
    assert len(server.seen) == 1


def test_a_redirect_to_a_loopback_server_not_allowed_is_refused_before_connecting(server, silent) -> None:
    port = silent.getsockname()[1]
    with pytest.raises(TargetRefused, match="not in http_allowed_hosts"):
        call(loopback(), {"url": url(server, f"/redirect?to=http://localhost:{port}/")})
    assert not silent.accepted()


def test_redirects_are_bounded(server) -> None:
    with pytest.raises(PermanentError, match="redirects"):
        call(loopback(http_max_redirects=0), {"url": url(server, "/redirect?to=/ok")})


@pytest.mark.parametrize("bad", ["ftp://127.0.0.1/x", "file:///etc/passwd", "http://user:pw@127.0.0.1/", "nonsense"])
def test_only_http_and_https_without_credentials(bad: str) -> None:
    with pytest.raises(TargetRefused):
        call(loopback(), {"url": bad})


def test_subdomain_wildcards() -> None:
    from taskstream.executors.builtin_http import _allowed_host

    assert _allowed_host("api.example.com", ["*.example.com"]) and _allowed_host(
        "API.example.com.", ["api.example.com"]
    )
    assert not _allowed_host("example.com", ["*.example.com"]) and not _allowed_host(
        "evilexample.com", ["*.example.com"]
    )


def test_errors_name_no_payload_value(server) -> None:
    secret = "marker-7f3a"
    for payload in ({"url": f"http://{secret}.invalid/"}, {"url": url(server, f"/status/404?{secret}")},
                    {"url": url(server, f"/status/503?{secret}"), "headers": {"X": secret}}):
        with pytest.raises(Exception) as err:
            call(loopback(), payload)
        assert secret not in str(err.value)


def test_every_executor_has_the_http_and_shell_builtins() -> None:
    table = builtins(Settings())
    assert {"noop", "sleep", "echo", "http", "shell"} <= set(table.names())
    assert table.get("http").is_async and table.get("shell").is_async


def test_the_silent_socket_does_see_a_connection(silent) -> None:
    """Control for the refusal tests: a connection attempt to the silent socket is recorded."""
    with socket.create_connection(silent.getsockname(), timeout=2):
        time.sleep(0.05)
    assert silent.accepted()
