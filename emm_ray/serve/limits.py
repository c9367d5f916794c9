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


class _TooLarge(Exception):
    """Raised from `receive` once more bytes arrived than allowed."""


class BodyLimit:
    """ASGI middleware: requests whose body exceeds `max_bytes` get a 413."""

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
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await self._refuse(send, received)

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
