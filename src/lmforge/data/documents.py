"""The data stage of generation: documents read and cleaned by the readers every task shares
(data.prepare.read_and_clean), kept with their line breaks, and split into train/val/test.

A document is a line of a .txt file, a row of a table (its text column), or a .txt file in a
folder. Documents are split whole when there are enough of them; otherwise the text is cut by
position (the first part trains, then val, then test), so a single long file still splits.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from lmforge.config import CleanConfig, DataConfig, SplitConfig
from lmforge.data.clean import CleanedRows, clean_rows, clean_text
from lmforge.data.prepare import read_and_clean, rows_report
from lmforge.data.records import Records
from lmforge.data.report import length_quantiles
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


def clean_document(text: str, clean: CleanConfig, pii: Counter[str] | None = None) -> str:
    """clean_text line by line: a document keeps its line breaks, which matter to generated text
    (verses, lists, paragraphs), with runs of blank lines collapsed to one."""
    lines = "\n".join(clean_text(line, clean, pii) for line in text.split("\n"))
    return _BLANK_LINES.sub("\n\n", lines).strip("\n")


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


def clean_and_split_whole(
    records: Records, cfg: DataConfig, clean_one: Callable[[str, CleanConfig, Any], str],
    unit: str,
) -> tuple[CleanedRows, list[str], list[str], list[str]]:
    """Rows of whole `unit`s (conversations, pairs: never cut by position) cleaned with
    `clean_one` and cfg.clean, and (cleaned, train, val, test) split with cfg.split. None left,
    or too few to split, is an error naming the file and the remedy."""
    cleaned = clean_rows(records, cfg.clean, clean_one)
    n = len(cleaned.texts)
    if not n:
        raise LmforgeError(f"no {unit} left after cleaning {cfg.path}: {records.rows_read} "
                           f"read, dropped: {records.drops.summary()}")
    if (cfg.split.val or cfg.split.test) and n < MIN_DOCUMENTS_TO_SPLIT:
        raise LmforgeError(
            f"{cfg.path}: {n} {unit} are too few to split into train/val/test (at least "
            f"{MIN_DOCUMENTS_TO_SPLIT}); add {unit} or set data.split.val and data.split.test "
            "to 0"
        )
    train, val, test, _ = split_documents(cleaned.texts, cfg.split)
    return cleaned, train, val, test


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
    records, cleaned = read_and_clean(cfg.path, cfg, labelled=False, clean_one=clean_document)
    train, val, test, split_by = split_documents(cleaned.texts, cfg.split)
    report = rows_report(records, cleaned, unit="documents") | {
        "split_by": split_by,
        "split_sizes": {"train": len(train), "val": len(val), "test": len(test)},
        "length_chars": length_quantiles(cleaned.texts),
    }
    return PreparedDocuments(
        DocumentSplit(train),
        DocumentSplit(val),
        DocumentSplit(test),
        split_by,
        report,
        records.data_hash,
    )


def read_eval_documents(path: str, cfg: DataConfig) -> tuple[list[str], dict[str, Any]]:
    """Documents of a file to evaluate on: read and cleaned like training data, not split."""
    records, cleaned = read_and_clean(path, cfg, labelled=False, clean_one=clean_document)
    report = rows_report(records, cleaned, unit="documents")
    return cleaned.texts, report | {"length_chars": length_quantiles(cleaned.texts)}
