"""Dynamic batching for classification: requests that arrive together share one forward pass.

A worker takes the first waiting request, gathers more until the batch holds `max_batch_size`
texts or `max_wait_s` has passed, and runs them through the Predictor in a thread. The waiting
line is bounded (`max_queue` requests): past it, `submit` raises QueueFull at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from lmforge.bundle import Predictor
from lmforge.serve.errors import APIError
from lmforge.serve.metrics import ServeMetrics

log = logging.getLogger("lmforge.serve")

UNTRUNCATED = 1 << 30  # a max_length no text reaches: counts every token


class QueueFull(Exception):
    pass


class TooLong(Exception):
    def __init__(self, index: int, n_tokens: int, max_length: int) -> None:
        super().__init__(
            f"input[{index}] is {n_tokens} tokens, more than the model's maximum of "
            f'{max_length}; shorten it or pass "truncate": true'
        )


@dataclass
class Classified:
    rows: list[dict[str, Any]]  # {"label", "score", "probs"} per text
    prompt_tokens: list[int]  # tokens the model read per text (after truncation)
    truncated: list[bool]


@dataclass
class _Job:
    texts: list[str]
    truncate: bool
    future: asyncio.Future = field(repr=False)
    arrived: float = 0.0  # event-loop time


class ClassifyBatcher:
    def __init__(
        self,
        name: str,
        predictor: Predictor,
        max_batch_size: int,
        max_wait_s: float,
        max_queue: int,
        metrics: ServeMetrics,
    ) -> None:
        self.name, self.predictor = name, predictor
        self.max_batch_size, self.max_wait_s, self.max_queue = max_batch_size, max_wait_s, max_queue
        self.metrics = metrics
        self._waiting: deque[_Job] = deque()
        self._wakeup = asyncio.Event()
        self._worker: asyncio.Task | None = None

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker

    async def classify(self, texts: list[str], truncate: bool) -> Classified:
        """Queue the texts and wait for their batch. Raises QueueFull, TooLong."""
        if len(self._waiting) >= self.max_queue:
            raise QueueFull(f"model '{self.name}' has {self.max_queue} requests waiting")
        loop = asyncio.get_running_loop()
        job = _Job(texts, truncate, loop.create_future(), loop.time())
        self._waiting.append(job)
        self.metrics.queue_depth.labels(self.name).set(len(self._waiting))
        self._wakeup.set()
        return await job.future  # a cancelled wait (timeout) cancels the job too

    def _waiting_texts(self) -> int:
        return sum(len(job.texts) for job in self._waiting if not job.future.cancelled())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            # The oldest request waits at most max_wait_s in all, however busy the model was.
            deadline = self._waiting[0].arrived + self.max_wait_s if self._waiting else 0.0
            while self._waiting_texts() < self.max_batch_size:
                self._wakeup.clear()
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
            batch = self._take_batch()
            if self._waiting:
                self._wakeup.set()
            else:
                self._wakeup.clear()
            if batch:
                await self._run_batch(batch)

    def _take_batch(self) -> list[_Job]:
        """The oldest requests, up to max_batch_size texts (one larger request goes alone)."""
        batch, n_texts = [], 0
        while self._waiting:
            job = self._waiting[0]
            if batch and n_texts + len(job.texts) > self.max_batch_size:
                break
            self._waiting.popleft()
            if not job.future.cancelled():
                batch.append(job)
                n_texts += len(job.texts)
        self.metrics.queue_depth.labels(self.name).set(len(self._waiting))
        return batch

    async def _run_batch(self, batch: list[_Job]) -> None:
        try:
            results = await asyncio.to_thread(self._forward, batch)
        except Exception as error:  # a broken model fails its requests, not the server
            log.exception("classification with '%s' failed; %d request(s) get a 500",
                          self.name, len(batch))
            failed = APIError(500, f"the model failed on this batch ({type(error).__name__}); "
                              "retry the request", code="server_error")
            results = [failed] * len(batch)
        for job, result in zip(batch, results, strict=True):
            if job.future.done():
                continue  # timed out meanwhile
            if isinstance(result, Exception):
                job.future.set_exception(result)
            else:
                job.future.set_result(result)

    def _forward(self, batch: list[_Job]) -> list[Classified | Exception]:
        """Runs in a worker thread: count tokens, refuse too-long inputs, one forward pass."""
        texts = [text for job in batch for text in job.texts]
        counts = [len(ids) for ids in self.predictor.encode(texts, UNTRUNCATED).ids]
        max_length = self.predictor.max_length
        results: list[Classified | Exception] = []
        accepted: list[_Job] = []
        start = 0
        for job in batch:
            job_counts = counts[start : start + len(job.texts)]
            start += len(job.texts)
            too_long = [i for i, n in enumerate(job_counts) if n > max_length]
            if too_long and not job.truncate:
                results.append(TooLong(too_long[0], job_counts[too_long[0]], max_length))
                continue
            accepted.append(job)
            results.append(
                Classified(
                    rows=[],
                    prompt_tokens=[min(n, max_length) for n in job_counts],
                    truncated=[n > max_length for n in job_counts],
                )
            )
        run_texts = [text for job in accepted for text in job.texts]
        if run_texts:
            self.metrics.batch_size.labels(self.name).observe(len(run_texts))
            rows = self.predictor.predict_batch(run_texts, self.max_batch_size).rows
            rows_iter = iter(rows)
            for result in results:
                if isinstance(result, Classified):
                    result.rows = [_without_text(next(rows_iter)) for _ in result.prompt_tokens]
        return results


def _without_text(row: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in row.items() if key != "text"}
