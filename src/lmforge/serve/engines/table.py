"""A feature table's model served: each request's rows go through the MLP in a worker thread,
one request at a time per model (a pass over a few rows takes well under a millisecond; the lock
keeps requests from competing for the CPU threads). Past `max_queue` waiting requests a request
gets 503."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from lmforge.serve.errors import APIError, retry_after
from lmforge.serve.metrics import ServeMetrics
from lmforge.tasks.tabular import TablePredictor


class TableEngine:
    def __init__(self, name: str, predictor: TablePredictor, max_queue: int,
                 metrics: ServeMetrics) -> None:
        self.name, self.predictor = name, predictor
        self.max_queue, self.metrics = max_queue, metrics
        self._lock = threading.Lock()
        self._waiting = 0

    def start(self) -> None:
        """Nothing runs between requests."""

    async def stop(self) -> None:
        """Requests in flight finish in their threads."""

    def row_problem(self, row: Any) -> str | None:
        """Why a row cannot be read (a feature missing or mistyped, named), or None."""
        return self.predictor.schema.row_problem(row)

    async def predict(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if self._waiting >= self.max_queue:
            raise APIError(503, f"model '{self.name}' has {self.max_queue} requests waiting; "
                           "retry later", code="overloaded", headers=retry_after(1))
        self._waiting += 1
        self.metrics.queue_depth.labels(self.name).set(self._waiting)
        try:
            return await asyncio.to_thread(self._run, rows)
        finally:
            self._waiting -= 1
            self.metrics.queue_depth.labels(self.name).set(self._waiting)

    def _run(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        with self._lock:
            predicted = self.predictor.predict(rows)
            self.predictor.schema.take_counts()  # the tallies are training's and predict's
            return predicted
