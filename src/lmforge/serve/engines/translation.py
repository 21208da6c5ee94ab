"""A translation model served: requests that arrive together with the same decoding settings are
translated as one batch in a worker thread (beam search over a batch costs little more than over
one sentence), one batch at a time per model, in the order the requests came. Past `max_queue`
waiting requests a request gets 503."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field

from lmforge.serve.errors import APIError, retry_after
from lmforge.serve.metrics import ServeMetrics
from lmforge.tasks.translation import Translation, Translator


@dataclass
class _Request:
    texts: list[str]
    settings: tuple[int | None, float | None, int | None]  # beam, length penalty, max tokens
    done: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class TranslationEngine:
    def __init__(self, name: str, translator: Translator, max_batch_size: int, max_queue: int,
                 metrics: ServeMetrics) -> None:
        self.name, self.translator = name, translator
        self.max_batch_size, self.max_queue, self.metrics = max_batch_size, max_queue, metrics
        self._lock = threading.Lock()  # one batch at a time: they would share the CPU threads
        self._waiting: list[_Request] = []
        self._running = False

    def start(self) -> None:
        """Nothing runs between requests."""

    async def stop(self) -> None:
        """Requests in flight finish in their threads."""

    def count_tokens(self, texts: list[str]) -> list[int]:
        return self.translator.count_tokens(texts)

    async def translate(
        self, texts: list[str], beam_size: int | None, length_penalty: float | None,
        max_new_tokens: int | None, no_repeat_ngram: int | None = None,
    ) -> list[Translation]:
        if len(self._waiting) >= self.max_queue:
            raise APIError(503, f"model '{self.name}' has {self.max_queue} requests waiting; "
                           "retry later", code="overloaded", headers=retry_after(1))
        request = _Request(texts, (beam_size, length_penalty, max_new_tokens, no_repeat_ngram))
        self._waiting.append(request)
        self.metrics.queue_depth.labels(self.name).set(len(self._waiting))
        if not self._running:
            self._running = True
            asyncio.get_running_loop().create_task(self._drain())
        return await request.done

    async def _drain(self) -> None:
        """Translate the waiting requests, those with the same settings together (up to
        max_batch_size sentences, never splitting a request), until none wait."""
        try:
            while self._waiting:
                # a request whose client left (or timed out) while it waited is not translated
                self._waiting = [request for request in self._waiting if not request.done.done()]
                if not self._waiting:
                    break
                first = self._waiting[0]
                batch, size = [], 0
                for request in list(self._waiting):
                    fits = not batch or size + len(request.texts) <= self.max_batch_size
                    if request.settings == first.settings and fits:
                        batch.append(request)
                        size += len(request.texts)
                for request in batch:
                    self._waiting.remove(request)
                self.metrics.queue_depth.labels(self.name).set(len(self._waiting))
                texts = [text for request in batch for text in request.texts]
                try:
                    done = await asyncio.to_thread(self._run, texts, first.settings)
                except Exception as error:  # a bad setting: each request of the batch is told
                    for request in batch:
                        if not request.done.done():
                            request.done.set_exception(error)
                    continue
                start = 0
                for request in batch:
                    if not request.done.done():  # a client that left is not answered
                        request.done.set_result(done[start:start + len(request.texts)])
                    start += len(request.texts)
        finally:
            self._running = False

    def _run(self, texts: list[str], settings: tuple) -> list[Translation]:
        beam_size, length_penalty, max_new_tokens, no_repeat_ngram = settings
        with self._lock:
            return self.translator.translate(texts, beam_size=beam_size,
                                             length_penalty=length_penalty,
                                             max_new_tokens=max_new_tokens,
                                             no_repeat_ngram=no_repeat_ngram)
