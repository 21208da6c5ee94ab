"""What the served assistant keeps of its conversations, in the serving database beside keys and
usage (billing/database.py: SQLite by default, PostgreSQL by URL): the handoff queue, one row
per conversation handed to a person, and, with `lmforge serve --log-conversations` only, a log
of every conversation. Both store the messages with personal data masked
(tasks/assistant_conversation.masked): emails, phone numbers, ID and card numbers, IP addresses.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Engine, Float, Integer, String, insert, select
from sqlalchemy.orm import Mapped, mapped_column

from lmforge.serve.billing.database import Base, utcnow


class HandoffRecord(Base):
    """A conversation handed to a person: who (the key), when, which model, why, and what was
    said (the client's messages, then the assistant's handoff reply), masked."""

    __tablename__ = "handoffs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, index=True)
    key_name: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(String(256))
    conversation: Mapped[list] = mapped_column(JSON)


class ConversationLog(Base):
    """One served reply of the assistant (--log-conversations): the masked conversation and the
    reply's confidence, citations and handoff."""

    __tablename__ = "conversation_logs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, index=True)
    key_name: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(128))
    conversation: Mapped[list] = mapped_column(JSON)
    confidence: Mapped[float] = mapped_column(Float)
    citations: Mapped[list] = mapped_column(JSON)
    handoff: Mapped[bool] = mapped_column(Boolean)


@dataclass
class Handoff:
    id: int
    time: str
    key: str
    model: str
    reason: str
    conversation: list[dict[str, str]]


def record_handoff(engine: Engine, key_name: str, model: str, reason: str,
                   conversation: list[dict[str, str]]) -> None:
    row = {"created_at": utcnow(), "key_name": key_name, "model": model,
           "reason": reason[:256], "conversation": conversation}
    with engine.begin() as connection:
        connection.execute(insert(HandoffRecord).values(**row))


def record_conversation(engine: Engine, key_name: str, model: str,
                        conversation: list[dict[str, str]], answered: dict[str, Any]) -> None:
    row = {"created_at": utcnow(), "key_name": key_name, "model": model,
           "conversation": conversation, "confidence": answered["confidence"],
           "citations": answered["citations"], "handoff": answered["handoff"]}
    with engine.begin() as connection:
        connection.execute(insert(ConversationLog).values(**row))


def list_handoffs(engine: Engine, since: datetime | None = None) -> list[Handoff]:
    """The handoff queue, oldest first (from `since` when given)."""
    query = select(HandoffRecord).order_by(HandoffRecord.created_at, HandoffRecord.id)
    if since is not None:
        query = query.where(HandoffRecord.created_at >= since)
    with engine.connect() as connection:
        rows = connection.execute(query).all()
    return [Handoff(row.id, row.created_at.isoformat(timespec="seconds") + "Z", row.key_name,
                    row.model, row.reason, row.conversation) for row in rows]
