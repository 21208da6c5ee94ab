"""Generation corpora bigger than memory: a text (.txt, one document per line) or JSONL file read
line by line, each document cleaned as `prepare_documents` cleans it, deduplicated by an 8-byte
hash in a compact table (about 16 bytes per document kept, not the document), assigned to a split
by that hash, and handed on in chunks, so nothing but the current chunk is held.

The split by hash differs from the in-memory split (a seeded shuffle): a document's split is a
function of its text alone (its hash modulo 10,000 against data.split.val and .test), the same on
every machine and for every later read, so no document can be in two splits.
"""

from __future__ import annotations

import codecs
import hashlib
import json
from array import array
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.config import DataConfig
from lmforge.data.clean import CleanedRows, _length_problem
from lmforge.data.documents import clean_document
from lmforge.data.pii import PII_KINDS
from lmforge.data.prepare import rows_report
from lmforge.data.records import Records
from lmforge.data.sources import resolve_format
from lmforge.errors import LmforgeError

STREAMED_FORMATS = ("txt", "jsonl")
STREAM_ABOVE_BYTES = 1 << 30  # data.stream auto: files larger than this are read as a stream
SPLIT_BUCKETS = 10_000
HASH_BLOCK = 1 << 24  # bytes read at a time when hashing the source


class HashSet:
    """A set of 64-bit hashes in one flat array (open addressing, linear probing): 16 bytes per
    entry at most, where a Python set of ints takes about 70."""

    def __init__(self, capacity: int = 1 << 16) -> None:
        self.slots = array("Q", bytes(8 * capacity))  # 0 is "empty"; hashes are made odd
        self.size = 0

    def add(self, value: int) -> bool:
        """Add `value`; False when it was there already."""
        value |= 1
        if 2 * (self.size + 1) > len(self.slots):
            self._grow()
        slots = self.slots
        mask = len(slots) - 1
        i = (value >> 17) & mask
        while True:
            slot = slots[i]
            if slot == 0:
                self.slots[i] = value
                self.size += 1
                return True
            if slot == value:
                return False
            i = (i + 1) & mask

    def _grow(self) -> None:
        old, self.slots = self.slots, array("Q", bytes(16 * len(self.slots)))
        self.size = 0
        for value in old:  # straight from the old array: no list of every hash in between
            if value:
                self.add(value)


def streams(cfg: DataConfig) -> bool:
    """Whether cfg's data is read as a stream (data.stream, or with auto its size)."""
    if cfg.stream == "off":
        return False
    path = Path(cfg.path).expanduser()
    fmt = resolve_format(cfg.path, cfg.format) if path.is_file() else None
    if cfg.stream == "on":
        if fmt not in STREAMED_FORMATS:
            raise LmforgeError(f"data.stream on reads a .txt or .jsonl file; {cfg.path} is not")
        return True
    return fmt in STREAMED_FORMATS and path.stat().st_size > STREAM_ABOVE_BYTES


def file_hash(path: str) -> str:
    """sha256 of the file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(Path(path).expanduser(), "rb") as handle:
        while block := handle.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def split_of(key: int, val: float, test: float) -> str:
    bucket = key % SPLIT_BUCKETS
    if bucket < test * SPLIT_BUCKETS:
        return "test"
    if bucket < (test + val) * SPLIT_BUCKETS:
        return "val"
    return "train"


@dataclass
class StreamReport:
    """What a streamed read met, in data_report.json's shape (rows_report's)."""

    records: Records
    kept: int = 0
    split_sizes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("train", "val", "test"), 0))
    pii: Counter[str] = field(default_factory=Counter)
    chars: int = 0

    def as_dict(self, redact_pii: bool) -> dict[str, Any]:
        cleaned = CleanedRows(
            texts=[], labels=[], row_ids=[], duplicates=self.records.drops.count("duplicate"),
            conflicts=None, repeated_texts=0, columns={},
            pii={k: self.pii[k] for k in PII_KINDS} if redact_pii else None)
        report = rows_report(self.records, cleaned, unit="documents")
        return report | {"documents_kept": self.kept, "split_by": "document hash",
                         "split_sizes": dict(self.split_sizes), "streamed": True,
                         "chars_kept": self.chars}


def _raw_documents(path: str, fmt: str, text_column: str,
                   records: Records) -> Iterator[tuple[int, str]]:
    """(line number, text) of each document, counting blank, undecodable and broken lines."""
    with open(Path(path).expanduser(), "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if number == 1:
                raw = raw.removeprefix(codecs.BOM_UTF8)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                line = raw.decode("utf-8", errors="replace")
                records.undecodable.add(number)
            line = line.rstrip("\r\n")
            if not line.strip():
                records.blank_lines.add(number)
                continue
            records.rows_read += 1
            if fmt == "txt":
                yield number, line
                continue
            try:
                row = json.loads(line)
            except ValueError:
                records.drops.add("invalid_json", number)
                continue
            text = row.get(text_column) if isinstance(row, dict) else None
            if not isinstance(text, str) or not text.strip():
                records.drops.add("missing_text", number)
                continue
            yield number, text


def stream_documents(
    cfg: DataConfig, report: StreamReport, limit_chars: int | None = None,
    only: str | None = None,
) -> Iterator[tuple[str, str]]:
    """(split, cleaned document) of every document kept, in file order; `only` keeps one split,
    `limit_chars` stops after that many characters kept (a sample to train a tokenizer on)."""
    fmt = resolve_format(cfg.path, cfg.format)
    seen = HashSet()
    records = report.records
    for number, text in _raw_documents(cfg.path, fmt, cfg.text_column, records):
        text = clean_document(text, cfg.clean, report.pii)
        problem = _length_problem(text, cfg.clean)
        if problem:
            records.drops.add(problem, number)
            continue
        key = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
        if not seen.add(key) and cfg.clean.dedupe:
            records.drops.add("duplicate", number)
            continue
        split = split_of(key, cfg.split.val, cfg.split.test)
        report.kept += 1
        report.split_sizes[split] += 1
        report.chars += len(text)
        if only is None or split == only:
            yield split, text
        if limit_chars is not None and report.chars >= limit_chars:
            return
