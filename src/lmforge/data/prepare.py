"""The data stage as functions: read and clean any task's rows with their report (shared with
generation's documents), and read, clean and split a classification dataset."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from lmforge.config import CleanConfig, DataConfig
from lmforge.data.clean import CleanedRows, clean_rows, clean_text
from lmforge.data.records import Records
from lmforge.data.report import CLEAN_REASONS, Tally, label_counts, length_quantiles
from lmforge.data.sources import TABLE_FORMATS, read_records, resolve_format
from lmforge.data.split import Split, order_labels, split_dataset
from lmforge.errors import LmforgeError


@dataclass
class PreparedData:
    train: Split
    val: Split
    test: Split  # empty when data.split.test is 0
    label_names: list[str]
    report: dict[str, Any]  # the content of data_report.json
    data_hash: str  # sha256 of the source bytes


def prepare_classification_data(cfg: DataConfig, keep: Sequence[str] = ()) -> PreparedData:
    """Read cfg.path, clean it with cfg.clean and split it with cfg.split; the columns named
    in `keep` travel with each row (Split.columns)."""
    records, cleaned = read_and_clean(cfg.path, cfg, keep=keep)
    label_names = order_labels(cleaned.labels)
    if len(label_names) < 2:
        found = ", ".join(f"'{label}'" for label in label_names)
        raise LmforgeError(
            f"{cfg.path}: classification needs at least 2 classes, found "
            f"{len(label_names)}: {found} (after cleaning)"
        )
    train, val, test, warnings = split_dataset(cleaned.texts, cleaned.labels, cfg.split,
                                               cleaned.columns)
    if cleaned.repeated_texts:
        warnings.append(
            f"data.clean.dedupe is off: {cleaned.repeated_texts} rows repeat an earlier text "
            "and may land in both train and test"
        )
    splits = {"train": train, "val": val, "test": test}
    report = rows_report(records, cleaned) | {
        "label_balance": {
            name: label_counts(split.labels, label_names) for name, split in splits.items()
        },
        "split_sizes": {name: len(split.texts) for name, split in splits.items()},
        "length_chars": length_quantiles(cleaned.texts),
        "warnings": warnings,
    }
    return PreparedData(train, val, test, label_names, report, records.data_hash)


def read_labelled(
    path: str, cfg: DataConfig, keep: Sequence[str] = ()
) -> tuple[Split, dict[str, Any]]:
    """A labelled evaluation file, read and cleaned like training data but not split."""
    records, cleaned = read_and_clean(path, cfg, keep=keep)
    report = rows_report(records, cleaned) | {
        "label_balance": label_counts(cleaned.labels, order_labels(cleaned.labels)),
        "length_chars": length_quantiles(cleaned.texts),
    }
    return Split(cleaned.texts, cleaned.labels, cleaned.columns), report


def read_texts(path: str, text_column: str) -> tuple[list[str], dict[str, Any]]:
    """Unlabelled texts to predict on: a .txt file (one per line) or a table's text column.

    Nothing is cleaned here (the predictor cleans); blank and malformed rows are skipped and
    counted, with their line numbers, so predictions can be matched back to the input.
    """
    fmt = resolve_format(path)
    if fmt not in ("txt", *TABLE_FORMATS):
        raise LmforgeError(
            f"{path}: give a .txt file (one text per line) or a table (csv, tsv, jsonl, parquet)"
        )
    records = read_records(path, fmt, text_column, label_column=None)
    skipped = records.drops.counts()
    examples = records.drops.examples()
    if records.blank_lines.count:
        skipped["blank_line"] = records.blank_lines.count
        examples["blank_line"] = records.blank_lines.examples
    report = {
        "source": path,
        "format": records.format,
        "rows_read": records.rows_read,
        "texts": len(records.texts),
        "skipped": skipped,
        "examples": examples,
        "undecodable": _tally(records.undecodable, "rows"),
    }
    return records.texts, report


def read_and_clean(
    path: str,
    cfg: DataConfig,
    labelled: bool = True,
    clean_one: Callable[[str, CleanConfig, Counter[str]], str] = clean_text,
    keep: Sequence[str] = (),
) -> tuple[Records, CleanedRows]:
    """The rows of `path` read with cfg's format and columns (its label column only when
    `labelled`, and the columns named in `keep`), each cleaned with `clean_one` and filtered
    with cfg.clean."""
    label_column = cfg.label_column if labelled else None
    records = read_records(path, cfg.format, cfg.text_column, label_column, keep)
    cleaned = clean_rows(records, cfg.clean, clean_one)
    if not cleaned.texts:
        raise LmforgeError(
            f"no rows left after cleaning {path}: {records.rows_read} read, "
            f"dropped: {records.drops.summary()}"
        )
    return records, cleaned


def _tally(tally: Tally, count_key: str) -> dict[str, Any]:
    return {count_key: tally.count, "examples": list(tally.examples)}


def rows_report(records: Records, cleaned: CleanedRows, unit: str = "rows") -> dict[str, Any]:
    """The part of data_report.json about reading and cleaning, shared by every task and by
    training and eval data; `unit` names a row ("rows", "documents")."""
    labelled = cleaned.conflicts is not None
    always = [reason for reason in CLEAN_REASONS if labelled or "label" not in reason]
    report = {
        "source": records.source,
        "format": records.format,
        "data_hash": records.data_hash,
        f"{unit}_read": records.rows_read,
        f"{unit}_kept": len(cleaned.texts),
        "dropped": records.drops.counts(always=always),
        "examples": records.drops.examples(),
        "duplicates": cleaned.duplicates,
    }
    if labelled:
        report["conflicts"] = cleaned.conflicts
    if cleaned.pii is not None:
        report["pii"] = cleaned.pii
    return report | {
        "undecodable": _tally(records.undecodable, "rows"),
        "blank_lines": records.blank_lines.count,
        "ignored_files": _tally(records.ignored_files, "count"),
    }
