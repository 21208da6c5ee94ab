"""Limits that protect the server: the request body size (413) and requests per minute (429)."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lmforge.serve.errors import error_response


class BodySizeLimit:
    """ASGI middleware: a body over `max_bytes` gets 413 before any route reads it.

    Content-Length is checked first; a chunked body is counted as it arrives, so memory never
    holds more than `max_bytes` of one request.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away before sending its body
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await self._reject(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = f"request body is larger than the server's limit of {self.max_bytes} bytes"
        response = error_response(413, message, code="request_too_large")
        await response(scope, receive, send)


class RateLimiter:
    """Requests per minute per key over a sliding 60-second window, in this server process."""

    def __init__(self, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.window_s, self.clock = window_s, clock
        self._calls: dict[str, deque[float]] = {}
        self._lock = threading.Lock()  # auth dependencies run in a thread pool

    def acquire(self, key: str, rpm: int) -> float | None:
        """None if the call may go ahead (and is counted), else the seconds until it may."""
        with self._lock:
            now = self.clock()
            calls = self._calls.setdefault(key, deque())
            while calls and calls[0] <= now - self.window_s:
                calls.popleft()
            if len(calls) >= rpm:
                return calls[0] + self.window_s - now
            calls.append(now)
            return None
