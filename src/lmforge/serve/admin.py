"""What `lmforge keys ...`, `lmforge usage` and `lmforge handoffs` do and print; the CLI only
passes arguments."""

from __future__ import annotations

import io
import json
from dataclasses import asdict
from datetime import datetime, timezone

from rich.console import Console
from rich.table import Table

from lmforge.errors import LmforgeError
from lmforge.serve import conversations
from lmforge.serve.billing import keys, ledger
from lmforge.serve.billing.database import open_database


def create_key(db: str | None, name: str, quota_tokens: int | None, rpm: int | None) -> str:
    return keys.create_key(open_database(db), name, quota_tokens, rpm)


def revoke_key(db: str | None, name: str) -> None:
    keys.revoke_key(open_database(db), name)


def keys_table(db: str | None) -> str:
    table = Table("name", "key", "quota tokens/month", "rpm", "created (UTC)", "status")
    for key in keys.list_keys(open_database(db)):
        status = f"revoked {_when(key.revoked_at)}" if key.revoked_at else "active"
        table.add_row(
            key.name,
            key.prefix + "…",
            _limit(key.quota_tokens),
            _limit(key.rpm),
            _when(key.created_at),
            status,
        )
    return _render(table) if table.row_count else "no keys yet: lmforge keys create NAME\n"


def usage_report(db: str | None, key: str | None, since: str | None, as_json: bool) -> str:
    """Bill-ready usage per key: a table, or (as_json) a JSON list of objects."""
    engine = open_database(db)
    if key is not None and key != keys.ANONYMOUS and not keys.key_exists(engine, key):
        raise LmforgeError(f"no key named {key!r}; see: lmforge keys list")
    rows = ledger.usage_summary(engine, key, parse_since(since))
    if as_json:
        return json.dumps([row.as_dict() for row in rows], indent=2) + "\n"
    title = f"usage since {since}" if since else "usage, all time"
    table = Table(
        "key",
        "requests",
        "errors",
        "prompt tokens",
        "completion tokens",
        "total tokens",
        "first (UTC)",
        "last (UTC)",
        title=title,
    )
    for row in rows:
        table.add_row(
            row.key,
            *(
                f"{n:,}"
                for n in (
                    row.requests,
                    row.errors,
                    row.prompt_tokens,
                    row.completion_tokens,
                    row.total_tokens,
                )
            ),
            row.first or "-",
            row.last or "-",
        )
    if len(rows) > 1:
        totals = [
            sum(getattr(r, f) for r in rows)
            for f in ("requests", "errors", "prompt_tokens", "completion_tokens", "total_tokens")
        ]
        table.add_row("total", *(f"{n:,}" for n in totals), "", "", style="bold")
    return _render(table) if rows else f"no usage recorded ({title})\n"


def handoffs_report(db: str | None, since: str | None, as_json: bool) -> str:
    """The assistant's handoff queue, oldest first: a table, or (as_json) a JSON list."""
    rows = conversations.list_handoffs(open_database(db), parse_since(since))
    if as_json:
        return json.dumps([asdict(row) for row in rows], indent=2, ensure_ascii=False) + "\n"
    title = f"handoffs since {since}" if since else "handoffs, all time"
    table = Table("#", "time (UTC)", "key", "model", "reason", "conversation", title=title)
    for row in rows:
        said = "\n".join(f"{m['role']}: {m['content']}" for m in row.conversation)
        table.add_row(str(row.id), row.time, row.key, row.model, row.reason, said)
    return _render(table) if rows else f"no handoffs ({title})\n"


def parse_since(since: str | None) -> datetime | None:
    """'2024-05-01' or an ISO date-time (UTC unless it says otherwise) → naive UTC."""
    if since is None:
        return None
    try:
        moment = datetime.fromisoformat(since.replace("Z", "+00:00"))
    except ValueError:
        raise LmforgeError(
            f"--since {since!r} is not a date: use YYYY-MM-DD or YYYY-MM-DDTHH:MM"
        ) from None
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return moment


def _limit(value: int | None) -> str:
    return "unlimited" if value is None else f"{value:,}"


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M") if moment else "-"


def _render(table: Table) -> str:
    buffer = io.StringIO()
    Console(file=buffer, width=160, no_color=True).print(table)
    return buffer.getvalue()
