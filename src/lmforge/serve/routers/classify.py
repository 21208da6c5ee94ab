"""POST /v1/classify: label, score and probabilities per input, through the model's engine."""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError
from starlette.types import ASGIApp, Receive, Scope, Send

from lmforge.bundle import Predictor
from lmforge.serve.billing.access import LimitedCaller, require_key
from lmforge.serve.engines.classification import UNTRUNCATED, Overloaded, TooLong
from lmforge.serve.errors import APIError, error_response, retry_after
from lmforge.serve.routers import list_response
from lmforge.serve.state import ServerState, get_state

MAX_INPUTS = 2048  # texts per request, so that one request cannot hold a model for long
# Texts per request with "explain": each costs a few dozen forward and backward passes.
MAX_EXPLAINED_INPUTS = 16

router = APIRouter(prefix="/v1", tags=["classification"], dependencies=[Depends(require_key)])


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field(max_length=128, description="A served model's name (GET /v1/models).")
    input: str | list[str] = Field(description="One text, or a list of texts.")
    truncate: bool = Field(False, description="Cut texts longer than the model's max length.")
    explain: bool = Field(
        False, description=f"Add each token's attribution to the label (at most "
        f"{MAX_EXPLAINED_INPUTS} texts per request)."
    )

    @field_validator("input")
    @classmethod
    def _is_unicode_text(cls, value: str | list[str]) -> str | list[str]:
        # JSON can escape a lone UTF-16 surrogate ("\ud800"), which is no character at all.
        for index, text in enumerate([value] if isinstance(value, str) else value):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as error:
                raise PydanticCustomError(
                    "invalid_text",
                    "input[{index}] holds a lone surrogate at character {at}, which is not text; "
                    "send valid Unicode (UTF-8)",
                    {"index": index, "at": error.start},
                ) from None
        return value


def prompt_tokens(predictor: Predictor, texts: list[str]) -> int:
    """The tokens the model will read of these texts (at most max_length each), as billed."""
    counts = [len(ids) for ids in predictor.encode(texts, UNTRUNCATED).ids]
    return sum(min(n, predictor.max_length) for n in counts)


def overloaded_error(error: Overloaded) -> APIError:
    return APIError(
        503, f"{error}; retry later", code="overloaded", headers=retry_after(error.retry_after_s)
    )


def shed_if_overloaded(state: ServerState, model: str, n_texts: int) -> None:
    """503 at once when the model could not answer within the timeout. This runs before any
    database work (the quota's hold, the usage record): under overload a refused call must cost
    next to nothing, or refusing calls becomes the overload. /metrics still counts it."""
    try:
        engine = state.models.require(model, "classification").engine
    except APIError:
        return  # refused, and recorded, in the metered call
    try:
        engine.admit(n_texts, state.settings.timeout_s)
    except Overloaded as error:
        raise overloaded_error(error) from None


class RefuseWhenSaturated:
    """ASGI middleware, the outermost: while every classification model is too busy to take even
    one more text within the timeout, POST /v1/classify gets its 503 `overloaded` at once, before
    the key check, the body or the route. Under overload most requests are refused, and a refusal
    that costs a full request's work takes the event loop from the requests being served, so that
    both wait in the loop before the engine sees them. A model with room, or still loading, lets
    the request through to shed_if_overloaded and the route, which decide as before."""

    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        post = scope["type"] == "http" and scope["method"] == "POST"
        if post and scope["path"] == "/v1/classify":
            refusal = self._refusal()
            if refusal is not None:
                started, error = time.perf_counter(), overloaded_error(refusal)
                response = error_response(503, error.message, error.code, headers=error.headers)
                await response(scope, receive, send)
                metrics = self.state.metrics  # as MetricsMiddleware would count it
                metrics.requests.labels("/v1/classify", "503").inc()
                metrics.latency.labels("/v1/classify").observe(time.perf_counter() - started)
                return
        await self.app(scope, receive, send)

    def _refusal(self) -> Overloaded | None:
        """The refusal a one-text request would meet from every classification model, or None
        if one of them would take it (or is not loaded: the route says so)."""
        timeout_s, refusals = self.state.settings.timeout_s, []
        for model in self.state.models:
            if model.task == "classification":
                refusal = model.engine.refusal(1, timeout_s) if model.engine else None
                if refusal is None:
                    return None
                refusals.append(refusal)
        if len(refusals) > 1:  # the body, unread, would say which one was asked for
            soonest = min(refusal.retry_after_s for refusal in refusals)
            return Overloaded(f"all {len(refusals)} classification models are busy", soonest)
        return refusals[0] if refusals else None


@router.post("/classify")
async def classify(body: ClassifyRequest, request: Request, caller: LimitedCaller) -> dict:
    state = get_state(request)
    if any(model.name == body.model and model.task == "image" for model in state.models):
        return await classify_images(body, state, caller)
    texts = [body.input] if isinstance(body.input, str) else body.input
    if not texts or len(texts) > MAX_INPUTS:
        raise APIError(
            422,
            f"input has {len(texts)} texts; send 1 to {MAX_INPUTS} per request",
            code="invalid_request",
            param="input",
        )
    if body.explain and len(texts) > MAX_EXPLAINED_INPUTS:
        raise APIError(
            422,
            f"input has {len(texts)} texts; with \"explain\": true send 1 to "
            f"{MAX_EXPLAINED_INPUTS} per request",
            code="invalid_request",
            param="input",
        )
    shed_if_overloaded(state, body.model, len(texts))
    async with state.metered(caller, "classify", body.model) as call:
        served = state.models.require(body.model, "classification")
        if call.quota_tokens is not None:  # the quota holds these texts' tokens first
            predictor = served.engine.predictor
            await call.reserve(await asyncio.to_thread(prompt_tokens, predictor, texts))
        try:
            result = await asyncio.wait_for(
                served.engine.classify(
                    texts, body.truncate, state.settings.timeout_s, body.explain
                ),
                state.settings.timeout_s,
            )
        except Overloaded as error:
            raise overloaded_error(error) from None
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
    rows = [{**row, "truncated": truncated}
            for row, truncated in zip(result.rows, result.truncated, strict=True)]
    return list_response(served.name, "classification", rows, call.prompt_tokens)


async def classify_images(body: ClassifyRequest, state: ServerState, caller: LimitedCaller
                          ) -> dict:
    """An image model's /v1/classify: each input an image file, base64-encoded; billed one
    token per image."""
    if body.explain:
        raise APIError(422, '"explain" attributes a text\'s tokens; an image model has none',
                       code="invalid_request", param="explain")
    inputs = [body.input] if isinstance(body.input, str) else body.input
    async with state.metered(caller, "classify", body.model) as call:
        served = state.models.require(body.model, "image")
        blobs = served.engine.blobs(inputs)
        await call.reserve(len(blobs))
        rows = await served.engine.classify(blobs)
        call.prompt_tokens = len(blobs)
    state.metrics.tokens.labels(served.name, "in").inc(call.prompt_tokens)
    return list_response(served.name, "classification", rows, call.prompt_tokens)
