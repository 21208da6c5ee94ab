"""Metering: one usage record per model call, the quota period, and the bill-ready summary.

A key's quota counts prompt + completion tokens in the current calendar month (UTC); it starts
again on the 1st, which is what a 429's Retry-After points at.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime

from sqlalchemy import Engine, case, func, insert, select
from sqlalchemy.orm import Session

from lmforge.serve.db import UsageRecord, utcnow

ANONYMOUS = "anonymous"  # the key name that calls are metered under with --no-auth


@dataclass(frozen=True)
class Call:
    key_name: str
    model: str
    endpoint: str
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    status: int


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
    """Write records in one transaction (one commit for a whole group of calls)."""
    now = utcnow()
    with engine.begin() as connection:
        connection.execute(insert(UsageRecord), [{**asdict(c), "created_at": now} for c in calls])


def period_start(now: datetime) -> datetime:
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def next_period_start(now: datetime) -> datetime:
    start = period_start(now)
    return (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )


def tokens_used(engine: Engine, key_name: str, since: datetime) -> int:
    total = UsageRecord.prompt_tokens + UsageRecord.completion_tokens
    query = select(func.coalesce(func.sum(total), 0)).where(
        UsageRecord.key_name == key_name, UsageRecord.created_at >= since
    )
    with Session(engine) as session:
        return int(session.scalar(query) or 0)


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
