"""Classification served: requests that arrive together share one forward pass (dynamic batching).

A worker takes the first waiting request, gathers more until the batch holds `max_batch_size`
texts or `max_wait_s` has passed, and runs them through the Predictor in a thread. A request is
admitted only while the work queued ahead of it (texts × the measured time per text) would end
well within its timeout, and never past `max_queue` waiting requests: otherwise `classify` raises
Overloaded at once, so that under overload the model serves what it can in time and refuses the
rest quickly instead of letting every request wait out its timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import statistics
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from lmforge.bundle import Predictor
from lmforge.serve.errors import APIError
from lmforge.serve.metrics import ServeMetrics

log = logging.getLogger("lmforge.serve")

UNTRUNCATED = 1 << 30  # a max_length no text reaches: counts every token
# Admit while the expected wait is under this share of the timeout: the estimate is an average,
# and a busy machine runs slower than the batches it was measured on.
ADMIT_SHARE = 0.5
MEASURED_BATCHES = 5  # service time is the median of the last few batches: one stall is ignored


class Overloaded(Exception):
    """The model cannot take the request now; the client may retry after `retry_after_s`."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = max(1, math.ceil(retry_after_s))  # whole seconds, as HTTP says


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
    explain: bool
    future: asyncio.Future = field(repr=False)
    arrived: float = 0.0  # event-loop time
    deadline: float = math.inf  # event-loop time past which the client no longer waits


class ClassificationEngine:
    """The served form of a Predictor: `admit(n_texts, timeout_s)` (or `refusal`) to shed load
    early, then `classify(texts, truncate, timeout_s)`."""

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
        self._waiting_texts = 0  # texts of the jobs in _waiting
        self._running_texts = 0  # texts of the batch in the forward pass
        self._recent: deque[tuple[float, int]] = deque(maxlen=MEASURED_BATCHES)  # (s, texts)
        self._s_per_text = self._batch_s = 0.0  # medians over _recent (0 until measured)
        self._warmed_up = asyncio.Event()  # admission waits for a first measured time
        self._wakeup = asyncio.Event()
        self._worker: asyncio.Task | None = None

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker

    def admit(self, n_texts: int, timeout_s: float) -> None:
        """Raise Overloaded unless a request of n_texts would be answered well within timeout_s."""
        refusal = self.refusal(n_texts, timeout_s)
        if refusal is not None:
            raise refusal

    def refusal(self, n_texts: int, timeout_s: float) -> Overloaded | None:
        """Why a request of n_texts would be refused now, or None: cheap enough to ask of every
        request that arrives, before its body is read."""
        if len(self._waiting) >= self.max_queue:
            return Overloaded(f"model '{self.name}' has {self.max_queue} requests waiting", 1)
        wait_s = self.expected_wait_s(n_texts)
        busy = self._waiting_texts or self._running_texts  # an idle model takes any request
        if busy and wait_s > ADMIT_SHARE * timeout_s:
            return Overloaded(
                f"model '{self.name}' has about {wait_s:.1f}s of work queued, too much to finish "
                f"this request within the server's {timeout_s:g}s",
                wait_s - ADMIT_SHARE * timeout_s,
            )
        return None

    async def classify(
        self, texts: list[str], truncate: bool, timeout_s: float, explain: bool = False
    ) -> Classified:
        """Queue the texts and wait for their batch (with `explain`, each row gains its
        attributions, computed in the worker thread). Raises Overloaded, TooLong,
        TimeoutError."""
        await self._warmed_up.wait()
        self.admit(len(texts), timeout_s)
        loop = asyncio.get_running_loop()
        now = loop.time()
        job = _Job(texts, truncate, explain, loop.create_future(), now, now + timeout_s)
        self._waiting.append(job)
        self._waiting_texts += len(texts)
        self.metrics.queue_depth.labels(self.name).set(len(self._waiting))
        self._wakeup.set()
        return await job.future  # a cancelled wait (timeout) cancels the job too

    def expected_wait_s(self, n_texts: int) -> float:
        """Seconds until n_texts more would be classified: everything ahead of them, then them."""
        return (self._waiting_texts + self._running_texts + n_texts) * self._s_per_text

    def _warm_up(self) -> None:
        """Two passes on one short text before serving: the first pays for lazy set-up, the
        second is the time per text that admission starts from."""
        try:
            for _ in range(2):
                started = time.perf_counter()
                self.predictor.predict_batch(["warm-up"], 1)
            self._measured(1, time.perf_counter() - started)
        except Exception:
            log.exception("warming up '%s' failed; its speed is measured on requests", self.name)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.to_thread(self._warm_up)
        self._warmed_up.set()
        while True:
            await self._wakeup.wait()
            # The oldest request waits at most max_wait_s in all, however busy the model was.
            deadline = self._waiting[0].arrived + self.max_wait_s if self._waiting else 0.0
            while self._waiting_texts < self.max_batch_size:
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
        """The oldest requests, up to max_batch_size texts (one larger request goes alone).

        A request that cannot be answered before its deadline is dropped with a TimeoutError
        rather than run for a client that will have gone.
        """
        batch, n_texts = [], 0
        too_late = asyncio.get_running_loop().time() + self._batch_s
        while self._waiting:
            job = self._waiting[0]
            if batch and n_texts + len(job.texts) > self.max_batch_size:
                break
            self._waiting.popleft()
            self._waiting_texts -= len(job.texts)
            if job.future.cancelled():
                continue
            if job.deadline < too_late:
                job.future.set_exception(TimeoutError())
                continue
            batch.append(job)
            n_texts += len(job.texts)
        self.metrics.queue_depth.labels(self.name).set(len(self._waiting))
        return batch

    async def _run_batch(self, batch: list[_Job]) -> None:
        n_texts = sum(len(job.texts) for job in batch)
        self._running_texts = n_texts
        started = time.perf_counter()
        try:
            results = await asyncio.to_thread(self._forward_isolating, batch)
        finally:
            self._running_texts = 0
        self._measured(n_texts, time.perf_counter() - started)
        for job, result in zip(batch, results, strict=True):
            if job.future.done():
                continue  # timed out meanwhile
            if isinstance(result, Exception):
                job.future.set_exception(result)
            else:
                job.future.set_result(result)
        self._refuse_what_would_be_late()

    def _refuse_what_would_be_late(self) -> None:
        """If the model slowed down after they were admitted, the newest requests (last in line)
        may no longer make their deadline: refuse them now (503) rather than at their timeout."""
        now = asyncio.get_running_loop().time()
        while self._waiting:
            job = self._waiting[-1]
            wait_s = self.expected_wait_s(0)  # the whole line, this request last
            if not job.future.cancelled() and now + wait_s <= job.deadline:
                break
            self._waiting.pop()
            self._waiting_texts -= len(job.texts)
            if not job.future.cancelled():
                timeout_s = job.deadline - job.arrived
                job.future.set_exception(Overloaded(
                    f"model '{self.name}' slowed down: this request would not finish within "
                    f"the server's {timeout_s:g}s",
                    wait_s - ADMIT_SHARE * timeout_s,
                ))  # fmt: skip
        self.metrics.queue_depth.labels(self.name).set(len(self._waiting))

    def _measured(self, n_texts: int, seconds: float) -> None:
        """Medians, so that one stalled batch (another process, a garbage collection) does not
        refuse a whole line of requests, while a slowdown that lasts shows within a few."""
        self._recent.append((seconds, n_texts))
        self._s_per_text = statistics.median(s / n for s, n in self._recent)
        self._batch_s = statistics.median(s for s, _ in self._recent)

    def _forward_isolating(self, batch: list[_Job]) -> list[Classified | Exception]:
        """_forward, and if it raises, each half of the batch again: a text that breaks the
        tokenizer or the model fails its own request, never its neighbours'."""
        try:
            return self._forward(batch)
        except Exception as error:  # a broken model fails its requests, not the server
            if len(batch) == 1:
                log.exception("classification with '%s' failed; one request gets a 500", self.name)
                return [
                    APIError(
                        500,
                        f"the model failed on this request ({type(error).__name__}); "
                        "retry the request",
                        code="server_error",
                    )
                ]
        half = len(batch) // 2
        return self._forward_isolating(batch[:half]) + self._forward_isolating(batch[half:])

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
            for job, result in zip(batch, results, strict=True):
                if isinstance(result, Classified):
                    result.rows = [_without_text(next(rows_iter)) for _ in result.prompt_tokens]
                    if job.explain:
                        found = self.predictor.explain(job.texts)
                        for row, attributions in zip(result.rows, found, strict=True):
                            row["attributions"] = attributions
        return results


def _without_text(row: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in row.items() if key != "text"}
