"""Sentence pairs (translation): a table's source and target columns, two aligned plain-text
files (line i of one the translation of line i of the other), or the built-in Chinese–English
sentences, read, cleaned and split so that no source sentence is in two splits.

Every row read is accounted for in the report: a missing or empty side, a pair whose sides'
lengths are wildly apart, a repeated source (the first is kept) are dropped and counted.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.config import DataConfig, SplitConfig
from lmforge.data.builtin import HSK_SENTENCES, is_builtin, read_package_json
from lmforge.data.clean import clean_text
from lmforge.data.records import Records, cell_str, decode_lines
from lmforge.data.report import RowId, length_quantiles
from lmforge.data.sources import (
    EXTENSIONS,
    TABLE_FORMATS,
    read_bytes,
    read_table,
    resolve_format,
)
from lmforge.data.split import split_dataset
from lmforge.errors import LmforgeError

BUILTIN_HSK = "builtin:hsk-zh-en"
# name -> (package, file inside it, how to install it); builtin.HSK_SENTENCES's records, each
# Chinese sentence paired with its "translation": {"en": ...}.
BUILTIN_PAIRS = {BUILTIN_HSK: HSK_SENTENCES}
PAIR_REASONS = ("missing_source", "missing_target", "empty", "too_short", "too_long",
                "length_mismatch", "duplicate_source")


@dataclass
class Pairs:
    """Sentence pairs, in the order read, and each pair's row id."""

    sources: list[str]
    targets: list[str]
    row_ids: list[RowId]

    def add(self, source: str | None, target: str | None, row_id: RowId,
            records: Records) -> None:
        """Keep a pair read, or count it in records.drops when a side is missing or blank."""
        if source is None or not source.strip():
            records.drops.add("missing_source", row_id)
        elif target is None or not target.strip():
            records.drops.add("missing_target", row_id)
        else:
            self.sources.append(source)
            self.targets.append(target)
            self.row_ids.append(row_id)

    def take(self, indices: Any) -> Pairs:
        return Pairs([self.sources[i] for i in indices], [self.targets[i] for i in indices],
                     [self.row_ids[i] for i in indices])


@dataclass
class PreparedPairs:
    train: Pairs
    val: Pairs
    test: Pairs
    report: dict[str, Any]  # data_report.json
    data_hash: str


def read_pairs(path: str, cfg: DataConfig) -> tuple[Records, Pairs]:
    """The raw pairs of a table (cfg's source and target columns) or of a built-in corpus;
    rows with a side missing are counted in records.drops. With cfg.target_path, `path` and
    it are two aligned plain-text files."""
    if cfg.target_path is not None:
        return read_aligned_files(path, cfg.target_path)
    if is_builtin(path):
        return _read_builtin_pairs(path)
    fmt = resolve_format(path, cfg.format)
    if fmt not in TABLE_FORMATS:
        raise LmforgeError(f"{path}: translation reads a table (csv, tsv, jsonl, parquet) with "
                           f"columns '{cfg.source_column}' and '{cfg.target_column}'")
    records = Records(source=path, format=fmt)
    table = read_table(path, fmt, records)
    for column, setting in ((cfg.source_column, "data.source_column"),
                            (cfg.target_column, "data.target_column")):
        if table.rows and column not in table.columns:
            raise LmforgeError(f"column '{column}' not found in {path}; columns are: "
                               f"{', '.join(table.columns)} (set {setting})")
    pairs = Pairs([], [], [])
    for row_id, cells in table.rows:
        if not isinstance(cells, dict):
            continue
        if isinstance(cells.get(cfg.source_column), (list, dict)) or isinstance(
                cells.get(cfg.target_column), (list, dict)):
            records.drops.add("nested_cell", row_id)
            continue
        pairs.add(cell_str(cells.get(cfg.source_column)), cell_str(cells.get(cfg.target_column)),
                  row_id, records)
    if records.rows_read == 0 and not table.rows:
        raise LmforgeError(f"{path} has no rows: no sentence pairs in it")
    records.rows_read = max(records.rows_read, len(table.rows))
    return records, pairs


def read_aligned_files(path: str, target_path: str) -> tuple[Records, Pairs]:
    """The pairs of two plain-text files, line i of `path` translated by line i of
    `target_path`; a pair with a blank side is counted as missing that side. Files of different
    line counts are not aligned: an error naming both and their counts."""
    read = {}
    for file in (path, target_path):
        if not Path(file).expanduser().is_file():
            raise LmforgeError(f"data file not found: {file}")
        read[file] = read_bytes(file)
    (sources, bad_sources), (targets, bad_targets) = (decode_lines(read[path]),
                                                      decode_lines(read[target_path]))
    if len(sources) != len(targets):
        raise LmforgeError(f"{path} has {len(sources):,} lines but {target_path} has "
                           f"{len(targets):,}: aligned files hold one sentence per line, line i "
                           "of one the translation of line i of the other")
    if not sources:
        raise LmforgeError(f"{path} and {target_path} are empty: no sentence pairs in them")
    digest = hashlib.sha256()
    for data in read.values():
        digest.update(hashlib.sha256(data).digest())
    records = Records(source=f"{path} + {target_path}", format="aligned",
                      data_hash=digest.hexdigest())
    pairs = Pairs([], [], [])
    for number, (source, target) in enumerate(zip(sources, targets, strict=True), start=1):
        records.rows_read += 1
        if number in bad_sources or number in bad_targets:
            records.undecodable.add(number)
        pairs.add(source, target, number, records)
    return records, pairs


def aligned_partner(path: str) -> str | None:
    """`lmforge init`: the file aligned with the plain-text file `path`: the one beside it with
    the same name and another language's suffix (corpus.zh → corpus.en), if there is exactly
    one. None for a table, a .txt file or a built-in name."""
    where = Path(path).expanduser()
    if is_builtin(path) or not where.is_file() or where.suffix.lower() in ("", *EXTENSIONS):
        return None
    partners = [other for other in where.parent.glob(f"{where.stem}.*")
                if other != where and other.is_file() and other.suffix.lower() not in EXTENSIONS]
    return str(partners[0]) if len(partners) == 1 else None


def _read_builtin_pairs(name: str) -> tuple[Records, Pairs]:
    if name not in BUILTIN_PAIRS:
        raise LmforgeError(f"unknown built-in sentence pairs '{name}'; known: "
                           f"{', '.join(BUILTIN_PAIRS)}")
    items, digest = read_package_json(name, *BUILTIN_PAIRS[name])
    records = Records(source=name, format="builtin", data_hash=digest)
    pairs = Pairs([], [], [])
    for number, item in enumerate(items, start=1):
        records.rows_read += 1
        row_id = item.get("id", number) if isinstance(item, dict) else number
        translation = item.get("translation") if isinstance(item, dict) else None
        source = cell_str(item.get("chinese")) if isinstance(item, dict) else None
        target = cell_str(translation.get("en")) if isinstance(translation, dict) else None
        pairs.add(source, target, row_id, records)
    return records, pairs


def clean_pairs(records: Records, pairs: Pairs, cfg: DataConfig, max_ratio: float) -> Pairs:
    """Both sides cleaned with cfg.clean; pairs with an empty, too short or too long side, with
    one side over `max_ratio` times the other's characters, or with a source seen before, are
    dropped and counted in records.drops."""
    kept, seen = Pairs([], [], []), set()
    for source, target, row_id in zip(pairs.sources, pairs.targets, pairs.row_ids, strict=True):
        source, target = clean_text(source, cfg.clean), clean_text(target, cfg.clean)
        problem = _pair_problem(source, target, cfg, max_ratio)
        if problem is None and source in seen:
            problem = "duplicate_source"
        if problem is not None:
            records.drops.add(problem, row_id)
            continue
        seen.add(source)
        kept.sources.append(source)
        kept.targets.append(target)
        kept.row_ids.append(row_id)
    return kept


def _pair_problem(source: str, target: str, cfg: DataConfig, max_ratio: float) -> str | None:
    shorter, longer = sorted((len(source), len(target)))
    if shorter == 0:
        return "empty"
    if shorter < cfg.clean.min_chars:
        return "too_short"
    if cfg.clean.max_chars is not None and longer > cfg.clean.max_chars:
        return "too_long"
    if longer > max_ratio * shorter:
        return "length_mismatch"
    return None


def prepare_pairs(cfg: DataConfig, max_ratio: float) -> PreparedPairs:
    """Read, clean and split the pairs (sources deduplicated first: no source in two splits)."""
    records, raw = read_pairs(cfg.path, cfg)
    pairs = clean_pairs(records, raw, cfg, max_ratio)
    if not pairs.sources:
        raise LmforgeError(f"no sentence pairs left after cleaning {cfg.path}: "
                           f"{records.rows_read} read, dropped: {records.drops.summary()}")
    split = SplitConfig(val=cfg.split.val, test=cfg.split.test, seed=cfg.split.seed,
                        stratify=False)
    train, val, test, _ = split_dataset(pairs.sources, [""] * len(pairs.sources), split,
                                        {"index": [str(i) for i in range(len(pairs.sources))]})
    parts = {name: pairs.take([int(i) for i in part.columns["index"]])
             for name, part in (("train", train), ("val", val), ("test", test))}
    report = {
        "source": records.source,
        "format": records.format,
        "data_hash": records.data_hash,
        "rows_read": records.rows_read,
        "rows_kept": len(pairs.sources),
        "dropped": records.drops.counts(always=PAIR_REASONS),
        "examples": records.drops.examples(),
        "undecodable": {"rows": records.undecodable.count,
                        "examples": list(records.undecodable.examples)},
        "blank_lines": records.blank_lines.count,
        "split_sizes": {name: len(part.sources) for name, part in parts.items()},
        "length_chars": {"source": length_quantiles(pairs.sources),
                         "target": length_quantiles(pairs.targets)},
    }
    # the task's own hash: the same file read as pairs is not the same data as read as texts
    data_hash = hashlib.sha256(f"translation\0{records.data_hash}\0{cfg.source_column}\0"
                               f"{cfg.target_column}".encode()).hexdigest()
    return PreparedPairs(parts["train"], parts["val"], parts["test"], report, data_hash)
