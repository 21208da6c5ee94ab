"""What was used: one usage record per model call, written in the transaction that settles its
quota reservation; the tokens a key used this period (read through a short cache by the
server); and the bill-ready summary per key that `lmforge usage` prints.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from datetime import datetime

from sqlalchemy import Engine, case, func, insert, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from lmforge.serve.billing.database import UsageRecord, utcnow
from lmforge.serve.billing.quota import period_start, settle


@dataclass(frozen=True)
class Call:
    key_name: str
    model: str
    endpoint: str
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    status: int
    reservation: int | None = None  # the QuotaReservation this call settles

    def record(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "reservation"}


@dataclass
class KeyUsage:
    key: str
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    first: str | None
    last: str | None

    def as_dict(self) -> dict:
        return asdict(self)


def record_calls(engine: Engine, calls: list[Call]) -> None:
    """Write records in one transaction (one commit for a whole group of calls), settling
    their reservations: what a call held is released and what it used is counted."""
    now = utcnow()
    used: dict[str, int] = {}
    for call in calls:
        tokens = call.prompt_tokens + call.completion_tokens
        used[call.key_name] = used.get(call.key_name, 0) + tokens
    reservations = [call.reservation for call in calls if call.reservation is not None]
    with engine.begin() as connection:
        connection.execute(insert(UsageRecord), [{**c.record(), "created_at": now} for c in calls])
        settle(connection, period_start(now), reservations, used)


def tokens_used(engine: Engine, key_name: str, since: datetime) -> int:
    total = UsageRecord.prompt_tokens + UsageRecord.completion_tokens
    query = select(func.coalesce(func.sum(total), 0)).where(
        UsageRecord.key_name == key_name, UsageRecord.created_at >= since
    )
    with Session(engine) as session:
        return int(session.scalar(query) or 0)


class TokenLedger:
    """Tokens each key used this period: the database's sum, re-read once older than `ttl_s`,
    plus the tokens of the calls this server recorded since."""

    def __init__(self, engine: Engine, ttl_s: float, clock: Callable[[], float] = time.monotonic):
        self.engine, self.ttl_s, self.clock = engine, ttl_s, clock
        self._used: dict[str, tuple[datetime, int, float]] = {}  # key: (period, tokens, expiry)

    async def used(self, key_name: str, period: datetime) -> int:
        entry = self._used.get(key_name)
        if entry is None or entry[0] != period or entry[2] <= self.clock():
            tokens = await run_in_threadpool(tokens_used, self.engine, key_name, period)
            entry = (period, tokens, self.clock() + self.ttl_s)
            self._used[key_name] = entry
        return entry[1]

    def add(self, calls: list[Call]) -> None:
        """Count calls just committed by this server (keys not looked up yet need nothing)."""
        for call in calls:
            entry = self._used.get(call.key_name)
            if entry is not None:
                tokens = call.prompt_tokens + call.completion_tokens
                self._used[call.key_name] = (entry[0], entry[1] + tokens, entry[2])


def usage_summary(
    engine: Engine, key: str | None = None, since: datetime | None = None
) -> list[KeyUsage]:
    """Requests, errors and tokens per key (all time, or since `since`), sorted by key name."""
    query = select(
        UsageRecord.key_name,
        func.count(),
        func.sum(case((UsageRecord.status >= 400, 1), else_=0)),
        func.sum(UsageRecord.prompt_tokens),
        func.sum(UsageRecord.completion_tokens),
        func.min(UsageRecord.created_at),
        func.max(UsageRecord.created_at),
    ).group_by(UsageRecord.key_name)
    if key is not None:
        query = query.where(UsageRecord.key_name == key)
    if since is not None:
        query = query.where(UsageRecord.created_at >= since)
    with Session(engine) as session:
        rows = session.execute(query.order_by(UsageRecord.key_name)).all()
    summary = []
    for name, requests, errors, prompt, completion, first, last in rows:
        prompt, completion = int(prompt or 0), int(completion or 0)
        summary.append(
            KeyUsage(
                key=name,
                requests=int(requests),
                errors=int(errors or 0),
                prompt_tokens=prompt,
                completion_tokens=completion,
                total_tokens=prompt + completion,
                first=first.isoformat(timespec="seconds") + "Z" if first else None,
                last=last.isoformat(timespec="seconds") + "Z" if last else None,
            )
        )
    if key is not None and not summary:
        summary.append(KeyUsage(key, 0, 0, 0, 0, 0, None, None))
    return summary


def current_period(engine: Engine, key_name: str) -> KeyUsage:
    return usage_summary(engine, key_name, period_start(utcnow()))[0]
