"""A cap on request body size, enforced before anything parses the body.

`max_records_per_request` bounds the records a request may carry, but a JSON parser
would first read the whole body: one huge string or a deep array costs the replica
memory and CPU before any validation can refuse it. `BodyLimit` answers 413 as soon as
the declared `Content-Length`, or the bytes actually received (chunked uploads), pass the
limit, with the same error shape as every other refusal.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyLimit:
    """ASGI middleware: requests whose body exceeds `max_bytes` get a 413.

    The body is read here, at most `max_bytes` of it, and handed on whole: the framework
    below turns any error raised while it reads the body into its own 400.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", ())).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send, int(declared))
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                await self.app(scope, _replay([message], receive), send)
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(send, size)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        whole = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay([whole], receive), send)

    async def _refuse(self, send: Send, size: int) -> None:
        message = (
            f"request body: {size} bytes or more, the limit is {self.max_bytes} "
            "(max_request_bytes); send fewer records per request"
        )
        problem = {"loc": ["body"], "record": None, "field": None, "type": "too_large"}
        body = json.dumps({"message": message, "detail": [{**problem, "msg": message}]}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A `receive` that gives `messages` first, then the connection's own."""
    pending = list(messages)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed
