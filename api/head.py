"""``HEAD`` wherever ``GET`` is, as pure ASGI middleware (FastAPI routes declared with ``get`` take only GET).

A HEAD request goes through the application as the GET it stands for
(authentication, rate limits and every route see a GET, so the status and
headers are those of the GET, ``Content-Length`` included), and the answer
stops after its headers: the response's start is sent with an empty, final
body, and whatever the application sends after is dropped. Once the
response is complete the application's ``receive`` reports the client gone
(``http.disconnect``), so a stream (an SSE watch) ends at once instead of
running on for nobody. A path without GET answers HEAD as it answers GET
(405, 404).
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

DISCONNECT: Message = {"type": "http.disconnect"}


class HeadAsGetMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        finished = asyncio.Event()

        async def head_send(message: Message) -> None:
            if finished.is_set():
                return
            if message["type"] == "http.response.start":
                await send(message)
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                finished.set()
            elif message["type"] != "http.response.body":
                await send(message)

        async def head_receive() -> Message:
            if finished.is_set():
                return DISCONNECT
            message = asyncio.ensure_future(receive())
            done = asyncio.ensure_future(finished.wait())
            await asyncio.wait({message, done}, return_when=asyncio.FIRST_COMPLETED)
            done.cancel()
            if message.done():
                return message.result()
            message.cancel()
            return DISCONNECT

        await self.app({**scope, "method": "GET"}, head_receive, head_send)
