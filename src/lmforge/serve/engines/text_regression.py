"""A text regression model served through POST /v1/predict: each request's texts go through the
model in a worker thread, one request at a time per model (threaded.py). A text is billed by the
tokens the model reads of it."""

from __future__ import annotations

from typing import Any

from lmforge.serve.engines.threaded import ThreadedEngine
from lmforge.serve.metrics import ServeMetrics
from lmforge.tasks.text_regression import TextRegressor

MAX_CHARS = 100_000  # one text's characters; the model reads at most max_length tokens of it


class TextRegressionEngine(ThreadedEngine):
    def __init__(self, name: str, predictor: TextRegressor, max_queue: int,
                 metrics: ServeMetrics) -> None:
        super().__init__(name, max_queue, metrics)
        self.predictor = predictor

    def row_problem(self, row: Any) -> str | None:
        """Why an input is no text this model can read, or None."""
        if not isinstance(row, str):
            return f"must be a text (a JSON string), not {type(row).__name__}"
        if len(row) > MAX_CHARS:
            return f"is {len(row):,} characters; send at most {MAX_CHARS:,}"
        try:
            row.encode("utf-8")
        except UnicodeEncodeError as error:  # JSON can escape a lone surrogate
            return f"holds a lone surrogate at character {error.start}, which is not text"
        return None

    def billed(self, texts: list[str]) -> int:
        """The tokens the model reads of these texts (at most max_length each)."""
        return sum(len(ids) for ids in self.predictor.encode(texts).ids)

    async def predict(self, texts: list[str]) -> list[dict[str, Any]]:
        rows = await self.run(self.predictor.predict, texts)
        return [{"value": row["value"]} for row in rows]
