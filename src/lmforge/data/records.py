"""Raw rows as read from a source, before cleaning: texts, labels, and every row skipped."""

from __future__ import annotations

import codecs
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from lmforge.data.report import DropLog, RowId, Tally


@dataclass
class Records:
    """Rows as read: texts, labels (None when reading unlabelled texts) and what was skipped."""

    source: str
    format: str
    data_hash: str = ""
    texts: list[str] = field(default_factory=list)
    labels: list[str] | None = None
    row_ids: list[RowId] = field(default_factory=list)
    rows_read: int = 0
    drops: DropLog = field(default_factory=DropLog)
    undecodable: Tally = field(default_factory=Tally)
    blank_lines: Tally = field(default_factory=Tally)
    ignored_files: Tally = field(default_factory=Tally)
    # Columns kept beside the texts but not read by the model (eval.slices): name -> values.
    columns: dict[str, list[str]] = field(default_factory=dict)

    def add(self, row_id: RowId, text: str, label: str | None) -> None:
        self.row_ids.append(row_id)
        self.texts.append(text)
        if self.labels is not None and label is not None:
            self.labels.append(label)


def decode_lines(data: bytes) -> tuple[list[str], set[int]]:
    """Split bytes into lines without line ends, and the 1-based numbers of undecodable lines.

    Bad bytes become U+FFFD rather than failing the file: one stray Latin-1 byte should cost a
    counted warning, not the whole dataset.
    """
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        # Excel's "Unicode text" export; read as UTF-8 it would be all NUL bytes.
        text = data.decode("utf-16", errors="replace")
        lines, bad = text.split("\n"), set()
    else:
        data = data.removeprefix(codecs.BOM_UTF8)
        try:
            lines, bad = data.decode("utf-8").split("\n"), set()
        except UnicodeDecodeError:
            # Byte 0x0A never occurs inside a UTF-8 sequence, so splitting bytes first is safe.
            lines, bad = [], set()
            for number, chunk in enumerate(data.split(b"\n"), start=1):
                try:
                    lines.append(chunk.decode("utf-8"))
                except UnicodeDecodeError:
                    lines.append(chunk.decode("utf-8", errors="replace"))
                    bad.add(number)
    if lines and lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines], bad


def non_blank_lines(
    records: Records, lines: list[str], bad: set[int], id_prefix: str = ""
) -> Iterator[tuple[RowId, str]]:
    """(row id, line) of each non-blank line, counted as read; blank and undecodable lines (as
    numbered in `bad`) are counted in `records` too."""
    for number, line in enumerate(lines, start=1):
        row_id: RowId = f"{id_prefix}{number}" if id_prefix else number
        if not line.strip():
            records.blank_lines.add(row_id)
            continue
        records.rows_read += 1
        if number in bad:
            records.undecodable.add(row_id)
        yield row_id, line


def add_lines(records: Records, data: bytes, label: str | None, id_prefix: str) -> None:
    """Add one text per non-blank line of `data` (a .txt file) to `records`."""
    for row_id, line in non_blank_lines(records, *decode_lines(data), id_prefix):
        records.add(row_id, line, label)


def decode_file(records: Records, row_id: RowId, data: bytes) -> str:
    """A whole file as UTF-8 text (a BOM dropped); undecodable bytes become U+FFFD and the
    file is counted under `undecodable`, never dropped."""
    data = data.removeprefix(codecs.BOM_UTF8)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        records.undecodable.add(row_id)
        return data.decode("utf-8", errors="replace")


def add_cells(records: Records, row_id: RowId, text: Any, label: Any) -> None:
    """Add one row, or count why its text or label cell is unusable."""
    if isinstance(text, (list, dict)) or isinstance(label, (list, dict)):
        records.drops.add("nested_cell", row_id)
        return
    text, label = cell_str(text), cell_str(label)
    if text is None or not text.strip():
        records.drops.add("missing_text", row_id)
    elif records.labels is not None and (label is None or not label.strip()):
        records.drops.add("missing_label", row_id)
    else:
        records.add(row_id, text, None if label is None else label.strip())


def cell_str(value: Any) -> str | None:
    """A cell as the string a user sees in the file: 5 -> "5", true -> "true", null -> None."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)
