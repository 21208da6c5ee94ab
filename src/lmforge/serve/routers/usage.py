"""GET /v1/usage: the calling key's own usage this month, beside its quota and rate."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from lmforge.serve.billing.access import KeyCaller, require_key
from lmforge.serve.billing.database import utcnow
from lmforge.serve.billing.ledger import current_period
from lmforge.serve.billing.quota import next_period_start, period_start
from lmforge.serve.state import get_state

router = APIRouter(prefix="/v1", tags=["usage"], dependencies=[Depends(require_key)])


@router.get("/usage")
async def own_usage(request: Request, caller: KeyCaller) -> dict:
    state = get_state(request)
    usage = await run_in_threadpool(current_period, state.db, caller.key_name)
    now = utcnow()
    remaining = None
    if caller.quota_tokens is not None:
        remaining = max(0, caller.quota_tokens - usage.total_tokens)
    return {
        "object": "usage",
        "key": caller.key_name,
        "period_start": period_start(now).isoformat() + "Z",
        "period_end": next_period_start(now).isoformat() + "Z",
        "requests": usage.requests,
        "errors": usage.errors,
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "quota_tokens": caller.quota_tokens,
        "remaining_tokens": remaining,
        "rpm": caller.rpm,
    }
