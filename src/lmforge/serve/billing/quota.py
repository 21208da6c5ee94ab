"""May this call run: a key's token quota, counted per calendar month (UTC).

The quota counts prompt + completion tokens in the current calendar month (UTC); it starts again
on the 1st, which is what a 429's Retry-After points at. A call is admitted only if its largest
possible cost (prompt tokens + max_tokens) fits beside what the key has used and what its calls
in flight hold: that cost is reserved in the database when the call is admitted and settled to
the real count in the transaction that writes its usage record (ledger.record_calls).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine, delete, func, insert, literal, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from lmforge.serve.billing.database import QuotaBalance, QuotaReservation, UsageRecord, utcnow
from lmforge.serve.errors import APIError, retry_after


@dataclass(frozen=True)
class Balance:
    used: int
    reserved: int


def period_start(now: datetime) -> datetime:
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def next_period_start(now: datetime) -> datetime:
    start = period_start(now)
    return (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )


def over_quota(
    key_name: str, quota: int, used: int, detail: str = "", wait_s: float | None = None
) -> APIError:
    """The 429 for a call that the key's quota cannot take; Retry-After is `wait_s`, or else
    the start of the next period."""
    if wait_s is None:
        now = utcnow()
        wait_s = (next_period_start(now) - now).total_seconds()
    return APIError(
        429,
        f"quota: the key '{key_name}' has used {used} of its {quota} tokens this month{detail}",
        code="insufficient_quota",
        headers=retry_after(wait_s),
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


def settle(
    connection: Connection, period: datetime, reservations: list[int], used: dict[str, int]
) -> None:
    """In the transaction that writes usage records: give back what the calls held
    (`reservations`) and count the tokens each key `used` in `period`."""
    for reservation in reservations:
        _release(connection, reservation)
    for key_name, tokens in sorted(used.items()):  # one order: no deadlock between servers
        if tokens:
            connection.execute(
                update(QuotaBalance)
                .where(QuotaBalance.key_name == key_name, QuotaBalance.period == period)
                .values(used=QuotaBalance.used + tokens)
            )


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
