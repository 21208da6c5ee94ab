"""Interactions for recommendation: a table of (user, item[, rating][, timestamp]) rows read into
each user's history in time order, and the leak-free leave-last-out split by time.

Every row the file holds is accounted for in the report: kept, or dropped with its reason and
line (a missing user or item, an unreadable timestamp or rating, a repeat of an earlier
interaction of the same user with the same item).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from lmforge.data.builtin import is_builtin, package_folder
from lmforge.data.records import Records, cell_str
from lmforge.data.report import RowId
from lmforge.data.sources import TABLE_FORMATS, read_bytes, read_table, resolve_format
from lmforge.data.tables import parse_table
from lmforge.errors import LmforgeError

# name -> (package, file inside it, its columns as named in our config: user, item, rating,
# timestamp). MovieLens-100K as shipped in RecBole (GroupLens terms: research use, no
# redistribution; it is read from the installed package, never copied).
BUILTIN_INTERACTIONS: dict[str, tuple[str, str, dict[str, str]]] = {
    "builtin:ml-100k": ("recbole", "dataset_example/ml-100k/ml-100k.inter", {
        "user": "user_id:token", "item": "item_id:token", "rating": "rating:float",
        "timestamp": "timestamp:float"}),
}
RECBOLE_INSTALL = "pip install --no-deps recbole (its data files are all lmforge reads)"


@dataclass
class InteractionColumns:
    """The columns of an interactions table; timestamp and rating None: used when the file
    has a column of that name ('timestamp', 'rating'), else not (file order; no rating)."""

    user: str = "user"
    item: str = "item"
    timestamp: str | None = None
    rating: str | None = None
    min_rating: float | None = None  # interactions rated below it are dropped (counted)


@dataclass
class InteractionLog:
    """Each user's items in time order (ties in file order), users in order of first
    appearance; the report (data_report.json) and the hash of the source bytes."""

    histories: dict[str, list[str]]
    report: dict[str, Any]
    data_hash: str


@dataclass
class TimeSplit:
    """Leave-last-out: each user's last item is test, the one before it validation, the rest
    training; users with fewer than `min_interactions` have all of theirs in training."""

    train: dict[str, list[str]]
    val: dict[str, str] = field(default_factory=dict)
    test: dict[str, str] = field(default_factory=dict)
    train_only_users: int = 0


def read_interactions(path: str, fmt: str, columns: InteractionColumns) -> InteractionLog:
    """The interactions of a table file or a built-in dataset (builtin:ml-100k)."""
    if is_builtin(path):
        if path not in BUILTIN_INTERACTIONS:
            raise LmforgeError(f"unknown built-in interactions dataset '{path}'; known: "
                               f"{', '.join(BUILTIN_INTERACTIONS)}")
        package, file_name, named = BUILTIN_INTERACTIONS[path]
        source = package_folder(package, "", path, RECBOLE_INSTALL) / file_name
        if not source.is_file():
            raise LmforgeError(f"{path}: {source} is missing from the installed '{package}'")
        records = Records(source=path, format="builtin")
        data = read_bytes(source)
        records.data_hash = hashlib.sha256(data).hexdigest()
        table = parse_table(str(source), "tsv", data, records)
        columns = InteractionColumns(named["user"], named["item"], named["timestamp"],
                                     named["rating"], columns.min_rating)
    else:
        fmt = resolve_format(path, fmt)
        if fmt not in TABLE_FORMATS:
            raise LmforgeError(f"{path}: interactions must be a table (csv, tsv, jsonl, parquet) "
                               "with user and item columns")
        records = Records(source=path, format=fmt)
        table = read_table(path, fmt, records)
    if not table.rows:
        raise LmforgeError(f"{path} has no interactions (no rows)")
    timestamp, rating = _present_columns(path, table.columns, columns)
    rows: list[tuple[float, int, str, str]] = []  # (time, file position, user, item)
    for position, (row_id, cells) in enumerate(table.rows):
        row = _interaction(records, row_id, cells, columns, timestamp, rating)
        if row is not None:
            when = row[0] if timestamp is not None else float(position)
            rows.append((when, position, row[1], row[2]))
    # a stable sort by time: interactions at the same time keep the file's order
    rows.sort(key=lambda row: row[0])
    histories: dict[str, list[str]] = {}
    seen: set[tuple[str, str]] = set()
    for _when, position, user, item in rows:
        if (user, item) in seen:  # a later repeat: already seen, it could only be ranked away
            records.drops.add("repeated_interaction", table.rows[position][0])
            continue
        seen.add((user, item))
        histories.setdefault(user, []).append(item)
    if not histories:
        raise LmforgeError(f"{path}: no interactions left ({records.rows_read} rows read; "
                           f"dropped: {records.drops.summary()})")
    kept = sum(len(items) for items in histories.values())
    report = {
        "source": path, "format": records.format, "data_hash": records.data_hash,
        "rows_read": records.rows_read, "rows_kept": kept,
        "dropped": records.drops.counts(), "examples": records.drops.examples(),
        "users": len(histories), "items": len({i for items in histories.values() for i in items}),
        "ordered_by": f"column '{timestamp}' (ties in file order)" if timestamp
        else "file order (no timestamp column)",
        "blank_lines": records.blank_lines.count,
    }
    return InteractionLog(histories, report, records.data_hash)


def _present_columns(path: str, present: list[str], columns: InteractionColumns
                     ) -> tuple[str | None, str | None]:
    """The timestamp and rating columns in use; a named column the file lacks is an error."""
    named = [(columns.user, "user_column"), (columns.item, "item_column"),
             (columns.timestamp, "timestamp_column"), (columns.rating, "rating_column")]
    for column, key in named:
        if column is not None and column not in present:
            raise LmforgeError(f"{path}: no column '{column}' (columns: {', '.join(present)}); "
                               f"set recommendation.{key}")
    timestamp = columns.timestamp or ("timestamp" if "timestamp" in present else None)
    rating = columns.rating or ("rating" if "rating" in present else None)
    if columns.min_rating is not None and rating is None:
        raise LmforgeError(f"{path}: recommendation.min_rating is set but there is no rating "
                           "column; set recommendation.rating_column")
    return timestamp, rating


def _interaction(records: Records, row_id: RowId, cells: dict[str, Any],
                 columns: InteractionColumns, timestamp: str | None, rating: str | None
                 ) -> tuple[float, str, str] | None:
    """(time, user, item) of a row, or None with the reason counted."""
    user, item = cells.get(columns.user), cells.get(columns.item)
    if isinstance(user, (list, dict)) or isinstance(item, (list, dict)):
        records.drops.add("nested_cell", row_id)
        return None
    user, item = (cell_str(user) or "").strip(), (cell_str(item) or "").strip()
    if not user:
        records.drops.add("missing_user", row_id)
        return None
    if not item:
        records.drops.add("missing_item", row_id)
        return None
    when = 0.0
    if timestamp is not None:
        parsed = parse_time(cells.get(timestamp))
        if parsed is None:
            records.drops.add("bad_timestamp", row_id)
            return None
        when = parsed
    if columns.min_rating is not None and rating is not None:
        value = _number(cells.get(rating))
        if value is None:
            records.drops.add("bad_rating", row_id)
            return None
        if value < columns.min_rating:
            records.drops.add("below_min_rating", row_id)
            return None
    return when, user, item


def _number(value: Any) -> float | None:
    text = cell_str(value)
    try:
        number = float(text) if text is not None and not isinstance(value, bool) else None
    except ValueError:
        return None
    return number if number is not None and math.isfinite(number) else None


def parse_time(value: Any) -> float | None:
    """A timestamp cell as seconds: a number (Unix time, or any increasing count) or an ISO
    8601 date or date-time; None when it is neither."""
    number = _number(value)
    if number is not None:
        return number
    text = (cell_str(value) or "").strip()
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:  # a naive time is read as UTC, not as this machine's zone
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def leave_last_out(histories: dict[str, list[str]], min_interactions: int) -> TimeSplit:
    """Each user's last interaction is test and the one before it validation; nothing later
    than an interaction is ever in its user's training history."""
    if min_interactions < 3:
        raise LmforgeError(f"min_interactions must be at least 3 (one to train on, one to "
                           f"validate, one to test); got {min_interactions}")
    split = TimeSplit(train={})
    for user, items in histories.items():
        if len(items) < min_interactions:
            split.train[user] = list(items)
            split.train_only_users += 1
            continue
        split.train[user] = items[:-2]
        split.val[user] = items[-2]
        split.test[user] = items[-1]
    return split
