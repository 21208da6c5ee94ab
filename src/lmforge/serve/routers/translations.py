"""POST /v1/translations: one translation per input, in order, through the model's engine;
billed in tokens (the sources' tokens as the model reads them in, the translations' out)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator

from lmforge.errors import LmforgeError
from lmforge.serve.billing.access import LimitedCaller, require_key
from lmforge.serve.errors import APIError
from lmforge.serve.routers import list_response
from lmforge.serve.routers.classify import ClassifyRequest
from lmforge.serve.state import get_state

MAX_INPUTS = 256  # sentences per request, so that one request cannot hold a model for long
MAX_CHARS = 4096  # characters per sentence (the model reads at most its max_length tokens)
MAX_NEW_TOKENS = 512

router = APIRouter(prefix="/v1", tags=["translation"], dependencies=[Depends(require_key)])


class TranslationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field(max_length=128, description="A served model's name (GET /v1/models).")
    input: str | list[str] = Field(description="One sentence, or a list of sentences.")
    beam_size: int | None = Field(None, ge=1, le=16, description="1 is greedy; default: the "
                                  "bundle's.")
    length_penalty: float | None = Field(None, ge=0, le=5)
    max_new_tokens: int | None = Field(None, ge=1, le=MAX_NEW_TOKENS)
    no_repeat_ngram: int | None = Field(None, ge=0, le=16, description="No n-gram of this many "
                                        "tokens twice in a translation; 0 is off; default: the "
                                        "bundle's.")

    @field_validator("input")
    @classmethod
    def _is_unicode_text(cls, value: str | list[str]) -> str | list[str]:
        return ClassifyRequest._is_unicode_text(value)  # a lone surrogate is not text


@router.post("/translations")
async def translations(body: TranslationRequest, request: Request, caller: LimitedCaller) -> dict:
    state = get_state(request)
    texts = [body.input] if isinstance(body.input, str) else body.input
    if not texts or len(texts) > MAX_INPUTS:
        raise APIError(422, f"input has {len(texts)} sentences; send 1 to {MAX_INPUTS} per "
                       "request", code="invalid_request", param="input")
    longest = max(range(len(texts)), key=lambda i: len(texts[i]))
    if len(texts[longest]) > MAX_CHARS:
        raise APIError(422, f"input[{longest}] has {len(texts[longest])} characters; send at "
                       f"most {MAX_CHARS} per sentence", code="invalid_request", param="input")
    async with state.metered(caller, "translations", body.model) as call:
        served = state.models.require(body.model, "translation")
        engine = served.engine
        prompt_tokens = sum(await asyncio.to_thread(engine.count_tokens, texts))
        most = body.max_new_tokens or engine.translator.defaults.get("max_new_tokens", 128)
        await call.reserve(prompt_tokens + len(texts) * min(most, engine.translator.max_length))
        try:
            done = await asyncio.wait_for(
                engine.translate(texts, body.beam_size, body.length_penalty, body.max_new_tokens,
                                 body.no_repeat_ngram),
                state.settings.timeout_s,
            )
        except LmforgeError as error:
            raise APIError(422, str(error), code="invalid_request") from None
        except TimeoutError:
            raise APIError(504, f"the request did not finish within the server's "
                           f"{state.settings.timeout_s}s", code="timeout") from None
        call.prompt_tokens = prompt_tokens
        call.completion_tokens = sum(t.output_tokens for t in done)
    state.metrics.tokens.labels(served.name, "in").inc(call.prompt_tokens)
    state.metrics.tokens.labels(served.name, "out").inc(call.completion_tokens)
    rows = [{"text": t.text, "finish_reason": "stop" if t.finished else "length"} for t in done]
    return list_response(served.name, "translation", rows, call.prompt_tokens,
                         call.completion_tokens)
