"""POST /v1/completions and /v1/chat/completions in the OpenAI shape: generation models only.

Non-streamed, the reply holds the whole text; with "stream": true it comes as server-sent
events, one chunk per piece of text, then a chunk with only "usage" (as OpenAI sends for
stream_options.include_usage; on unless that is false), then `data: [DONE]`. A client that
disconnects stops its generation (a 499); streamed, it is billed for the tokens it was sent.
Besides OpenAI's temperature, top_p, stop and seed, a request may set top_k, repetition_penalty
and truncate. A classification model named here gets a 400 that points at /v1/classify; an
assistant model's chat is answered by routers/assistant.py.

Sampling values have the ranges of the bundle's `generate` config (GenerateConfig), so the
server, `lmforge generate` and the Python API take the same ones: temperature 0 to 2, top_p
above 0 up to 1, top_k 0 to 1,000,000, repetition_penalty 0.01 to 10, seed 0 to 2^63 - 1, at
most 4 stop strings of at most 256 characters. Text (prompts, chat roles and contents, stop
strings) must be valid Unicode: a lone surrogate such as "\\ud800" is refused. A value out of
range is a 422 whose `param` names it.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from lmforge.config import GenerateConfig, generate_settings
from lmforge.decoding import StreamEvent
from lmforge.serve.billing.access import Caller, LimitedCaller, require_key
from lmforge.serve.billing.metered import MeteredCall
from lmforge.serve.errors import APIError
from lmforge.serve.routers import assistant
from lmforge.serve.state import ServerState, get_state

T = TypeVar("T")

router = APIRouter(prefix="/v1", tags=["generation"], dependencies=[Depends(require_key)])


DISCONNECT_POLL_S = 0.1  # how often a non-streamed request checks that its client is there


def _encodable(text: str) -> str:
    """`text`, if it is valid Unicode (JSON can carry a lone surrogate, "\\ud800", which no
    tokenizer takes)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(f"not valid text: {error.reason} at character {error.start}") from None
    return text


Text = Annotated[str, AfterValidator(_encodable)]


def _setting(name: str) -> Any:
    """The type of GenerateConfig's field `name`, with its bounds, or None (the bundle's
    default)."""
    field = GenerateConfig.model_fields[name]
    return Annotated[(field.annotation, *field.metadata)] | None


class StreamOptions(BaseModel):
    include_usage: bool = True


class _GenerationRequest(BaseModel):
    # Other OpenAI parameters (frequency_penalty, user, ...) are accepted and ignored.
    model_config = ConfigDict(extra="allow", protected_namespaces=())

    model: Text = Field(max_length=128)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1, description="One choice per prompt.")
    temperature: _setting("temperature") = None
    top_p: _setting("top_p") = None
    top_k: _setting("top_k") = None
    repetition_penalty: _setting("repetition_penalty") = None
    stop: _setting("stop") = None  # one string or a list, as OpenAI takes it
    seed: _setting("seed") = None
    truncate: bool = False

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_as_list(cls, stop: Any) -> Any:
        return [stop] if isinstance(stop, str) else stop

    def token_budget(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def settings(self, max_new_tokens: int) -> GenerateConfig:
        """The sampling settings the request sets (the bundle's defaults fill in the rest)."""
        sampling = GenerateConfig.model_fields.keys() - {"max_new_tokens"}
        return generate_settings(max_new_tokens=max_new_tokens, **self.model_dump(include=sampling))


class CompletionRequest(_GenerationRequest):
    prompt: str | list[str]

    @field_validator("prompt")
    @classmethod
    def _prompt_is_text(cls, prompt: str | list[str]) -> str | list[str]:
        for text in [prompt] if isinstance(prompt, str) else prompt:
            _encodable(text)
        return prompt


class TextPart(BaseModel):
    """A part of a message's content: text is the only kind a language model takes."""

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Text
    content: str | list[TextPart] | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _text_only(cls, content: Any) -> Any:
        # One clear error that names the content (a part that is not text, an image say, or
        # text that is not valid), rather than pydantic's for each shape it could have had.
        if isinstance(content, str):
            _encodable(content)
        for i, part in enumerate(content if isinstance(content, list) else []):
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            if kind != "text":
                raise ValueError(f"part {i} is of type {kind!r}; only \"text\" parts are taken")
            if not isinstance(part.get("text"), str):
                raise ValueError(f"part {i} has no \"text\" string")
            _encodable(part["text"])
        return content

    def text(self) -> str:
        """The content as text: a list of parts is their texts, joined."""
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
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


def _tally(call: MeteredCall, completion: dict[int, int], event: StreamEvent) -> None:
    """Note an event's completion tokens (per prompt) and the call's total."""
    completion[event.index] = event.completion_tokens
    call.completion_tokens = sum(completion.values())


def _usage(call: MeteredCall) -> dict:
    p, c = call.prompt_tokens, call.completion_tokens
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


async def _generate(
    request: Request, caller: Caller, endpoint: str, body: _GenerationRequest, prompts: Any
) -> dict | StreamingResponse:
    """`prompts(engine)` gives the prompt texts once the model is known."""
    state = get_state(request)
    async with state.metered(caller, endpoint, body.model) as call:
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
        settings = body.settings(budget or min(engine.default_max_tokens, cap))
        deadline = _Deadline(state.settings.timeout_s)
        chat = endpoint == "chat.completions"  # its prompts are conversations
        job = await deadline.run(engine.prepare(prompts(engine), settings, body.truncate, chat))
        call.prompt_tokens = sum(len(ids) for ids in job.prompts)
        # the most the call can cost, held against the key's quota before it joins the batch
        await call.reserve(call.prompt_tokens + job.max_new_tokens * len(job.prompts))
        events = engine.stream(job)
        shape = _Shape(endpoint, served.name)
        count_tokens = partial(_count_tokens, state, served.name)
        if body.stream:
            try:  # a failure before the first token is a plain error reply
                first = await deadline.run(_unless_gone(request, anext(events)))
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
        reply = await deadline.run(_unless_gone(request, _collect(call, shape, events)))
    count_tokens(call)
    return reply


async def _unless_gone(request: Request, work: Awaitable[T]) -> T:
    """`work`'s result, or a 499 once the client has disconnected (checked every
    DISCONNECT_POLL_S): the work is cancelled, which takes its generation out of the batch."""
    task = asyncio.ensure_future(work)
    try:
        while not task.done():
            await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if not task.done() and await request.is_disconnected():
                raise APIError(499, "the client closed the connection", code="client_closed")
        return task.result()
    finally:
        if not task.done():  # the client left, or the deadline passed
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)  # its generation closes


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
    completion: dict[int, int] = {}
    try:
        async for event in events:
            texts[event.index] = texts.get(event.index, "") + event.text
            reasons[event.index] = event.finish_reason or ""
            _tally(call, completion, event)
    finally:
        await events.aclose()
    order = sorted(texts)
    return shape.reply([texts[i] for i in order], [reasons[i] for i in order], _usage(call))


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
    completion: dict[int, int] = {}
    started: set[int] = set()
    event: StreamEvent | None = first
    try:
        while event is not None:
            yield shape.chunk(event, event.index not in started)
            started.add(event.index)
            _tally(call, completion, event)
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
        yield shape.usage_chunk(_usage(call))
    yield "data: [DONE]\n\n"


def _count_tokens(state: ServerState, model: str, call: MeteredCall) -> None:
    state.metrics.tokens.labels(model, "in").inc(call.prompt_tokens)
    state.metrics.tokens.labels(model, "out").inc(call.completion_tokens)


@router.post("/completions", response_model=None)
async def completions(
    body: CompletionRequest, request: Request, caller: LimitedCaller
) -> dict | StreamingResponse:
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    return await _generate(request, caller, "completions", body, lambda _: prompts)


@router.post("/chat/completions", response_model=None)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, caller: LimitedCaller
) -> dict | StreamingResponse:
    if assistant.serves(request, body.model):
        return await assistant.assistant_chat(body, request, caller)
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    return await _generate(
        request, caller, "chat.completions", body, lambda engine: [messages]
    )
