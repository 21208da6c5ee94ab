"""Readers of every task: a csv/tsv/jsonl/parquet/txt file, a folder of .txt files or a built-in
dataset into raw rows.

Readers never crash on a bad row: they skip it and count it with its line number, so the data
report accounts for every row of the file. No cleaning happens here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path

from lmforge.data.builtin import is_builtin, read_builtin
from lmforge.data.records import Records, add_cells, add_lines, cell_str, decode_file
from lmforge.data.tables import Table, parse_table
from lmforge.errors import LmforgeError

EXTENSIONS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".txt": "txt",
}
TABLE_FORMATS = ("csv", "tsv", "jsonl", "parquet")


def resolve_format(path: str, fmt: str = "auto") -> str:
    """The format to read `path` with: `fmt` itself, or guessed from the extension for auto."""
    where = Path(path).expanduser()
    if not where.exists():
        raise LmforgeError(f"data file not found: {path}")
    if fmt == "folder" and not where.is_dir():
        raise LmforgeError(f"data.format is 'folder' but {path} is a file")
    if where.is_dir():
        if fmt not in ("auto", "folder"):
            raise LmforgeError(f"{path} is a folder; set data.format to 'folder' or 'auto'")
        return "folder"
    if fmt != "auto":
        return fmt
    ext = where.suffix.lower()
    if ext not in EXTENSIONS:
        raise LmforgeError(
            f"unknown format '{ext or '(no extension)'}' for {path}; use one of csv, tsv, jsonl, "
            "parquet, txt or a folder, or set data.format"
        )
    return EXTENSIONS[ext]


def read_records(
    path: str, fmt: str, text_column: str, label_column: str | None, keep: Sequence[str] = ()
) -> Records:
    """Texts (and labels, unless label_column is None) of a file, a folder or a built-in dataset,
    and the table columns named in `keep` (records.columns).

    Without labels a folder is one text per .txt file below it, and a built-in dataset's labels
    are left out; with labels a folder holds one subfolder of .txt files per label.
    """
    if keep and (is_builtin(path) or resolve_format(path, fmt) not in TABLE_FORMATS):
        raise LmforgeError(f"{path}: eval.slices names columns ({', '.join(keep)}), so the data "
                           "must be a table (csv, tsv, jsonl, parquet)")
    if is_builtin(path):
        records = read_builtin(path)
        if label_column is None:
            records.labels = None
        return records
    fmt = resolve_format(path, fmt)
    if fmt == "folder":
        records = _read_text_folder(path) if label_column is None else _read_label_folder(path)
    elif fmt == "txt":
        if label_column is not None:
            raise LmforgeError(
                f"{path} is plain text and has no labels; classification needs a table with "
                "text and label columns (csv, tsv, jsonl, parquet) or a folder per label"
            )
        records = Records(source=path, format="txt")
        data = read_bytes(path)
        records.data_hash = hashlib.sha256(data).hexdigest()
        add_lines(records, data, label=None, id_prefix="")
    else:
        records = _read_table(path, fmt, text_column, label_column, keep)
    if records.rows_read == 0:
        raise LmforgeError(f"{path} has no rows: no text in it")
    return records


def read_bytes(path: str | Path) -> bytes:
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as error:
        raise LmforgeError(f"cannot read {path}: {error.strerror or error}") from None


def _txt_files(
    root: Path, under: Path, records: Records, digest: hashlib._Hash
) -> Iterator[tuple[str, str]]:
    """(path relative to root, text) of every .txt file below `under`, sorted; every other file
    (hidden ones included) is counted as ignored. Each file's name goes into `digest` with its
    bytes: renaming a file or a label folder changes the data."""
    for file in sorted(under.rglob("*")):
        if file.is_dir():
            continue
        relative = file.relative_to(root).as_posix()
        hidden = any(part.startswith(".") for part in relative.split("/"))
        if hidden or file.suffix.lower() != ".txt":
            records.ignored_files.add(relative)
            continue
        data = read_bytes(file)
        digest.update(relative.encode() + b"\0" + data + b"\0")
        records.rows_read += 1
        yield relative, decode_file(records, relative, data)


def _read_label_folder(path: str) -> Records:
    """One subfolder per label, one text per .txt file; everything else is ignored and counted."""
    root = Path(path).expanduser()
    records = Records(source=path, format="folder", labels=[])
    digest = hashlib.sha256()
    for entry in sorted(root.iterdir()):
        if not entry.is_dir() or entry.name.startswith("."):
            records.ignored_files.add(entry.name)
            continue
        for relative, text in _txt_files(root, entry, records, digest):
            add_cells(records, relative, text.rstrip("\r\n"), entry.name)
    records.data_hash = digest.hexdigest()
    if records.rows_read == 0:
        raise LmforgeError(
            f"{path} has no rows: a folder dataset needs one subfolder of .txt files per label"
        )
    return records


def _read_text_folder(path: str) -> Records:
    """Every .txt file below `path` is one text, keeping its line breaks (CRLF made LF)."""
    root = Path(path).expanduser()
    records = Records(source=path, format="folder")
    digest = hashlib.sha256()
    for relative, text in _txt_files(root, root, records, digest):
        add_cells(records, relative, text.replace("\r\n", "\n"), None)
    records.data_hash = digest.hexdigest()
    return records


def read_table(path: str, fmt: str, records: Records) -> Table:
    """Read and parse a csv/tsv/jsonl/parquet file, setting records.data_hash."""
    data = read_bytes(path)
    records.data_hash = hashlib.sha256(data).hexdigest()
    return parse_table(path, fmt, data, records)


def _read_table(
    path: str, fmt: str, text_column: str, label_column: str | None, keep: Sequence[str]
) -> Records:
    records = Records(source=path, format=fmt, labels=None if label_column is None else [])
    records.columns = {column: [] for column in keep}
    table = read_table(path, fmt, records)
    if table.columns:
        named = [(text_column, "data.text_column"), (label_column, "data.label_column")]
        for column, setting in named + [(column, "eval.slices") for column in keep]:
            if column is not None and column not in table.columns:
                raise LmforgeError(
                    f"column '{column}' not found in {path}; columns are: "
                    + ", ".join(table.columns)
                    + f" (set {setting})"
                )
    for row_id, cells in table.rows:
        text = cells.get(text_column)
        label = cells.get(label_column) if label_column is not None else None
        added = len(records.texts)
        add_cells(records, row_id, text, label)
        if len(records.texts) > added:
            for column, values in records.columns.items():
                values.append((cell_str(cells.get(column)) or "").strip() or "(missing)")
    return records
