"""Guessing the format, text column and label column of a data file, for `lmforge init`
(a corpus for generation needs only the text column)."""

from __future__ import annotations

from lmforge.data.builtin import BUILTIN_HSK_LEVELS, HSK_LEVELS_COLUMNS, is_builtin
from lmforge.data.records import Records, cell_str
from lmforge.data.sources import read_table, resolve_format
from lmforge.errors import LmforgeError

TEXT_NAMES = ("text", "sentence", "review", "content", "comment", "message", "body", "document")
LABEL_NAMES = ("label", "labels", "class", "category", "target", "sentiment", "intent")
MAX_CLASSES = 50
NUMBER_NAMES = ("score", "rating", "stars", "value", "price", "y")  # a regression target's


def detect_columns(path: str) -> dict[str, str]:
    """{"format", "text_column", "label_column"}, ready to fill a DataConfig."""
    if is_builtin(path):
        return {"format": "auto", "text_column": "text", "label_column": "label"}
    fmt = resolve_format(path)
    if fmt == "folder":
        return {"format": "folder", "text_column": "text", "label_column": "label"}
    if fmt == "txt":
        raise LmforgeError(
            f"{path} is plain text and has no labels; classification needs a table with text "
            "and label columns (csv, tsv, jsonl, parquet) or a folder per label"
        )
    values, n_rows = _column_values(path, fmt)
    text_column = _text_column(path, values)
    label_column = _label_column(values, text_column, n_rows)
    if label_column is None:
        raise LmforgeError(
            f"no label column found in {path} (a column named label, class, ... or with "
            f"2 to {MAX_CLASSES} distinct values); columns are: {', '.join(values)}"
        )
    return {"format": fmt, "text_column": text_column, "label_column": label_column}


def detect_number_columns(path: str) -> dict[str, str]:
    """{"format", "text_column", "label_column"} of a text table with a numeric target, for
    `lmforge init --task regression`: the target is the column of numbers named as a label (or
    score, rating, ...), else the last column of numbers (an id usually comes first)."""
    if path == BUILTIN_HSK_LEVELS:
        return {"format": "auto", **HSK_LEVELS_COLUMNS}
    if is_builtin(path):
        raise LmforgeError(f"{path} has no numeric target for task regression; the built-in "
                           f"text regression data is {BUILTIN_HSK_LEVELS}")
    fmt = resolve_format(path)
    if fmt in ("txt", "folder"):
        raise LmforgeError(f"{path} has no column of numbers; task regression needs a table with "
                           "a text column and a numeric target (csv, tsv, jsonl, parquet)")
    values, _ = _column_values(path, fmt)
    text_column = _text_column(path, values)
    numbers = [column for column, cells in values.items() if column != text_column and cells
               and all(map(_is_number, cells))]
    if not numbers:
        raise LmforgeError(f"no column of numbers (the target) found in {path}; columns are: "
                           f"{', '.join(values)}")
    named = [c for c in numbers if c.strip().lower() in (*LABEL_NAMES, *NUMBER_NAMES)]
    return {"format": fmt, "text_column": text_column, "label_column": (named or numbers[-1:])[0]}


def detect_text_column(path: str) -> dict[str, str]:
    """{"format", "text_column"} of a corpus, for `lmforge init --task generation`."""
    if is_builtin(path):
        return {"format": "auto", "text_column": "text"}
    fmt = resolve_format(path)
    if fmt in ("txt", "folder"):
        return {"format": fmt, "text_column": "text"}
    return {"format": fmt, "text_column": _text_column(path, _column_values(path, fmt)[0])}


def _column_values(path: str, fmt: str) -> tuple[dict[str, list[str]], int]:
    """The non-empty cells of each column of a table, as strings, and its number of rows."""
    table = read_table(path, fmt, Records(source=path, format=fmt))
    if not table.rows:
        raise LmforgeError(f"{path} has no rows")
    values = {
        column: [v for _, cells in table.rows if (v := cell_str(cells.get(column)))]
        for column in table.columns
    }
    return values, len(table.rows)


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _text_column(path: str, values: dict[str, list[str]]) -> str:
    """A column of mostly non-numeric strings: a conventional name first, else the longest."""
    strings = {
        column: cells
        for column, cells in values.items()
        if cells and sum(map(_is_number, cells)) < len(cells) / 2
    }
    for column in strings:
        if column.strip().lower() in TEXT_NAMES:
            return column
    if not strings:
        raise LmforgeError(f"no text column found in {path}; columns are: {', '.join(values)}")
    return max(strings, key=lambda column: sum(map(len, strings[column])) / len(strings[column]))


FREE_TEXT_CHARS = 20  # a column of strings this long on average holds text, not categories


def free_text_column(path: str, fmt: str = "auto", label_column: str | None = None) -> str | None:
    """A column of `path` holding free text (mostly non-numeric strings, named as text usually
    is or FREE_TEXT_CHARS long on average), other than the label; None for a feature table."""
    values, _ = _column_values(path, resolve_format(path, fmt))
    for column, cells in values.items():
        if column == label_column or not cells or sum(map(_is_number, cells)) >= len(cells) / 2:
            continue
        if (column.strip().lower() in TEXT_NAMES
                or sum(map(len, cells)) / len(cells) >= FREE_TEXT_CHARS):
            return column
    return None


def _label_column(values: dict[str, list[str]], text_column: str, n_rows: int) -> str | None:
    """A conventional label name, else the column with the fewest (2..50) distinct values."""
    others = {column: cells for column, cells in values.items() if column != text_column}
    for column in others:
        if column.strip().lower() in LABEL_NAMES:
            return column
    distinct = {column: len(set(cells)) for column, cells in others.items()}
    candidates = [
        column for column, n in distinct.items() if 2 <= n <= MAX_CLASSES and n < n_rows / 2
    ]
    return min(candidates, key=lambda column: distinct[column]) if candidates else None
