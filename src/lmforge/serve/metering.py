"""Metering: one usage record per model call, quota reservations, the quota period, and the
bill-ready summary.

A key's quota counts prompt + completion tokens in the current calendar month (UTC); it starts
again on the 1st, which is what a 429's Retry-After points at. A call is admitted only if its
largest possible cost (prompt tokens + max_tokens) fits beside what the key has used and what
its calls in flight hold: that cost is reserved in the database when the call is admitted and
settled to the real count in the transaction that writes its usage record.

Billing rule: a client pays for what it received. A streamed reply is billed for the chunks
sent; any other reply for the whole of it when it succeeded, and nothing when it did not. Every
call is recorded with its status either way.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine, case, delete, func, insert, literal, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from lmforge.serve.db import QuotaBalance, QuotaReservation, UsageRecord, utcnow

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
    reservation: int | None = None  # the QuotaReservation this call settles

    def record(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "reservation"}


@dataclass(frozen=True)
class Balance:
    used: int
    reserved: int


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
    with engine.begin() as connection:
        connection.execute(insert(UsageRecord), [{**c.record(), "created_at": now} for c in calls])
        for call in calls:
            if call.reservation is not None:
                _release(connection, call.reservation)
        used: dict[str, int] = {}
        for call in calls:
            used[call.key_name] = (
                used.get(call.key_name, 0) + call.prompt_tokens + call.completion_tokens
            )
        for key_name, tokens in sorted(used.items()):  # one order: no deadlock between servers
            if tokens:
                connection.execute(
                    update(QuotaBalance)
                    .where(QuotaBalance.key_name == key_name,
                           QuotaBalance.period == period_start(now))
                    .values(used=QuotaBalance.used + tokens)
                )


def reserve_tokens(
    engine: Engine, key_name: str, quota: int, tokens: int, hold_s: float
) -> int | Balance:
    """Hold `tokens` of the key's quota for a call in flight: the reservation's id, or, when
    used + reserved + tokens would pass the quota, the balance that refused it. Reservations
    left by a server that died are released first when one is refused."""
    now = utcnow()
    period = period_start(now)
    for attempt in range(2):
        with engine.begin() as connection:
            _open_balance(connection, key_name, period)
            admitted = connection.execute(
                update(QuotaBalance)
                .where(
                    QuotaBalance.key_name == key_name,
                    QuotaBalance.period == period,
                    QuotaBalance.used + QuotaBalance.reserved + tokens <= quota,
                )
                .values(reserved=QuotaBalance.reserved + tokens)
            ).rowcount
            if admitted == 1:
                row = {"key_name": key_name, "period": period, "tokens": tokens,
                       "expires_at": now + timedelta(seconds=hold_s)}
                result = connection.execute(insert(QuotaReservation).values(**row))
                return int(result.inserted_primary_key[0])
            if attempt == 0 and _release_expired(connection, key_name, now):
                continue
            used, reserved = connection.execute(
                select(QuotaBalance.used, QuotaBalance.reserved).where(
                    QuotaBalance.key_name == key_name, QuotaBalance.period == period
                )
            ).one()
            return Balance(int(used), int(reserved))
    raise AssertionError("unreachable")


def _open_balance(connection: Connection, key_name: str, period: datetime) -> None:
    """Make the key's balance row for the period, if missing: used = its records' tokens."""
    total = UsageRecord.prompt_tokens + UsageRecord.completion_tokens
    source = select(
        literal(key_name), literal(period), func.coalesce(func.sum(total), 0), literal(0)
    ).where(UsageRecord.key_name == key_name, UsageRecord.created_at >= period)
    columns = ["key_name", "period", "used", "reserved"]
    exists = select(QuotaBalance.key_name).where(
        QuotaBalance.key_name == key_name, QuotaBalance.period == period
    )
    if connection.execute(exists).first() is not None:
        return
    dialect = connection.dialect.name
    if dialect in ("postgresql", "sqlite"):
        module = postgresql if dialect == "postgresql" else sqlite
        statement = module.insert(QuotaBalance).from_select(columns, source)
        connection.execute(statement.on_conflict_do_nothing())
        return
    try:  # another database: a concurrent insert of the same row is an IntegrityError
        with connection.begin_nested():
            connection.execute(insert(QuotaBalance).from_select(columns, source))
    except IntegrityError:
        pass


def _release(connection: Connection, reservation: int) -> None:
    """Give a reservation's tokens back (once: a reservation already released is skipped)."""
    row = connection.execute(
        delete(QuotaReservation)
        .where(QuotaReservation.id == reservation)
        .returning(QuotaReservation.key_name, QuotaReservation.period, QuotaReservation.tokens)
    ).first()
    if row is not None:
        key_name, period, tokens = row
        connection.execute(
            update(QuotaBalance)
            .where(QuotaBalance.key_name == key_name, QuotaBalance.period == period)
            .values(reserved=QuotaBalance.reserved - tokens)
        )


def _release_expired(connection: Connection, key_name: str, now: datetime) -> bool:
    expired = connection.scalars(
        select(QuotaReservation.id).where(
            QuotaReservation.key_name == key_name, QuotaReservation.expires_at < now
        )
    ).all()
    for reservation in expired:
        _release(connection, reservation)
    return bool(expired)


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
