"""POST /v1/classify: label, score and probabilities per input, through the model's batcher."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from lmforge.serve.auth import LimitedCaller, require_key
from lmforge.serve.batching import QueueFull, TooLong
from lmforge.serve.calls import MeteredCall
from lmforge.serve.errors import APIError
from lmforge.serve.state import get_state

MAX_INPUTS = 2048  # texts per request, so that one request cannot hold a model for long

router = APIRouter(prefix="/v1", tags=["classification"], dependencies=[Depends(require_key)])


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field(max_length=128, description="A served model's name (GET /v1/models).")
    input: str | list[str] = Field(description="One text, or a list of texts.")
    truncate: bool = Field(False, description="Cut texts longer than the model's max length.")


@router.post("/classify")
async def classify(body: ClassifyRequest, request: Request, caller: LimitedCaller) -> dict:
    state = get_state(request)
    texts = [body.input] if isinstance(body.input, str) else body.input
    if not texts or len(texts) > MAX_INPUTS:
        raise APIError(
            422,
            f"input has {len(texts)} texts; send 1 to {MAX_INPUTS} per request",
            code="invalid_request",
            param="input",
        )
    async with MeteredCall(state.usage, caller.key_name, "classify", body.model) as call:
        served = state.models.require(body.model, "classification")
        try:
            result = await asyncio.wait_for(
                served.engine.classify(texts, body.truncate), state.settings.timeout_s
            )
        except QueueFull as error:
            raise APIError(
                503, f"{error}; retry shortly", code="overloaded", headers={"Retry-After": "1"}
            ) from None
        except TooLong as error:
            raise APIError(422, str(error), code="context_length_exceeded", param="input") from None
        except TimeoutError:
            raise APIError(
                504,
                f"the request did not finish within the server's {state.settings.timeout_s}s",
                code="timeout",
            ) from None
        call.prompt_tokens = sum(result.prompt_tokens)
    state.metrics.tokens.labels(served.name, "in").inc(call.prompt_tokens)
    data = [
        {"object": "classification", "index": i, **row, "truncated": truncated}
        for i, (row, truncated) in enumerate(zip(result.rows, result.truncated, strict=True))
    ]
    usage = {"prompt_tokens": call.prompt_tokens, "completion_tokens": 0}
    usage["total_tokens"] = call.prompt_tokens
    return {"object": "list", "model": served.name, "data": data, "usage": usage}
