"""POST /v1/completions and /v1/chat/completions in the OpenAI shape: generation models only.

Non-streamed, the reply holds the whole text; with "stream": true it comes as server-sent
events, one chunk per piece of text, then a chunk with only "usage" (as OpenAI sends for
stream_options.include_usage; on unless that is false), then `data: [DONE]`. A client that
disconnects stops its generation and is billed for the tokens it was sent. Besides OpenAI's
temperature, top_p, stop and seed, a request may set top_k, repetition_penalty and truncate.
A classification model named here gets a 400 that points at /v1/classify.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any, TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from lmforge.bundle import StreamEvent
from lmforge.serve.auth import Caller, LimitedCaller, require_key
from lmforge.serve.calls import MeteredCall
from lmforge.serve.errors import APIError
from lmforge.serve.state import ServerState, get_state

T = TypeVar("T")

router = APIRouter(prefix="/v1", tags=["generation"], dependencies=[Depends(require_key)])


class StreamOptions(BaseModel):
    include_usage: bool = True


class _GenerationRequest(BaseModel):
    # Other OpenAI parameters (frequency_penalty, user, ...) are accepted and ignored.
    model_config = ConfigDict(extra="allow", protected_namespaces=())

    model: str = Field(max_length=128)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1, description="One choice per prompt.")
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    truncate: bool = False

    def token_budget(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def options(self, max_new_tokens: int) -> dict[str, Any]:
        """The Generator's arguments (None: the bundle's default)."""
        return {
            "max_new_tokens": max_new_tokens,
            "temperature": self.temperature,
            "top_k": self.top_k,
            "top_p": self.top_p,
            "repetition_penalty": self.repetition_penalty,
            "stop": [self.stop] if isinstance(self.stop, str) else self.stop,
            "seed": self.seed,
            "truncate": self.truncate,
        }


class CompletionRequest(_GenerationRequest):
    prompt: str | list[str]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        """The content as text: a list of parts contributes its "text" parts."""
        if isinstance(self.content, list):
            return "".join(part.get("text", "") for part in self.content)
        return self.content or ""


class ChatCompletionRequest(_GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1)


class _Shape:
    """How one endpoint writes its replies and chunks (OpenAI's completion or chat shape)."""

    def __init__(self, endpoint: str, model: str) -> None:
        self.chat = endpoint == "chat.completions"
        self.endpoint, self.model, self.created = endpoint, model, int(time.time())
        self.id = ("chatcmpl-" if self.chat else "cmpl-") + uuid.uuid4().hex[:24]

    def _envelope(self, kind: str, choices: list[dict], usage: dict | None) -> dict:
        out = {"id": self.id, "object": kind, "created": self.created, "model": self.model}
        return {**out, "choices": choices, **({"usage": usage} if usage is not None else {})}

    def reply(self, texts: list[str], reasons: list[str], usage: dict) -> dict:
        if self.chat:
            choices = [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": reason,
                    "logprobs": None,
                }
                for i, (text, reason) in enumerate(zip(texts, reasons, strict=True))
            ]
            return self._envelope("chat.completion", choices, usage)
        choices = [
            {"index": i, "text": text, "finish_reason": reason, "logprobs": None}
            for i, (text, reason) in enumerate(zip(texts, reasons, strict=True))
        ]
        return self._envelope("text_completion", choices, usage)

    def chunk(self, event: StreamEvent, first: bool) -> str:
        if self.chat:
            delta = (
                {"role": "assistant", "content": event.text} if first else {"content": event.text}
            )
            choice = {"index": event.index, "delta": delta}
            kind = "chat.completion.chunk"
        else:
            choice, kind = {"index": event.index, "text": event.text}, "text_completion"
        choice |= {"finish_reason": event.finish_reason, "logprobs": None}
        return _sse(self._envelope(kind, [choice], None))

    def usage_chunk(self, usage: dict) -> str:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        return _sse(self._envelope(kind, [], usage))


def _sse(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _tally(
    call: MeteredCall, prompt: dict[int, int], completion: dict[int, int], event: StreamEvent
) -> None:
    """Note an event's token counts (per prompt) and the call's totals."""
    prompt[event.index], completion[event.index] = event.prompt_tokens, event.completion_tokens
    call.prompt_tokens, call.completion_tokens = sum(prompt.values()), sum(completion.values())


def _usage(prompt: dict[int, int], completion: dict[int, int]) -> dict:
    p, c = sum(prompt.values()), sum(completion.values())
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


async def _generate(
    state: ServerState, caller: Caller, endpoint: str, body: _GenerationRequest, prompts: Any
) -> dict | StreamingResponse:
    """`prompts(engine)` gives the prompt texts once the model is known."""
    async with MeteredCall(state.usage, caller.key_name, endpoint, body.model) as call:
        budget, cap = body.token_budget(), state.settings.max_tokens_cap
        if budget is not None and budget > cap:
            param = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
            raise APIError(
                422,
                f"{param} is {budget}, above this server's cap of {cap}",
                param=param,
                code="max_tokens_too_large",
            )
        served = state.models.require(body.model, "generation")
        engine = served.engine
        options = body.options(budget or min(engine.default_max_tokens, cap))
        events = engine.stream(prompts(engine), **options)
        shape = _Shape(endpoint, served.name)
        count_tokens = partial(_count_tokens, state, served.name)
        deadline = _Deadline(state.settings.timeout_s)
        if body.stream:
            try:  # bad options fail here, as a plain error reply
                first = await deadline.run(anext(events))
            except BaseException:
                await events.aclose()
                raise
            call.streaming = True
            include_usage = body.stream_options is None or body.stream_options.include_usage
            return StreamingResponse(
                _stream(call, shape, first, events, include_usage, count_tokens, deadline),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        reply = await deadline.run(_collect(call, shape, events))
    count_tokens(call)
    return reply


class _Deadline:
    """--timeout-s for one request, streamed or not: whatever it awaits past the time is
    cancelled (which takes its generation out of the batch) and becomes a 504."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = asyncio.get_running_loop().time() + seconds

    async def run(self, awaitable: Awaitable[T]) -> T:
        left = self.end - asyncio.get_running_loop().time()
        try:
            return await asyncio.wait_for(awaitable, max(left, 0.0))
        except asyncio.TimeoutError:
            raise self.error() from None

    def error(self) -> APIError:
        return APIError(
            504, f"the request did not finish within the server's {self.seconds:g}s",
            code="timeout",
        )


async def _collect(call: MeteredCall, shape: _Shape, events: AsyncIterator[StreamEvent]) -> dict:
    texts: dict[int, str] = {}
    reasons: dict[int, str] = {}
    prompt: dict[int, int] = {}
    completion: dict[int, int] = {}
    try:
        async for event in events:
            texts[event.index] = texts.get(event.index, "") + event.text
            reasons[event.index] = event.finish_reason or ""
            _tally(call, prompt, completion, event)
    finally:
        await events.aclose()
    order = sorted(texts)
    return shape.reply(
        [texts[i] for i in order], [reasons[i] for i in order], _usage(prompt, completion)
    )


async def _stream(
    call: MeteredCall,
    shape: _Shape,
    first: StreamEvent,
    events: AsyncIterator[StreamEvent],
    include_usage: bool,
    on_end: Callable[[MeteredCall], None],
    deadline: _Deadline,
) -> AsyncIterator[str]:
    """The SSE body. Tokens are counted once their chunk is out (the next one was asked for);
    the call is recorded before the closing chunks, so a client that has read them all sees
    its usage exact. Past the deadline the stream ends with an error event (the openai client
    raises it) and the call is recorded as a 504, billed for what was sent."""
    prompt: dict[int, int] = {}
    completion: dict[int, int] = {}
    started: set[int] = set()
    event: StreamEvent | None = first
    try:
        while event is not None:
            yield shape.chunk(event, event.index not in started)
            started.add(event.index)
            _tally(call, prompt, completion, event)
            event = await deadline.run(anext(events, None))
    except APIError as error:  # the deadline: the response has begun, so it ends in-band
        await events.aclose()
        on_end(call)
        await call.finish(error)
        yield _sse(error.body())
        return
    except BaseException as error:
        await events.aclose()
        on_end(call)
        await call.finish(error)
        raise
    on_end(call)
    await call.finish(None)
    if include_usage:
        yield shape.usage_chunk(_usage(prompt, completion))
    yield "data: [DONE]\n\n"


def _count_tokens(state: ServerState, model: str, call: MeteredCall) -> None:
    state.metrics.tokens.labels(model, "in").inc(call.prompt_tokens)
    state.metrics.tokens.labels(model, "out").inc(call.completion_tokens)


@router.post("/completions", response_model=None)
async def completions(
    body: CompletionRequest, request: Request, caller: LimitedCaller
) -> dict | StreamingResponse:
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    return await _generate(get_state(request), caller, "completions", body, lambda _: prompts)


@router.post("/chat/completions", response_model=None)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, caller: LimitedCaller
) -> dict | StreamingResponse:
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    return await _generate(
        get_state(request),
        caller,
        "chat.completions",
        body,
        lambda engine: [engine.render_chat(messages)],
    )
