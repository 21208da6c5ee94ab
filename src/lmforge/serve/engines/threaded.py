"""The engine of a model whose request is one quick pass (a feature table's MLP, an image CNN, a
recommender): each request runs in a worker thread, one at a time per model (a lock keeps
requests from competing for the CPU threads), and past `max_queue` waiting requests a request
gets 503 at once instead of waiting."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from lmforge.serve.errors import APIError, retry_after
from lmforge.serve.metrics import ServeMetrics

T = TypeVar("T")


class ThreadedEngine:
    def __init__(self, name: str, max_queue: int, metrics: ServeMetrics) -> None:
        self.name, self.max_queue, self.metrics = name, max_queue, metrics
        self._lock = threading.Lock()
        self._waiting = 0

    def start(self) -> None:
        """Nothing runs between requests."""

    async def stop(self) -> None:
        """Requests in flight finish in their threads."""

    async def run(self, work: Callable[..., T], *args: Any) -> T:
        """`work(*args)` in a worker thread, holding the model's lock; 503 when full."""
        if self._waiting >= self.max_queue:
            raise APIError(503, f"model '{self.name}' has {self.max_queue} requests waiting; "
                           "retry later", code="overloaded", headers=retry_after(1))
        self._waiting += 1
        self.metrics.queue_depth.labels(self.name).set(self._waiting)
        try:
            return await asyncio.to_thread(self._locked, work, *args)
        finally:
            self._waiting -= 1
            self.metrics.queue_depth.labels(self.name).set(self._waiting)

    def _locked(self, work: Callable[..., T], *args: Any) -> T:
        with self._lock:
            return work(*args)
