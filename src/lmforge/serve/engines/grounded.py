"""The generators of grounded answers (assistant.generator): a generation bundle served in the
same process, or an OpenAI-compatible upstream. Each writes the reply to grounded messages
(tasks/assistant_conversation.grounded_messages) within the seconds it is given.

An upstream that cannot be reached, fails, or answers something that is not a chat completion
is a 502; one that has not answered when the time is up is a 503: the client hears within the
server's timeout, never waits on a hung upstream.
"""

from __future__ import annotations

import asyncio
import os

import httpx

from lmforge.bundle import Generator
from lmforge.serve.engines.generation import GenerationEngine
from lmforge.serve.errors import APIError, retry_after
from lmforge.tasks.assistant_conversation import GENERATED_MAX_TOKENS

API_KEY_ENV = "LMFORGE_GENERATOR_API_KEY"  # sent as the upstream's bearer key, when set


class UpstreamWriter:
    """POST {url}/chat/completions of an OpenAI-compatible server, greedy, not streamed."""

    def __init__(self, url: str, model: str) -> None:
        self.url, self.model = url.rstrip("/"), model
        self._client: httpx.AsyncClient | None = None

    def start(self) -> None:
        key = os.environ.get(API_KEY_ENV)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._client = httpx.AsyncClient(headers=headers)

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def write(self, messages: list[dict[str, str]], seconds: float) -> str:
        body = {"model": self.model, "messages": messages, "temperature": 0,
                "max_tokens": GENERATED_MAX_TOKENS}
        where = f"the generator upstream {self.url}"
        try:
            response = await asyncio.wait_for(
                self._client.post(f"{self.url}/chat/completions", json=body, timeout=seconds),
                seconds)
        except (TimeoutError, httpx.TimeoutException):
            raise APIError(503, f"{where} did not answer within {seconds:.1f}s; retry later",
                           code="upstream_timeout", headers=retry_after(seconds)) from None
        except httpx.HTTPError as error:
            raise APIError(502, f"{where} cannot be reached ({type(error).__name__})",
                           code="upstream_error") from None
        if response.status_code != 200:
            raise APIError(502, f"{where} answered {response.status_code}",
                           code="upstream_error")
        try:
            content = response.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            content = None
        if not isinstance(content, str):
            raise APIError(502, f"{where} answered something that is not a chat completion",
                           code="upstream_error")
        return content


class BundleWriter:
    """A generation bundle, decoded greedily in its own GenerationEngine (continuous batching
    across the requests that generate at once); the prompt is cut to its context if need be."""

    def __init__(self, engine: GenerationEngine) -> None:
        self.engine = engine
        self.generator: Generator = engine.generator

    def start(self) -> None:
        self.engine.start()

    async def stop(self) -> None:
        await self.engine.stop()

    async def write(self, messages: list[dict[str, str]], seconds: float) -> str:
        settings = self.generator.settings(max_new_tokens=GENERATED_MAX_TOKENS, temperature=0)
        job = await self.engine.prepare([messages], settings, truncate=True, chat=True)
        events = self.engine.stream(job)
        pieces: list[str] = []

        async def collect() -> None:
            async for event in events:
                pieces.append(event.text)

        try:
            await asyncio.wait_for(collect(), seconds)
        except TimeoutError:
            raise APIError(503, f"the generator '{self.engine.name}' did not finish within "
                           f"{seconds:.1f}s; retry later", code="generator_timeout",
                           headers=retry_after(seconds)) from None
        finally:
            await events.aclose()
        return "".join(pieces).strip()


Writer = UpstreamWriter | BundleWriter
