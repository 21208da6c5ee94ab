"""Generation served: every request to a model decoded together in one shared batch.

Each model has one decoding thread that runs a DecodeBatch (continuous batching): a request
joins at the next step, however far the others have got, and leaves as soon as it is done (its
end-of-text, a stop string, max_tokens, or a client that went away), so up to
--max-batch-size prompts are decoded per forward pass and a short request never waits behind a
long one. Requests beyond that wait their turn in a bounded line (`max_queue`, then 503).
A pretrained Hugging Face model's cache cannot be merged: it decodes one request at a time.
On a GPU, lmforge's GPT decodes in fixed slots (SlotBatch): every step replays one CUDA graph.

`prepare` encodes a request's prompts and checks its options; `stream` then hands the job's
StreamEvents to the event loop as they come; closing it (a client that went away, a timeout)
takes the request out of the batch at the next step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import torch

from lmforge.bundle import Generator
from lmforge.config import GenerateConfig
from lmforge.decoding import DecodeBatch, GenerationJob, SlotBatch, StreamEvent
from lmforge.errors import LmforgeError
from lmforge.models import GPT
from lmforge.serve.errors import APIError
from lmforge.serve.metrics import ServeMetrics

_END = object()  # a request's last item on its queue
log = logging.getLogger("lmforge.serve")


@dataclass
class _Request:
    job: GenerationJob
    loop: asyncio.AbstractEventLoop  # where the waiting coroutine runs
    queue: asyncio.Queue  # its items: StreamEvents, an exception, then _END
    stopped: threading.Event = field(default_factory=threading.Event)

    @property
    def rows(self) -> int:
        return len(self.job.prompts)

    def put(self, *items: object) -> None:
        _deliver([(self, list(items))])


def _deliver(outbox: list[tuple[_Request, list[object]]]) -> None:
    """Hand items to their requests' coroutines, from the decoding thread: one wake-up of each
    event loop for the lot (a step's events for every request), not one per event."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, list[object]]]] = {}
    for request, items in outbox:
        if items:
            by_loop.setdefault(request.loop, []).append((request.queue, items))
    for loop, parcels in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody listens
            loop.call_soon_threadsafe(_unpack, parcels)


def _unpack(parcels: list[tuple[asyncio.Queue, list[object]]]) -> None:
    for queue, items in parcels:
        for item in items:
            queue.put_nowait(item)


class GenerationEngine:
    """The served form of a Generator: `prepare(prompts, settings, truncate)`, then
    `stream(job)` as an async iterator."""

    def __init__(
        self,
        name: str,
        generator: Generator,
        max_queue: int,
        max_rows: int = 32,
        metrics: ServeMetrics | None = None,
    ) -> None:
        self.name, self.generator, self.max_queue = name, generator, max_queue
        self.max_rows, self.metrics = max_rows, metrics
        self.default_max_tokens: int = generator.defaults.max_new_tokens
        self._inbox: deque[_Request] = deque()
        self._wake = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._waiting = 0  # requests queued or decoding
        # Made now, while the model loads: a GPU's slots take their KV cache before /readyz
        # says ready, not at the first request.
        self._batch = self._new_batch()

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._decode, name=f"generate-{self.name}", daemon=True
        )
        self._thread.start()

    async def stop(self) -> None:
        with self._wake:
            self._closing = True
            self._wake.notify()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)

    async def prepare(
        self, prompts: list, settings: GenerateConfig, truncate: bool = False, chat: bool = False
    ) -> GenerationJob:
        """The prompts (with `chat`, conversations, rendered with the bundle's chat template)
        encoded and the settings checked (as Generator.prepare does): a job for `stream`. 503
        if the queue is full; 422 for bad settings or prompts."""
        if self._waiting >= self.max_queue:
            raise APIError(
                503,
                f"{self._waiting} generation requests are waiting for '{self.name}'; retry shortly",
                code="overloaded",
                headers={"Retry-After": "1"},
            )
        if isinstance(prompts, list) and len(prompts) > self.max_rows:
            raise APIError(
                422,
                f"{len(prompts)} prompts in one request; this server takes at most "
                f"{self.max_rows} (--max-batch-size)",
                code="too_many_prompts",
                param="prompt",
            )
        try:
            return await asyncio.to_thread(self.generator.prepare, prompts, settings, truncate,
                                           chat)
        except LmforgeError as error:
            raise APIError(422, str(error), code="invalid_request") from None

    async def stream(self, job: GenerationJob) -> AsyncIterator[StreamEvent]:
        """The job's events as generated, its rows decoded in the model's shared batch."""
        request = _Request(job, asyncio.get_running_loop(), asyncio.Queue())
        self._waiting += 1
        try:
            with self._wake:
                self._inbox.append(request)
                self._wake.notify()
            while (item := await request.queue.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            request.stopped.set()
            self._waiting -= 1

    # --- the decoding thread ---------------------------------------------------------------

    def _decode(self) -> None:
        batch = self._batch
        active: dict[int, _Request] = {}
        while True:
            with self._wake:
                while not self._inbox and not active and not self._closing:
                    self._wake.wait()
                if self._closing:
                    break
                joining = []
                while self._inbox and batch.can_take(self._inbox[0].rows, self.max_rows):
                    request = self._inbox.popleft()
                    if request.stopped.is_set():  # its client left while it waited
                        continue
                    try:
                        batch.add(id(request), request.job.prompts, request.job.max_new_tokens,
                                  request.job.sampling, request.job.rngs)
                    except ValueError as error:  # prepare() leaves room; this is a bug
                        request.put(APIError(500, str(error), code="server_error"), _END)
                    else:
                        joining.append(request)
                waiting = len(self._inbox)
            active.update((id(request), request) for request in joining)
            if self.metrics is not None:
                self.metrics.queue_depth.labels(self.name).set(waiting)
            try:
                self._step(batch, active)
            except Exception as error:  # out of memory, say: these requests fail, later go on
                log.exception("generation with '%s' failed; %d request(s) get a 500",
                              self.name, len(active))
                failed = APIError(
                    500, f"the model failed while generating ({type(error).__name__}); "
                    "retry the request", code="server_error",
                )
                for request in active.values():
                    request.put(failed, _END)
                active.clear()
                batch.clear()
        gone = APIError(503, "the server is shutting down", code="shutting_down")
        for request in [*active.values(), *self._inbox]:
            request.put(gone, _END)

    def _new_batch(self) -> DecodeBatch:
        # On a GPU, lmforge's GPT decodes in fixed slots, one CUDA graph replayed every step
        # however requests come and go; elsewhere the padded batch, which copies less.
        model, context = self.generator.model, self.generator.max_length
        if isinstance(model, GPT) and next(model.parameters()).device.type == "cuda":
            try:
                return SlotBatch(model, context, slots=self.max_rows)
            except torch.cuda.OutOfMemoryError:
                log.warning(
                    "'%s': no GPU memory for %d slots of %d tokens; decoding in a padded batch "
                    "(lower --max-batch-size for slots)", self.name, self.max_rows, context,
                )
                torch.cuda.empty_cache()
        return DecodeBatch(model, context, static_after=None)

    def _step(self, batch: DecodeBatch, active: dict[int, _Request]) -> None:
        """Draw a token for every request in the batch, hand out the text it makes, let the
        requests that are done leave, and run the rest one step on."""
        drawn = batch.sample()
        if not drawn:
            return
        if self.metrics is not None:
            self.metrics.batch_size.labels(self.name).observe(batch.rows)
        tokens = torch.cat([step for _, step, _ in drawn]).tolist()  # one copy from the device
        done, start, outbox = [], 0, []
        for key, step, last in drawn:
            request = active[key]
            items: list[object] = request.job.take(tokens[start : start + len(step)])
            start += len(step)
            if last:
                items += request.job.end()
            if request.job.done or request.stopped.is_set():
                items.append(_END)
                done.append(key)
                del active[key]
            outbox.append((request, items))
        _deliver(outbox)
        batch.leave(done)
        batch.advance()


