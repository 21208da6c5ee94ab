"""POST /v1/predict: a feature table's model on rows sent as JSON objects (feature -> value):
a label, its score and probabilities per row, or a value (regression), billed per row; and a
text regression model on texts: a value per text, billed by the tokens it reads."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from lmforge.serve.billing.access import LimitedCaller, require_key
from lmforge.serve.errors import APIError
from lmforge.serve.routers import list_response
from lmforge.serve.state import get_state

MAX_ROWS = 2048  # rows per request

router = APIRouter(prefix="/v1", tags=["tables"], dependencies=[Depends(require_key)])


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field(max_length=128, description="A served model's name (GET /v1/models).")
    input: dict[str, Any] | str | list[Any] = Field(
        description="One row (an object of feature values; null is a missing value), or a "
        "list of rows; for a text regression model, one text or a list of texts.")


@router.post("/predict")
async def predict(body: PredictRequest, request: Request, caller: LimitedCaller) -> dict:
    state = get_state(request)
    rows = body.input if isinstance(body.input, list) else [body.input]
    if not rows or len(rows) > MAX_ROWS:
        raise APIError(422, f"input has {len(rows)} rows; send 1 to {MAX_ROWS} per request",
                       code="invalid_request", param="input")
    async with state.metered(caller, "predict", body.model) as call:
        kind = "regression" if state.models.get(body.model).task == "regression" else "table"
        served = state.models.require(body.model, kind)
        for index, row in enumerate(rows):
            problem = served.engine.row_problem(row)
            if problem is not None:
                raise APIError(422, f"input[{index}]: {problem}", code="invalid_request",
                               param=f"input[{index}]")
        billed = served.engine.billed(rows)
        await call.reserve(billed)
        predicted = await served.engine.predict(rows)
        call.prompt_tokens = billed
    state.metrics.tokens.labels(served.name, "in").inc(call.prompt_tokens)
    return list_response(served.name, "prediction", predicted, call.prompt_tokens)
