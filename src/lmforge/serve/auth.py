"""The key check every /v1 router depends on, and the limits (rpm, token quota) of model calls.

Database look-ups run in the thread pool, so they never block the event loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from lmforge.serve.db import utcnow
from lmforge.serve.errors import APIError
from lmforge.serve.metering import ANONYMOUS, next_period_start, period_start
from lmforge.serve.state import get_state


@dataclass(frozen=True)
class Caller:
    key_name: str
    quota_tokens: int | None = None  # per calendar month (UTC); None is unlimited
    rpm: int | None = None


async def require_key(request: Request) -> Caller:
    """401 unless the request carries `Authorization: Bearer <an active key>` (or --no-auth)."""
    state = get_state(request)
    if not state.settings.auth:
        return Caller(ANONYMOUS)
    scheme, _, secret = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise APIError(
            401,
            "no API key: send the header 'Authorization: Bearer <key>' "
            "(create a key with: lmforge keys create NAME)",
            code="missing_api_key",
        )
    key = await state.keys.find(secret.strip())
    if key is None:
        raise APIError(401, "the API key is wrong or revoked", code="invalid_api_key")
    return Caller(key.name, key.quota_tokens, key.rpm)


async def enforce_limits(
    request: Request, caller: Annotated[Caller, Depends(require_key)]
) -> Caller:
    """429 with Retry-After when the key is over its requests per minute or its token quota."""
    state = get_state(request)
    if caller.rpm is not None:
        wait = state.rate_limiter.acquire(caller.key_name, caller.rpm)
        if wait is not None:
            raise APIError(
                429,
                f"rate limit: the key '{caller.key_name}' may make {caller.rpm} requests "
                "per minute",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )
    if caller.quota_tokens is not None:
        now = utcnow()
        used = await state.ledger.used(caller.key_name, period_start(now))
        if used >= caller.quota_tokens:
            wait = (next_period_start(now) - now).total_seconds()
            raise APIError(
                429,
                f"quota: the key '{caller.key_name}' has used {used} of its "
                f"{caller.quota_tokens} tokens this month",
                code="insufficient_quota",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )
    return caller


# What handlers declare: the caller of a key-checked route, or of a rate- and quota-checked one.
KeyCaller = Annotated[Caller, Depends(require_key)]
LimitedCaller = Annotated[Caller, Depends(enforce_limits)]
