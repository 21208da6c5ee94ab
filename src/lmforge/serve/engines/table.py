"""A feature table's model served: each request's rows go through the MLP in a worker thread,
one request at a time per model (a pass over a few rows takes well under a millisecond; the lock
keeps requests from competing for the CPU threads). Past `max_queue` waiting requests a request
gets 503."""

from __future__ import annotations

from typing import Any

from lmforge.serve.engines.threaded import ThreadedEngine
from lmforge.serve.metrics import ServeMetrics
from lmforge.tasks.tabular import TablePredictor


class TableEngine(ThreadedEngine):
    def __init__(self, name: str, predictor: TablePredictor, max_queue: int,
                 metrics: ServeMetrics) -> None:
        super().__init__(name, max_queue, metrics)
        self.predictor = predictor

    def row_problem(self, row: Any) -> str | None:
        """Why a row cannot be read (a feature missing or mistyped, named), or None."""
        return self.predictor.schema.row_problem(row)

    def billed(self, rows: list[dict[str, Any]]) -> int:
        """Each row counts as one token."""
        return len(rows)

    async def predict(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return await self.run(self._predict, rows)

    def _predict(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        predicted = self.predictor.predict(rows)
        self.predictor.schema.take_counts()  # the tallies are training's and predict's
        return predicted
