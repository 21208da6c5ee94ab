"""Who may call, and how much: the key check every /v1 router depends on, and what a key is
allowed on model calls (its requests per minute, its token quota). A refused call is recorded
under its key. The rpm window itself is request protection, in serve/limits.py.

Database look-ups run in the thread pool, so they never block the event loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request

from lmforge.serve.billing.database import utcnow
from lmforge.serve.billing.keys import ANONYMOUS
from lmforge.serve.billing.ledger import Call
from lmforge.serve.billing.quota import over_quota, period_start
from lmforge.serve.errors import APIError, retry_after
from lmforge.serve.state import get_state


@dataclass(frozen=True)
class Caller:
    key_name: str
    quota_tokens: int | None = None  # per calendar month (UTC); None is unlimited
    rpm: int | None = None


async def require_key(request: Request) -> Caller:
    """401 unless the request carries `Authorization: Bearer <an active key>` (or --no-auth)."""
    caller = await _find_caller(request)
    request.state.caller = caller  # so that a refused call is recorded under its key
    return caller


async def _find_caller(request: Request) -> Caller:
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
                headers=retry_after(wait),
            )
    if caller.quota_tokens is not None:
        used = await state.ledger.used(caller.key_name, period_start(utcnow()))
        if used >= caller.quota_tokens:
            raise over_quota(caller.key_name, caller.quota_tokens, used)
    return caller


# What handlers declare: the caller of a key-checked route, or of a rate- and quota-checked one.
KeyCaller = Annotated[Caller, Depends(require_key)]
LimitedCaller = Annotated[Caller, Depends(enforce_limits)]


async def record_refused(request: Request, status: int, body: Any) -> None:
    """The app's on_refused hook: a keyed model call refused before it ran (its body failed
    validation or is not JSON, a rate limit) is recorded under its key with its status and no
    tokens, so abuse shows up in usage. A call without a valid key is not recorded."""
    if request.method != "POST":
        return
    caller = getattr(request.state, "caller", None)
    if caller is None:  # the body failed before the key was checked
        try:
            caller = await _find_caller(request)
        except APIError:
            return
    model = body.get("model") if isinstance(body, dict) else None
    call = Call(
        key_name=caller.key_name,
        model=_printable(model[:128]) if isinstance(model, str) else "",
        endpoint=request.url.path.removeprefix("/v1/").replace("/", ".")[:64],
        prompt_tokens=0,
        completion_tokens=0,
        latency_ms=0.0,
        status=status,
    )
    await get_state(request).usage.record(call)


def _printable(text: str) -> str:
    """The text as valid UTF-8 (a lone surrogate becomes U+FFFD), as a database stores it."""
    return text.encode("utf-8", "replace").decode("utf-8")
