"""A recommender served: each request is ranked in a worker thread, one at a time per model (a
forward pass over a short history is a few milliseconds; the lock keeps requests from competing
for the CPU threads). Past `max_queue` waiting requests a request gets 503."""

from __future__ import annotations

from typing import Any

from lmforge.serve.engines.threaded import ThreadedEngine
from lmforge.serve.metrics import ServeMetrics
from lmforge.tasks.recommendation import Recommender


class RecommendationEngine(ThreadedEngine):
    def __init__(self, name: str, recommender: Recommender, max_queue: int,
                 metrics: ServeMetrics) -> None:
        super().__init__(name, max_queue, metrics)
        self.recommender = recommender

    async def recommend(self, user: str | None, history: list[str] | None, k: int,
                        exclude_seen: bool) -> dict[str, Any]:
        return await self.run(self.recommender.recommend, user, history, k, exclude_seen)
