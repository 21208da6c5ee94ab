"""POST /v1/completions and /v1/chat/completions in the OpenAI shape: generation models only.

The request schemas, the max_tokens cap, the model look-up and the metering are here; the
generation engine (decoding, streaming as server-sent events) plugs in where the 501 is raised.
A classification model named here gets a 400 that points at /v1/classify.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from lmforge.serve.auth import Caller, LimitedCaller, require_key
from lmforge.serve.calls import MeteredCall
from lmforge.serve.errors import APIError
from lmforge.serve.state import ServerState, get_state

router = APIRouter(prefix="/v1", tags=["generation"], dependencies=[Depends(require_key)])


class _GenerationRequest(BaseModel):
    # Other OpenAI parameters (temperature, top_p, stop, ...) pass through to the engine.
    model_config = ConfigDict(extra="allow", protected_namespaces=())

    model: str = Field(max_length=128)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stream: bool = False

    def token_budget(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_GenerationRequest):
    prompt: str | list[str]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatCompletionRequest(_GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1)


async def _generate(
    state: ServerState, caller: Caller, endpoint: str, body: _GenerationRequest
) -> dict:
    async with MeteredCall(state.usage, caller.key_name, endpoint, body.model):
        budget, cap = body.token_budget(), state.settings.max_tokens_cap
        if budget is not None and budget > cap:
            param = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
            raise APIError(
                422,
                f"{param} is {budget}, above this server's cap of {cap}",
                param=param,
                code="max_tokens_too_large",
            )
        state.models.require(body.model, "generation")
        raise APIError(501, "generation is not served yet", code="not_implemented")


@router.post("/completions")
async def completions(body: CompletionRequest, request: Request, caller: LimitedCaller) -> dict:
    return await _generate(get_state(request), caller, "completions", body)


@router.post("/chat/completions")
async def chat_completions(
    body: ChatCompletionRequest, request: Request, caller: LimitedCaller
) -> dict:
    return await _generate(get_state(request), caller, "chat.completions", body)
