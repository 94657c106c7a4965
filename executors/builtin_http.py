"""The built-in ``http`` handler: one outbound HTTP request, guarded against reaching what it should not.

Payload: ``{"method": "GET", "url": "https://...", "headers": {...}, "json": ... | "body": "...",
"timeout_s": 10, "expect_status": 200 | [200, 204]}`` (only ``url`` is required). Result:
``{"status": 200, "headers": {...}, "body": "...", "truncated": false}``; the body is text (UTF-8, undecodable
bytes replaced), cut at ``http_max_response_bytes``.

Guards, all applied before a connection is opened, to the URL and to every redirect hop:

- only ``http`` and ``https``, no user info in the URL;
- the host must match ``http_allowed_hosts`` (exact names, ``*.example.com`` for subdomains, or IP literals);
  an empty list allows nothing;
- the name is resolved once and *every* address it resolves to must be public (``ipaddress.is_global`` and not
  multicast: this refuses loopback, RFC 1918 private, link-local 169.254.0.0/16 and fe80::/10 (cloud metadata
  services), ULA fc00::/7, CGNAT, unspecified, reserved and documentation ranges) unless it lies in
  ``http_allowed_networks``; an IPv6 address that carries an IPv4 one (IPv4-compatible ``::/96``, mapped
  ``::ffff:0:0/96``, NAT64 ``64:ff9b::/96``, 6to4 ``2002::/16``, Teredo ``2001::/32``) is judged as the IPv4
  address it carries, and the local-use NAT64 prefix ``64:ff9b:1::/48`` is never public;
- the connection goes to the checked address itself (the URL's host is replaced by the IP; ``Host`` and TLS SNI
  and certificate checks use the name), so a second DNS answer cannot redirect it (no DNS rebinding);
- redirects (301, 302, 303, 307, 308) are followed by hand, at most ``http_max_redirects``, each hop checked again;
  ``Authorization``, ``Proxy-Authorization`` and ``Cookie`` are not sent on to another origin;
- no proxy or other setting from the environment (``trust_env`` off); the whole exchange is bounded by the
  task's ``timeout_s`` and ``http_timeout_s``, whichever is shorter, and the body read stops at the cap.

Outcomes: a status in ``expect_status`` (default: any 2xx) is a success. 408, 425, 429 and 5xx are retryable
failures (the attempt fails, the task is retried per its policy); any other status (3xx that is not followed,
4xx) is a ``PermanentError``. A refused target is a ``PermanentError`` (retrying cannot make it allowed).
Connection errors and timeouts are retryable. Error messages name no payload value (URL, headers, body); the
target is logged at DEBUG only.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from dataclasses import dataclass
from typing import Any

import httpx

from taskstream.schemas import Settings, codec

from .context import TaskContext
from .errors import PermanentError

log = logging.getLogger(__name__)

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
REDIRECTS = frozenset({301, 302, 303, 307, 308})
RETRYABLE = frozenset({408, 425, 429})
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class TargetRefused(PermanentError):
    """The guard refused a URL (scheme, host, address): no connection was attempted."""


class HttpStatusError(Exception):
    """A status worth retrying (408, 425, 429, 5xx)."""


@dataclass(frozen=True, slots=True)
class Target:
    url: httpx.URL  # as given
    host: str  # the name (or literal) to send as Host / SNI
    address: IPAddress  # where the connection goes


def _allowed_host(host: str, patterns: list[str]) -> bool:
    host = host.lower().rstrip(".")
    for p in patterns:
        p = p.lower().rstrip(".")
        if p.startswith("*.") and host.endswith(p[1:]) and host != p[2:]:
            return True
        if host == p.strip("[]"):
            return True
    return False


#: IPv6 prefixes whose addresses carry an IPv4 address in their last 32 bits: IPv4-compatible (``::/96``),
#: IPv4-mapped (``::ffff:0:0/96``), IPv4-translated (``::ffff:0:0:0/96``) and NAT64 (``64:ff9b::/96``).
#: The local-use NAT64 prefix ``64:ff9b:1::/48`` places the IPv4 address where its operator chooses: it is
#: never public (``_public``).
EMBEDDING_96 = tuple(ipaddress.IPv6Network(n) for n in ("::/96", "::ffff:0:0/96", "::ffff:0:0:0/96", "64:ff9b::/96"))
LOCAL_NAT64 = ipaddress.IPv6Network("64:ff9b:1::/48")


def carried_ipv4(ip: IPAddress) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries (where a packet to it ends up): the last 32 bits under the
    ``EMBEDDING_96`` prefixes, the 6to4 gateway (``2002::/16``), Teredo's server and client (``2001::/32``)."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return []
    if any(ip in n for n in EMBEDDING_96):
        return [ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)]
    if ip.sixtofour is not None:
        return [ip.sixtofour]
    if ip.teredo is not None:
        return list(ip.teredo)
    return []


def _public(ip: IPAddress, networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    """Whether ``ip`` may be reached: it lies in ``networks``, or it is global and not multicast, and so is every
    IPv4 address it carries (``carried_ipv4``: ``[::7f00:1]`` is refused like 127.0.0.1, and allowed by a
    network that allows 127.0.0.1)."""
    if any(ip in n for n in networks if n.version == ip.version):
        return True
    carried = carried_ipv4(ip)
    if carried:
        return all(_public(v4, networks) for v4 in carried)
    if isinstance(ip, ipaddress.IPv6Address) and ip in LOCAL_NAT64:
        return False
    return ip.is_global and not ip.is_multicast


async def check(url: str | httpx.URL, settings: Settings) -> Target:
    """The pinned target of ``url``, or ``TargetRefused`` (nothing connects before this returns)."""
    try:
        u = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise TargetRefused("http: 'url' is not a valid URL") from exc
    if u.scheme not in ("http", "https"):
        raise TargetRefused("http: only http and https URLs are allowed")
    if u.userinfo:
        raise TargetRefused("http: credentials in the URL are not allowed (send them in 'headers')")
    host = u.host
    if not host:
        raise TargetRefused("http: the URL has no host")
    ascii_host = u.raw_host.decode("ascii")  # IDNA form: what DNS, Host and SNI use
    if not (_allowed_host(host, settings.http_allowed_hosts) or _allowed_host(ascii_host, settings.http_allowed_hosts)):
        log.debug("http: host %r is not in http_allowed_hosts", host)
        raise TargetRefused("http: the URL's host is not in http_allowed_hosts")
    networks = [ipaddress.ip_network(n, strict=False) for n in settings.http_allowed_networks]
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        port = u.port or (443 if u.scheme == "https" else 80)
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(ascii_host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise HttpStatusError("http: the URL's host did not resolve") from exc  # DNS may come back: retry
        addresses = list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos))
    refused = [a for a in addresses if not _public(a, networks)]
    if refused or not addresses:
        log.debug("http: %r resolves to non-public %s", host, refused)
        raise TargetRefused("http: the URL's host resolves to a non-public address (loopback, private, "
                            "link-local, multicast or reserved) that http_allowed_networks does not allow")
    return Target(u, ascii_host, addresses[0])


#: Headers not sent on to another origin after a redirect (as browsers and httpx do).
CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})


def _pinned(target: Target) -> httpx.URL:
    return target.url.copy_with(host=str(target.address))


def _origin(url: httpx.URL) -> tuple:
    return url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80)


async def _exchange(client: httpx.AsyncClient, settings: Settings, method: str, url: httpx.URL,
                    headers: dict[str, str], content: bytes | None) -> dict:
    cap = settings.http_max_response_bytes
    for _hop in range(settings.http_max_redirects + 1):
        target = await check(url, settings)
        host_header = target.url.netloc.decode("ascii")
        request = client.build_request(method, _pinned(target), headers={**headers, "Host": host_header},
                                       content=content,
                                       extensions={"sni_hostname": target.host} if target.url.scheme == "https" else {})
        response = await client.send(request, stream=True)
        try:
            if response.status_code in REDIRECTS and "location" in response.headers:
                url = target.url.join(response.headers["location"])
                if _origin(url) != _origin(target.url):
                    headers = {k: v for k, v in headers.items() if k.lower() not in CREDENTIAL_HEADERS}
                if response.status_code == 303 or (response.status_code in (301, 302) and method == "POST"):
                    method, content = "GET", None
                continue
            body = bytearray()
            truncated = False
            async for chunk in response.aiter_raw():
                body += chunk
                if len(body) > cap:
                    del body[cap:]
                    truncated = True
                    break
            return {"status": response.status_code, "headers": dict(response.headers.items()),
                    "body": body.decode("utf-8", errors="replace"), "truncated": truncated}
        finally:
            await response.aclose()
    raise PermanentError(f"http: more than {settings.http_max_redirects} redirects")


def _request_parts(payload: Any) -> tuple[str, str, dict[str, str], bytes | None, float | None, Any]:
    if not isinstance(payload, dict) or not isinstance(payload.get("url"), str):
        raise PermanentError("http: payload must be an object with a string 'url'")
    method = payload.get("method", "GET")
    if not isinstance(method, str) or method.upper() not in METHODS:
        raise PermanentError(f"http: 'method' must be one of {sorted(METHODS)}")
    headers = payload.get("headers") or {}
    if not isinstance(headers, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
        raise PermanentError("http: 'headers' must be an object of strings")
    headers = {k: v for k, v in headers.items()
               if k.lower() not in ("host", "content-length", "transfer-encoding", "accept-encoding")}
    headers["Accept-Encoding"] = "identity"  # the body cap counts bytes as they arrive: no compression bombs
    if "json" in payload and "body" in payload:
        raise PermanentError("http: give 'json' or 'body', not both")
    content = None
    if "json" in payload:
        content = codec.dumps_json(payload["json"]).encode()
        headers.setdefault("Content-Type", "application/json")
    elif payload.get("body") is not None:
        if not isinstance(payload["body"], str):
            raise PermanentError("http: 'body' must be a string")
        content = payload["body"].encode()
    timeout = payload.get("timeout_s")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0):
        raise PermanentError("http: 'timeout_s' must be a positive number")
    expect = payload.get("expect_status")
    if expect is not None:
        expect = [expect] if isinstance(expect, int) else expect
        if not isinstance(expect, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in expect):
            raise PermanentError("http: 'expect_status' must be a status code or a list of them")
    return method.upper(), payload["url"], headers, content, timeout, expect


class HttpHandler:
    """The ``http`` handler bound to one executor's settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def __call__(self, payload: Any, ctx: TaskContext) -> dict:
        method, url, headers, content, timeout, expect = _request_parts(payload)
        limit = min(timeout or self.settings.http_timeout_s, self.settings.http_timeout_s)
        try:
            async with httpx.AsyncClient(trust_env=False, follow_redirects=False, timeout=limit) as client:
                result = await asyncio.wait_for(_exchange(client, self.settings, method, httpx.URL(url), headers,
                                                          content), limit)
        except (TargetRefused, PermanentError, HttpStatusError):
            raise
        except (TimeoutError, httpx.TimeoutException):
            raise TimeoutError(f"http: no complete answer within {limit}s") from None
        except httpx.HTTPError as exc:
            log.debug("task %s attempt %d: http request failed: %r", ctx.task_id, ctx.attempt, exc)
            raise ConnectionError(f"http: request failed ({type(exc).__name__})") from None
        status = result["status"]
        if (status in expect) if expect is not None else 200 <= status < 300:
            return result
        if status in RETRYABLE or status >= 500:
            raise HttpStatusError(f"http: status {status} (retryable)")
        raise PermanentError(f"http: status {status}")
