"""Request bodies are UTF-8 JSON, as pure ASGI middleware checking the bytes as the application reads them.

FastAPI parses a JSON body with the standard library, which guesses the
encoding of bytes (UTF-16 and UTF-32, with or without a byte-order mark), so
without this a UTF-16 body would be taken although the API documents
UTF-8 only (RFC 8259 §8.1). A JSON body (no ``Content-Type``, or
``application/json`` or ``+json``) that declares another ``charset``, holds
bytes that are not UTF-8, or holds a NUL byte (which UTF-8 JSON never does,
and UTF-16 and UTF-32 text always does) makes the read raise ``BodyNotUtf8``,
an ``HTTPException(400)`` that ``problems`` answers as a ``malformed-json``
problem naming ``body``. Nothing is buffered: each chunk goes through an
incremental decoder on its way to the application.
"""

from __future__ import annotations

import codecs
from email.message import Message as MimeHeader

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

UTF_8 = frozenset({"utf-8", "utf8"})


class BodyNotUtf8(HTTPException):
    """A JSON request body that is not UTF-8; ``detail`` says how (for the 400 ``malformed-json`` problem)."""

    def __init__(self, why: str) -> None:
        super().__init__(400, f"malformed JSON: {why}")


def json_charset(content_type: str | None) -> tuple[bool, str | None]:
    """Whether a body of ``content_type`` is parsed as JSON (FastAPI's rule), and the charset it declares."""
    if content_type is None:
        return True, None
    header = MimeHeader()
    header["content-type"] = content_type
    subtype = header.get_content_subtype()
    is_json = header.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))
    charset = header.get_param("charset")
    return is_json, charset if isinstance(charset, str) else None


class Utf8BodyMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        content_type = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"content-type"), None)
        is_json, charset = json_charset(content_type)
        if not is_json:
            await self.app(scope, receive, send)
            return
        decoder = codecs.getincrementaldecoder("utf-8")()

        async def checked_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                body = message.get("body", b"")
                if charset is not None and charset.strip().lower() not in UTF_8 and body:
                    raise BodyNotUtf8(f"charset={charset[:40]} is declared; only UTF-8 is taken")
                if b"\x00" in body:
                    raise BodyNotUtf8("not valid UTF-8 (a NUL byte: UTF-16 or UTF-32 text?)")
                try:
                    decoder.decode(body, final=not message.get("more_body", False))
                except UnicodeDecodeError:
                    raise BodyNotUtf8("not valid UTF-8") from None
            return message

        await self.app(scope, checked_receive, send)
