"""POST /v1/chat/completions for an assistant model: the route is completions.py's, which hands
the request here when its model is an assistant.

The reply has OpenAI's chat shape, its message content the knowledge base's answer verbatim (or
the rephrase or handoff reply, in the user's language), and beside the message an extension
object "assistant": {"citations", "confidence", "handoff", "handoff_reason", "generated"}.
With assistant.generator, an answered turn's content is written by the generator from the best
passages (engines/grounded.py; an upstream down or slow is a 502 or 503 within the timeout,
recorded like any call), and "generated" is true. Streamed, the
whole reply comes as one chunk (the extension beside its delta), then the usage chunk, then
`data: [DONE]`. Usage counts the tokens of the texts retrieved (prompt) and of the reply
(completion), by the encoder's tokenizer. Sampling parameters are accepted and ignored: nothing
is sampled. A handed-off conversation is written to the handoff queue (`lmforge handoffs`);
with --log-conversations every conversation is logged. Both are stored masked.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from fastapi import Request
from fastapi.responses import StreamingResponse
from sqlalchemy import Engine

from lmforge.serve.billing.access import Caller
from lmforge.serve.billing.metered import MeteredCall
from lmforge.serve.conversations import record_conversation, record_handoff
from lmforge.serve.engines.assistant import Answered
from lmforge.serve.errors import APIError
from lmforge.serve.metrics import ServeMetrics
from lmforge.serve.state import get_state
from lmforge.tasks.assistant_conversation import ConversationError, masked, read_conversation

if TYPE_CHECKING:
    from lmforge.serve.routers.completions import ChatCompletionRequest


def serves(request: Request, model: str) -> bool:
    """Whether `model` is an assistant served here (an unknown name is completions.py's 404)."""
    return any(m.name == model and m.task == "assistant" for m in get_state(request).models)


async def assistant_chat(body: ChatCompletionRequest, request: Request, caller: Caller
                         ) -> dict | StreamingResponse:
    state = get_state(request)
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    async with state.metered(caller, "chat.completions", body.model) as call:
        served = state.models.require(body.model, "assistant")
        engine = served.engine
        try:
            conversation = read_conversation(messages, engine.assistant)
        except ConversationError as error:
            raise APIError(422, str(error), code=error.code, param=error.param) from None
        if call.quota_tokens is not None:  # the most the call can cost, held first
            prompt = await asyncio.to_thread(engine.prompt_tokens, conversation)
            await call.reserve(prompt + engine.max_reply_tokens)
        timeout_s = state.settings.timeout_s
        end = time.monotonic() + timeout_s
        try:
            answered = await asyncio.wait_for(engine.answer(conversation), timeout_s)
        except TimeoutError:
            raise APIError(504, f"the request did not finish within the server's {timeout_s:g}s",
                           code="timeout") from None
        call.prompt_tokens = answered.prompt_tokens
        # a generator gets what is left of the timeout, less a margin to answer its failure
        generated = await engine.ground(messages, answered, max(end - time.monotonic() - 0.05,
                                                                0.01))
        log_all = state.settings.log_conversations
        if answered.reply["handoff"] or log_all:
            await asyncio.to_thread(_keep, state.db, log_all, caller.key_name, served.name,
                                    messages, answered.reply)
        reply = _Reply(served.name, answered, generated)
        if body.stream:
            call.streaming = True
            include_usage = body.stream_options is None or body.stream_options.include_usage
            return StreamingResponse(_stream(call, reply, include_usage, state.metrics),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        call.completion_tokens = answered.completion_tokens
    _count_tokens(state.metrics, call)
    return reply.whole(_usage(call))


def _keep(db: Engine, log_all: bool, key_name: str, model: str,
          messages: list[dict[str, str]], said: dict[str, Any]) -> None:
    """In a thread: the handoff queue's row, and with --log-conversations (`log_all`) the log's,
    of the conversation with the reply after it, masked."""
    conversation = masked([*messages, {"role": "assistant", "content": said["content"]}])
    if said["handoff"]:
        record_handoff(db, key_name, model, said["handoff_reason"], conversation)
    if log_all:
        record_conversation(db, key_name, model, conversation, said)


class _Reply:
    """The reply in OpenAI's chat shape, whole or as stream chunks."""

    def __init__(self, model: str, answered: Answered, generated: bool) -> None:
        self.model, self.answered, self.generated = model, answered, generated
        self.id, self.created = "chatcmpl-" + uuid.uuid4().hex[:24], int(time.time())

    def extension(self) -> dict[str, Any]:
        said = self.answered.reply
        return {**{key: said[key] for key in ("citations", "confidence", "handoff",
                                              "handoff_reason")}, "generated": self.generated}

    def _envelope(self, kind: str, choices: list[dict], usage: dict | None) -> dict:
        out = {"id": self.id, "object": kind, "created": self.created, "model": self.model,
               "choices": choices}
        return out if usage is None else out | {"usage": usage}

    def whole(self, usage: dict) -> dict:
        message = {"role": "assistant", "content": self.answered.reply["content"]}
        choice = {"index": 0, "message": message, "finish_reason": "stop", "logprobs": None,
                  "assistant": self.extension()}
        return self._envelope("chat.completion", [choice], usage)

    def chunk(self) -> str:
        delta = {"role": "assistant", "content": self.answered.reply["content"]}
        choice = {"index": 0, "delta": delta, "finish_reason": "stop", "logprobs": None,
                  "assistant": self.extension()}
        return _sse(self._envelope("chat.completion.chunk", [choice], None))

    def usage_chunk(self, usage: dict) -> str:
        return _sse(self._envelope("chat.completion.chunk", [], usage))


def _sse(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _usage(call: MeteredCall) -> dict:
    p, c = call.prompt_tokens, call.completion_tokens
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _count_tokens(metrics: ServeMetrics, call: MeteredCall) -> None:
    metrics.tokens.labels(call.model, "in").inc(call.prompt_tokens)
    metrics.tokens.labels(call.model, "out").inc(call.completion_tokens)


async def _stream(call: MeteredCall, reply: _Reply, include_usage: bool, metrics: ServeMetrics
                  ) -> AsyncIterator[str]:
    """The reply's chunk; the call is recorded once it is out (billed for it), before the
    closing chunks, or as a 499 billed for the prompt if the client left first."""
    try:
        yield reply.chunk()
    except BaseException as error:
        await call.finish(error)
        raise
    call.completion_tokens = reply.answered.completion_tokens
    _count_tokens(metrics, call)
    await call.finish(None)
    if include_usage:
        yield reply.usage_chunk(_usage(call))
    yield "data: [DONE]\n\n"
