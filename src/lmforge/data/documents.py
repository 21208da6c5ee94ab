"""The data stage of generation: documents read, cleaned and split into train/val/test.

A document is a line of a .txt file, a row of a table (its text column), or a .txt file in a
folder. Documents are split whole when there are enough of them; otherwise the text is cut by
position (the first part trains, then val, then test), so a single long file still splits.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.config import CleanConfig, DataConfig, SplitConfig
from lmforge.data.builtin import is_builtin, read_builtin
from lmforge.data.clean import clean_text
from lmforge.data.detect import likeliest_text_column
from lmforge.data.records import Records, add_cells, add_lines, cell_str, decode_file
from lmforge.data.report import CLEAN_REASONS, length_quantiles
from lmforge.data.sources import TABLE_FORMATS, read_bytes, read_table, resolve_format
from lmforge.errors import LmforgeError

# Below this many documents, or when a split would get none, the split is by position.
MIN_DOCUMENTS_TO_SPLIT = 10
_BLANK_LINES = re.compile(r"\n(?:[ \t]*\n)+")


@dataclass
class DocumentSplit:
    texts: list[str]


@dataclass
class PreparedDocuments:
    train: DocumentSplit
    val: DocumentSplit
    test: DocumentSplit  # empty when data.split.test is 0
    split_by: str  # "document" or "position"
    report: dict[str, Any]  # the content of data_report.json
    data_hash: str  # sha256 of the source bytes


def clean_document(text: str, clean: CleanConfig) -> str:
    """clean_text line by line: a document keeps its line breaks, which matter to generated text
    (verses, lists, paragraphs), with runs of blank lines collapsed to one."""
    lines = "\n".join(clean_text(line, clean) for line in text.split("\n"))
    return _BLANK_LINES.sub("\n\n", lines).strip("\n")


def read_documents(path: str, cfg: DataConfig) -> Records:
    """Raw documents (not cleaned) of a .txt file, a table, a folder of .txt files or a
    built-in dataset (whose labels are ignored)."""
    if is_builtin(path):
        return read_builtin(path)
    fmt = resolve_format(path, cfg.format)
    if fmt == "folder":
        return _read_text_folder(path)
    if fmt == "txt":
        records = Records(source=path, format="txt")
        data = read_bytes(path)
        records.data_hash = hashlib.sha256(data).hexdigest()
        add_lines(records, data, label=None, id_prefix="")
        return records
    if fmt not in TABLE_FORMATS:
        raise LmforgeError(f"cannot read {path} as documents (format '{fmt}')")
    records = Records(source=path, format=fmt)
    table = read_table(path, fmt, records)
    if table.columns and cfg.text_column not in table.columns:
        raise LmforgeError(
            f"column '{cfg.text_column}' not found in {path}; columns are: "
            + ", ".join(table.columns) + " (set data.text_column)"
        )
    for row_id, cells in table.rows:
        add_cells(records, row_id, cells.get(cfg.text_column), None)
    return records


def detect_text_column(path: str) -> dict[str, str]:
    """{"format", "text_column"} of a corpus, for `lmforge init --task generation`."""
    if is_builtin(path):
        return {"format": "auto", "text_column": "text"}
    fmt = resolve_format(path)
    if fmt in ("txt", "folder"):
        return {"format": fmt, "text_column": "text"}
    table = read_table(path, fmt, Records(source=path, format=fmt))
    values = {
        column: [v for _, cells in table.rows if (v := cell_str(cells.get(column)))]
        for column in table.columns
    }
    column = likeliest_text_column(values)
    if column is None:
        raise LmforgeError(f"no text column found in {path}; columns are: "
                           + ", ".join(table.columns))
    return {"format": fmt, "text_column": column}


def _read_text_folder(path: str) -> Records:
    """Every .txt file under `path` (recursively, sorted) is one document."""
    root = Path(path).expanduser()
    records = Records(source=path, format="folder")
    digest = hashlib.sha256()
    for file in sorted(root.rglob("*")):
        relative = file.relative_to(root).as_posix()
        if file.is_dir() or any(part.startswith(".") for part in relative.split("/")):
            continue
        if file.suffix.lower() != ".txt":
            records.ignored_files.add(relative)
            continue
        data = read_bytes(file)
        digest.update(relative.encode() + b"\0" + data + b"\0")
        records.rows_read += 1
        text = decode_file(records, relative, data)
        add_cells(records, relative, text.replace("\r\n", "\n"), None)
    records.data_hash = digest.hexdigest()
    return records


def _clean(records: Records, clean: CleanConfig) -> tuple[list[str], int]:
    """Cleaned documents (dropping empty, too short, too long and repeated ones), duplicates."""
    kept: list[str] = []
    seen: set[str] = set()
    for row_id, text in zip(records.row_ids, records.texts, strict=True):
        text = clean_document(text, clean)
        if not text.strip():
            records.drops.add("empty", row_id)
        elif len(text) < clean.min_chars:
            records.drops.add("too_short", row_id)
        elif clean.max_chars is not None and len(text) > clean.max_chars:
            records.drops.add("too_long", row_id)
        elif clean.dedupe and text in seen:
            records.drops.add("duplicate", row_id)
        else:
            seen.add(text)
            kept.append(text)
    return kept, records.drops.count("duplicate")


def split_documents(
    documents: list[str], split: SplitConfig
) -> tuple[list[str], list[str], list[str], str]:
    """(train, val, test, "document" | "position"): a seeded shuffle of whole documents, or,
    with too few documents, consecutive stretches of the text."""
    n = len(documents)
    n_test = math.ceil(split.test * n)
    n_val = math.ceil(split.val * n)
    enough = n >= MIN_DOCUMENTS_TO_SPLIT and n - n_test - n_val >= 1
    if enough:
        order = np.random.default_rng(split.seed).permutation(n)
        take = [documents[i] for i in order]
        test, val, train = take[:n_test], take[n_test : n_test + n_val], take[n_test + n_val :]
        return train, val, test, "document"
    return (*_split_by_position(documents, split), "position")


def _split_by_position(
    documents: list[str], split: SplitConfig
) -> tuple[list[str], list[str], list[str]]:
    """Cut the documents, in order, at 1 - val - test and 1 - test of their characters; a
    document crossing a cut becomes two pieces, one on each side."""
    total = sum(len(d) for d in documents)
    cuts = [round(total * (1 - split.val - split.test)), round(total * (1 - split.test)), total]
    parts: list[list[str]] = [[], [], []]
    offset = 0  # characters before the current document
    for doc in documents:
        start = 0
        for part, cut in enumerate(cuts):
            end = min(len(doc), cut - offset)
            if end > start:
                piece = doc[start:end].strip()
                if piece:
                    parts[part].append(piece)
                start = end
        offset += len(doc)
    return parts[0], parts[1], parts[2]


def prepare_documents(cfg: DataConfig) -> PreparedDocuments:
    """Read cfg.path, clean it with cfg.clean and split it with cfg.split."""
    records = read_documents(cfg.path, cfg)
    documents, duplicates = _clean(records, cfg.clean)
    if not documents:
        raise LmforgeError(
            f"no text in {cfg.path}: {records.rows_read} documents read, dropped: "
            f"{records.drops.summary()}"
        )
    train, val, test, split_by = split_documents(documents, cfg.split)
    report = {
        "source": records.source,
        "format": records.format,
        "data_hash": records.data_hash,
        "documents_read": records.rows_read,
        "documents_kept": len(documents),
        "dropped": records.drops.counts(always=[r for r in CLEAN_REASONS if "label" not in r]),
        "examples": records.drops.examples(),
        "duplicates": duplicates,
        "undecodable": {"rows": records.undecodable.count,
                        "examples": list(records.undecodable.examples)},
        "blank_lines": records.blank_lines.count,
        "ignored_files": {"count": records.ignored_files.count,
                          "examples": list(records.ignored_files.examples)},
        "split_by": split_by,
        "split_sizes": {"train": len(train), "val": len(val), "test": len(test)},
        "length_chars": length_quantiles(documents),
    }
    return PreparedDocuments(
        DocumentSplit(train), DocumentSplit(val), DocumentSplit(test), split_by, report,
        records.data_hash,
    )


def read_eval_documents(path: str, cfg: DataConfig) -> tuple[list[str], dict[str, Any]]:
    """Documents of a file to evaluate on: read and cleaned like training data, not split."""
    records = read_documents(path, cfg)
    documents, duplicates = _clean(records, cfg.clean)
    if not documents:
        raise LmforgeError(f"no text in {path}: {records.rows_read} documents read, dropped: "
                           f"{records.drops.summary()}")
    return documents, {"documents_read": records.rows_read, "documents_kept": len(documents),
                       "duplicates": duplicates, "undecodable": records.undecodable.count}
