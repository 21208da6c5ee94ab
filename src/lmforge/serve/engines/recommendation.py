"""A recommender served: each request is ranked in a worker thread, one at a time per model (a
forward pass over a short history is a few milliseconds; the lock keeps requests from competing
for the CPU threads). Past `max_queue` waiting requests a request gets 503."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from lmforge.serve.errors import APIError, retry_after
from lmforge.serve.metrics import ServeMetrics
from lmforge.tasks.recommendation import Recommender


class RecommendationEngine:
    def __init__(self, name: str, recommender: Recommender, max_queue: int,
                 metrics: ServeMetrics) -> None:
        self.name, self.recommender = name, recommender
        self.max_queue, self.metrics = max_queue, metrics
        self._lock = threading.Lock()
        self._waiting = 0

    def start(self) -> None:
        """Nothing runs between requests."""

    async def stop(self) -> None:
        """Requests in flight finish in their threads."""

    async def recommend(self, user: str | None, history: list[str] | None, k: int,
                        exclude_seen: bool) -> dict[str, Any]:
        if self._waiting >= self.max_queue:
            raise APIError(503, f"model '{self.name}' has {self.max_queue} requests waiting; "
                           "retry later", code="overloaded", headers=retry_after(1))
        self._waiting += 1
        self.metrics.queue_depth.labels(self.name).set(self._waiting)
        try:
            return await asyncio.to_thread(self._run, user, history, k, exclude_seen)
        finally:
            self._waiting -= 1
            self.metrics.queue_depth.labels(self.name).set(self._waiting)

    def _run(self, user: str | None, history: list[str] | None, k: int,
             exclude_seen: bool) -> dict[str, Any]:
        with self._lock:
            return self.recommender.recommend(user, history, k, exclude_seen)
