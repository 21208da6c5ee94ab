"""What the running app holds (settings, database, models, usage writer, caches, metrics, rate
limiter) and the lifespan that loads the models once the server is up and stops it all."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from sqlalchemy import Engine

from lmforge.serve.billing.keys import KeyCache
from lmforge.serve.billing.ledger import TokenLedger
from lmforge.serve.billing.metered import MeteredCall, UsageWriter
from lmforge.serve.limits import RateLimiter
from lmforge.serve.metrics import ServeMetrics
from lmforge.serve.registry import ModelRegistry
from lmforge.serve.settings import ServeSettings

if TYPE_CHECKING:
    from lmforge.serve.billing.access import Caller

log = logging.getLogger("lmforge.serve")


@dataclass
class ServerState:
    settings: ServeSettings
    db: Engine
    models: ModelRegistry
    usage: UsageWriter
    keys: KeyCache
    ledger: TokenLedger
    metrics: ServeMetrics = field(default_factory=ServeMetrics)
    rate_limiter: RateLimiter = field(default_factory=RateLimiter)

    def metered(self, caller: Caller, endpoint: str, model: str) -> MeteredCall:
        """A model call of `caller`'s, recorded however it ends; its quota reservation is
        released by a later server if this one dies, once the call could no longer run."""
        hold_s = 2 * self.settings.timeout_s + 60
        return MeteredCall(self.usage, caller.key_name, endpoint, model, caller.quota_tokens,
                           hold_s)


def get_state(request: Request) -> ServerState:
    return request.app.state.server


async def _load_models(state: ServerState) -> None:
    await asyncio.to_thread(state.models.load_all, state.settings, state.metrics)
    for model in state.models:
        if model.engine is not None:
            model.engine.start()
            log.info("model %s (%s) ready", model.name, model.task)
        else:
            log.error("model %s failed to load: %s", model.name, model.load_error)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Loading runs while the server already answers /healthz; /readyz turns 200 when it is done.
    state: ServerState = app.state.server
    state.usage.start()
    loading = asyncio.create_task(_load_models(state))
    try:
        yield
    finally:
        # uvicorn has drained in-flight requests by now (SIGTERM); the engines can stop.
        loading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loading
        for model in state.models:
            if model.engine is not None:
                await model.engine.stop()
        await state.usage.stop()
        state.db.dispose()
