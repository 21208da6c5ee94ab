"""The assistant served: conversations that arrive together are retrieved in one batch.

A worker takes the waiting conversations, up to `max_batch_size` query texts or whatever came
within `max_wait_s`, and answers all their candidate queries with one call of the Assistant in
a thread (one encoder pass, one BM25 look-up each), then reads each conversation's reply from
its rows (tasks/assistant_conversation.py). A conversation that breaks the batch is answered
alone, so it fails only its own request. Past `max_queue` waiting requests a request gets 503.
With a `writer` (assistant.generator, engines/grounded.py) an answered turn's reply is written
from its best passages instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from lmforge.serve.engines.grounded import Writer
from lmforge.serve.errors import APIError, retry_after
from lmforge.serve.metrics import ServeMetrics
from lmforge.tasks.assistant import Assistant
from lmforge.tasks.assistant_conversation import (
    GENERATED_MAX_TOKENS,
    GROUNDING_PASSAGES,
    REPLIES,
    Conversation,
    count_tokens,
    grounded_messages,
    reply,
)

log = logging.getLogger("lmforge.serve")


@dataclass
class Answered:
    reply: dict[str, Any]  # content, citations, confidence, handoff, handoff_reason, language
    prompt_tokens: int  # of the query texts retrieved
    completion_tokens: int  # of the reply's content


@dataclass
class _Job:
    conversation: Conversation
    future: asyncio.Future = field(repr=False)


class AssistantEngine:
    def __init__(self, name: str, assistant: Assistant, max_batch_size: int, max_wait_s: float,
                 max_queue: int, metrics: ServeMetrics, writer: Writer | None = None) -> None:
        self.name, self.assistant, self.writer = name, assistant, writer
        self.max_batch_size, self.max_wait_s, self.max_queue = max_batch_size, max_wait_s, max_queue
        self.metrics = metrics
        replies = [*assistant.kb.answers, *(t for kind in REPLIES.values() for t in kind.values())]
        # the longest reply, which a quota holds for a call before its reply is known
        self.max_reply_tokens = max(count_tokens(assistant, replies))
        if writer is not None:
            self.max_reply_tokens = max(self.max_reply_tokens, GENERATED_MAX_TOKENS)
        self._passages = dict(zip(assistant.kb.answer_ids, assistant.kb.answers, strict=True))
        self._waiting: deque[_Job] = deque()
        self._wakeup = asyncio.Event()
        self._worker: asyncio.Task | None = None

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._run())
        if self.writer is not None:
            self.writer.start()

    async def stop(self) -> None:
        if self.writer is not None:
            await self.writer.stop()
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker

    def prompt_tokens(self, conversation: Conversation) -> int:
        return sum(count_tokens(self.assistant, conversation.texts()))

    async def answer(self, conversation: Conversation) -> Answered:
        """The conversation's reply, once its batch has run; 503 when the queue is full."""
        if len(self._waiting) >= self.max_queue:
            raise APIError(503, f"model '{self.name}' has {self.max_queue} requests waiting; "
                           "retry later", code="overloaded", headers=retry_after(1))
        job = _Job(conversation, asyncio.get_running_loop().create_future())
        self._waiting.append(job)
        self.metrics.queue_depth.labels(self.name).set(len(self._waiting))
        self._wakeup.set()
        return await job.future  # a cancelled wait (timeout, client gone) cancels the job

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if self.max_wait_s > 0 and self._texts_waiting() < self.max_batch_size:
                await asyncio.sleep(self.max_wait_s)  # let the batch fill up
            batch = self._take_batch()
            if self._waiting:
                self._wakeup.set()
            if batch:
                results = await asyncio.to_thread(self._answer_isolating, batch)
                for job, result in zip(batch, results, strict=True):
                    if job.future.done():
                        continue  # its client stopped waiting
                    if isinstance(result, Exception):
                        job.future.set_exception(result)
                    else:
                        job.future.set_result(result)

    async def ground(self, messages: list[dict[str, str]], answered: Answered, seconds: float
                     ) -> bool:
        """With a writer, replace an answered turn's reply by one written from its best
        passages (within `seconds`); whether it did. Raises the writer's 502/503."""
        if self.writer is None or not answered.reply["answered"]:
            return False
        cited = answered.reply["citations"][:GROUNDING_PASSAGES]
        passages = [self._passages[c] for c in cited if c in self._passages]
        content = await self.writer.write(grounded_messages(messages, passages), seconds)
        (answered.completion_tokens,) = count_tokens(self.assistant, [content])
        answered.reply["content"] = content
        return True

    def _texts_waiting(self) -> int:
        return sum(len(job.conversation.texts()) for job in self._waiting)

    def _take_batch(self) -> list[_Job]:
        batch, n_texts = [], 0
        while self._waiting:
            size = len(self._waiting[0].conversation.texts())
            if batch and n_texts + size > self.max_batch_size:
                break
            job = self._waiting.popleft()
            if not job.future.cancelled():
                batch.append(job)
                n_texts += size
        self.metrics.queue_depth.labels(self.name).set(len(self._waiting))
        if n_texts:
            self.metrics.batch_size.labels(self.name).observe(n_texts)
        return batch

    def _answer_isolating(self, batch: list[_Job]) -> list[Answered | Exception]:
        """Runs in a thread: the batch in one call, or, if that raises, each job alone."""
        try:
            return self._answer(batch)
        except Exception:
            if len(batch) == 1:
                log.exception("the assistant '%s' failed; one request gets a 500", self.name)
                return [APIError(500, "the assistant failed on this request; retry it",
                                 code="server_error")]
        return [result for job in batch for result in self._answer_isolating([job])]

    def _answer(self, batch: list[_Job]) -> list[Answered | Exception]:
        texts = [text for job in batch for text in job.conversation.texts()]
        rows = self.assistant.answer(texts)
        tokens = count_tokens(self.assistant, texts)
        out: list[Answered | Exception] = []
        start = 0
        for job in batch:
            end = start + len(job.conversation.texts())
            answered = reply(self.assistant, job.conversation, rows[start:end])
            (reply_tokens,) = count_tokens(self.assistant, [answered["content"]])
            out.append(Answered(answered, sum(tokens[start:end]), reply_tokens))
            start = end
        return out
