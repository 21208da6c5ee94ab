"""Generation served: a bundle's Generator run off the event loop, one request at a time.

Each model has one worker thread, so decoding never blocks the server and two requests never
share the model at once; requests wait their turn in a bounded line (`max_queue`, then 503).
`stream` hands the Generator's StreamEvents to the event loop as they come; closing it (a client
that went away) stops the decoding at its next piece of text.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from lmforge.bundle import Generator, StreamEvent
from lmforge.errors import LmforgeError
from lmforge.serve.errors import APIError

# A bundle's lmforge.json may hold {"chat_template": {"message": ..., "generation_prompt": ...}},
# format strings like these; without one, chat messages are rendered this way.
DEFAULT_CHAT_TEMPLATE = {"message": "{role}: {content}\n", "generation_prompt": "assistant:"}

_END = object()  # the worker's last item on the queue


def render_chat(messages: list[dict[str, str]], template: dict[str, str] | None = None) -> str:
    """Messages ({"role", "content"}) as one prompt, ending where the assistant's reply starts."""
    template = template or DEFAULT_CHAT_TEMPLATE
    lines = [template["message"].format(role=m["role"], content=m["content"]) for m in messages]
    return "".join(lines) + template["generation_prompt"]


class GenerationEngine:
    """The served form of a Generator: `stream(prompts, **options)` as an async iterator."""

    def __init__(self, name: str, generator: Generator, max_queue: int) -> None:
        self.name, self.generator, self.max_queue = name, generator, max_queue
        self.chat_template: dict[str, str] | None = generator.meta.get("chat_template")
        self.default_max_tokens: int = generator.defaults.max_new_tokens
        self._worker: ThreadPoolExecutor | None = None
        self._waiting = 0  # requests queued or running

    def start(self) -> None:
        self._worker = ThreadPoolExecutor(1, thread_name_prefix=f"generate-{self.name}")

    async def stop(self) -> None:
        if self._worker is not None:
            await asyncio.to_thread(self._worker.shutdown, wait=True, cancel_futures=True)

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        return render_chat(messages, self.chat_template)

    async def stream(self, prompts: list[str], **options: Any) -> AsyncIterator[StreamEvent]:
        """Events as generated. Bad options or prompts raise APIError(422) before the first."""
        if self._waiting >= self.max_queue:
            raise APIError(
                503,
                f"{self._waiting} generation requests are waiting for '{self.name}'; retry shortly",
                code="overloaded",
                headers={"Retry-After": "1"},
            )
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        stopped = threading.Event()

        def put(item: object) -> None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is listening
                loop.call_soon_threadsafe(queue.put_nowait, item)

        def work() -> None:
            if stopped.is_set():  # the client left while waiting its turn
                return put(_END)
            try:
                events = self.generator.stream(prompts, **options)
                try:
                    for event in events:
                        if stopped.is_set():
                            break
                        put(event)
                finally:
                    events.close()
            except Exception as error:
                put(error)
            put(_END)

        self._waiting += 1
        try:
            loop.run_in_executor(self._worker, work)
            while (item := await queue.get()) is not _END:
                if isinstance(item, LmforgeError):
                    raise APIError(422, str(item), code="invalid_request") from None
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            stopped.set()
            self._waiting -= 1
