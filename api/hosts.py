"""The Host header check: a DNS-rebinding page cannot drive an API that listens on loopback.

A page on ``evil.example`` whose name is re-pointed at 127.0.0.1 makes the
browser send same-origin requests to a loopback API, but with
``Host: evil.example``; answering only the hosts in ``allowed_hosts(settings)``
stops it. Starlette's ``TrustedHostMiddleware`` does the matching
(``*.example.com`` patterns, ``*`` for any); a refused request gets a
problem+json 400 naming the ``Host`` header.
"""

from __future__ import annotations

import ipaddress

from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from taskstream.schemas import Settings

from .problems import problem

LOOPBACK_NAMES = ["localhost", "127.0.0.1", "[::1]"]


def loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, IPv6 with or without brackets) is this machine's loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_hosts(settings: Settings) -> list[str]:
    """``settings.trusted_hosts``, or by default the loopback names on a loopback API and any host elsewhere."""
    if settings.trusted_hosts is not None:
        return list(settings.trusted_hosts)
    if loopback(settings.api_host):
        return [*LOOPBACK_NAMES, *([settings.api_host] if settings.api_host not in LOOPBACK_NAMES else [])]
    return ["*"]


async def _passed(scope: Scope, receive: Receive, send: Send) -> None:
    scope["taskstream.host_ok"] = True


async def _drop(message) -> None:
    pass


class TrustedHosts:
    """ASGI middleware: Starlette's Host check, answering a refusal as problem+json."""

    def __init__(self, app: ASGIApp, hosts: list[str]) -> None:
        self.app = app
        self.hosts = hosts
        self._check = TrustedHostMiddleware(_passed, allowed_hosts=hosts, www_redirect=False)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            await self._check(scope, receive, _drop)
            if not scope.pop("taskstream.host_ok", False):
                message = f"this API answers only the hosts {', '.join(self.hosts)} (setting trusted_hosts)"
                response = problem(400, "Untrusted Host header", f"Host: {message}", kind="untrusted-host",
                                   errors=[{"field": "Host", "message": message}])
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                else:
                    await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
