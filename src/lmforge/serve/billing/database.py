"""Billing's tables (API keys, usage records, quota balances and reservations) and the database
that holds them (SQLAlchemy): SQLite by default, any URL by --db.

The default file is `$XDG_DATA_HOME/lmforge/lmforge.db` (`~/.local/share/lmforge/lmforge.db`), so
`lmforge serve`, `lmforge keys` and `lmforge usage` find the same keys and usage with no flag.
Times are stored as naive UTC.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    Engine,
    Float,
    Index,
    Integer,
    String,
    create_engine,
    event,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from lmforge.errors import LmforgeError


class Base(DeclarativeBase):
    pass


class ApiKey(Base):
    """One key: only the SHA-256 of the secret is kept, with its first characters for display."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    quota_tokens: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    rpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class UsageRecord(Base):
    """One model call: who, which model and endpoint, tokens in and out, latency, status, when."""

    __tablename__ = "usage_records"
    __table_args__ = (Index("ix_usage_key_time", "key_name", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key_name: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(128))
    endpoint: Mapped[str] = mapped_column(String(64))
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    latency_ms: Mapped[float] = mapped_column(Float)
    status: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime, index=True)


class QuotaBalance(Base):
    """A key's tokens in one quota period: `used` by calls recorded, `reserved` by calls in
    flight (each at its largest possible cost). Admission is one conditional UPDATE of this
    row, so the quota holds however many server processes share the database."""

    __tablename__ = "quota_balances"

    key_name: Mapped[str] = mapped_column(String(64), primary_key=True)
    period: Mapped[datetime] = mapped_column(DateTime, primary_key=True)
    used: Mapped[int] = mapped_column(BigInteger)
    reserved: Mapped[int] = mapped_column(BigInteger)


class QuotaReservation(Base):
    """One call in flight and the tokens it holds; settled when its usage record is written.
    One whose server died is released once past `expires_at`."""

    __tablename__ = "quota_reservations"
    __table_args__ = (Index("ix_reservation_key_expiry", "key_name", "expires_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key_name: Mapped[str] = mapped_column(String(64))
    period: Mapped[datetime] = mapped_column(DateTime)
    tokens: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[datetime] = mapped_column(DateTime)


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def default_db_url() -> str:
    data_home = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return f"sqlite:///{Path(data_home) / 'lmforge' / 'lmforge.db'}"


def display_url(url: str) -> str:
    """The URL with any password hidden, for logs and messages."""
    return make_url(url).render_as_string(hide_password=True)


def open_database(url: str | None = None) -> Engine:
    """An engine on `url` (default: the documented SQLite file), with the tables created."""
    url = url or default_db_url()
    try:
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        connect_args = {"timeout": 30} if parsed.get_backend_name() == "sqlite" else {}
        engine = create_engine(parsed, connect_args=connect_args, pool_pre_ping=True)
    except ArgumentError as error:
        raise LmforgeError(f"--db {url!r} is not a database URL: {error}") from None
    except ModuleNotFoundError as error:
        raise LmforgeError(
            f"--db {display_url(url)} needs the Python driver '{error.name}' "
            "(for PostgreSQL: pip install 'psycopg[binary]' and a postgresql+psycopg:// URL)"
        ) from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    try:
        Base.metadata.create_all(engine)
    except OperationalError as error:
        raise LmforgeError(
            f"cannot open database {display_url(url)}: {str(error.orig).splitlines()[0]}"
        ) from None
    return engine


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    # WAL lets the server write usage while `lmforge usage` reads; NORMAL sync is still
    # durable against a process crash, and makes each metering commit cheap.
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
