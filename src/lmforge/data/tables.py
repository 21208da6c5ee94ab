"""Parsers of tables (csv, tsv, jsonl, parquet) into rows of cells, counting malformed rows.

Rows are numbered by the line a user sees in an editor (the header is line 1).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from typing import Any

from lmforge.data.records import Records, decode_lines, non_blank_lines
from lmforge.data.report import RowId
from lmforge.errors import LmforgeError


@dataclass
class Table:
    columns: list[str]
    rows: list[tuple[RowId, dict[str, Any]]]


def parse_table(path: str, fmt: str, data: bytes, records: Records) -> Table:
    """Parse the bytes of a csv/tsv/jsonl/parquet file; malformed rows go to records.drops."""
    if fmt in ("csv", "tsv"):
        return _parse_delimited(data, "," if fmt == "csv" else "\t", records)
    if fmt == "jsonl":
        return _parse_jsonl(data, records)
    if fmt == "parquet":
        return _parse_parquet(path, data, records)
    raise LmforgeError(f"cannot read {path} as a table (format '{fmt}')")


def _parse_delimited(data: bytes, delimiter: str, records: Records) -> Table:
    lines, bad = decode_lines(data)
    header: list[str] | None = None
    rows: list[tuple[RowId, dict[str, Any]]] = []
    previous_limit = csv.field_size_limit(2**31 - 1)  # long documents are valid cells
    try:
        start = 0  # index of the line the next record starts on
        while start < len(lines):
            fields, end = _parse_record(lines, start, delimiter)
            first = start + 1
            start = end
            if fields is not None and not "".join(fields).strip():
                records.blank_lines.add(first)
                continue
            if header is None and fields is not None:
                header = [name.strip() for name in fields]
                continue
            records.rows_read += 1
            if any(number in bad for number in range(first, end + 1)):
                records.undecodable.add(first)
            if fields is not None and len(fields) == len(header or []):
                rows.append((first, dict(zip(header or [], fields, strict=True))))
                continue
            records.drops.add("bad_csv_row" if fields is None else "wrong_field_count", first)
            # A malformed record spanning lines is most likely a stray quote that swallowed
            # the rows after it: count its first line only and read on from the next line.
            start = first
    finally:
        csv.field_size_limit(previous_limit)
    return Table(columns=header or [], rows=rows)


def _parse_record(lines: list[str], start: int, delimiter: str) -> tuple[list[str] | None, int]:
    """One csv record from lines[start:]: (fields, or None if unparsable; index after it)."""
    reader = csv.reader((lines[i] + "\n" for i in range(start, len(lines))), delimiter=delimiter)
    try:
        fields: list[str] | None = next(reader)
    except csv.Error:
        fields = None
    return fields, start + max(reader.line_num, 1)


def _parse_jsonl(data: bytes, records: Records) -> Table:
    lines, bad = decode_lines(data)
    document = "\n".join(lines).strip()
    parsed: list[tuple[RowId, Any]] = []
    if document.startswith("["):
        # A .json file holding one array of objects rather than JSON lines.
        try:
            items = json.loads(document)
        except ValueError:
            items = None
        if isinstance(items, list):
            parsed = list(enumerate(items, start=1))
            records.rows_read = len(items)
    if not parsed:
        for row_id, line in non_blank_lines(records, lines, bad):
            try:
                parsed.append((row_id, json.loads(line)))
            except ValueError:
                records.drops.add("invalid_json", row_id)
    columns: dict[str, None] = {}
    rows: list[tuple[RowId, dict[str, Any]]] = []
    for row_id, item in parsed:
        if not isinstance(item, dict):
            records.drops.add("not_an_object", row_id)
            continue
        columns.update(dict.fromkeys(item))
        rows.append((row_id, item))
    return Table(columns=list(columns), rows=rows)


def _parse_parquet(path: str, data: bytes, records: Records) -> Table:
    # Imported here: only parquet needs pyarrow, and it is slow to import.
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(pa.BufferReader(data))
    except Exception as error:  # pyarrow raises several types for a corrupt or non-parquet file
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise LmforgeError(f"{path} is not a readable parquet file: {first_line}") from None
    records.rows_read = table.num_rows
    columns = table.to_pydict()
    rows = [
        (number, {name: values[number - 1] for name, values in columns.items()})
        for number in range(1, table.num_rows + 1)
    ]
    return Table(columns=list(columns), rows=rows)
