"""Cleaning: the per-text transform shared with the predictor, and the row filters of datasets."""

from __future__ import annotations

import html
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from lmforge.config import CleanConfig
from lmforge.data.pii import PII_KINDS, redact_pii
from lmforge.data.records import Records
from lmforge.data.report import RowId

_SCRIPT_OR_STYLE = re.compile(r"<(script|style)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_TAG = re.compile(r"<(/?)([a-zA-Z][\w:-]*)\b[^<>]*>|<![a-zA-Z][^<>]*>")
_WHITESPACE = re.compile(r"\s+")
# Tags that separate words; removing them without a space would glue "line<br>next" together.
_BREAKING_TAGS = frozenset(
    "address article aside blockquote br dd div dl dt footer h1 h2 h3 h4 h5 h6 header hr li "
    "main nav ol p pre section table td th tr ul".split()
)


def _replace_tag(match: re.Match[str]) -> str:
    name = (match.group(2) or "").lower()
    return " " if name in _BREAKING_TAGS else ""


def clean_text(text: str, clean: CleanConfig, pii: Counter[str] | None = None) -> str:
    """The per-text transform of training and serving alike; it never drops a text. The PII
    it redacts is counted in `pii` (kind -> count) when given."""
    if clean.strip_html:
        text = _COMMENT.sub("", _SCRIPT_OR_STYLE.sub(" ", text))
        # Unescape after removing tags, so an escaped "&lt;b&gt;" survives as the text "<b>".
        text = html.unescape(_TAG.sub(_replace_tag, text))
    if clean.normalize:
        text = _WHITESPACE.sub(" ", unicodedata.normalize("NFKC", text)).strip()
    if clean.redact_pii:  # after NFKC, so full-width digits and "＠" are caught too
        text = redact_pii(text, pii)
    return text


@dataclass
class CleanedRows:
    """Rows that survived cleaning, and the numbers the report needs about the rest."""

    texts: list[str]
    labels: list[str]  # empty when the rows have no labels
    row_ids: list[RowId]
    duplicates: int
    conflicts: dict[str, int] | None  # None when the rows have no labels
    repeated_texts: int  # texts kept more than once because dedupe is off
    pii: dict[str, int] | None  # PII redacted per kind, over every row read; None when off
    columns: dict[str, list[str]]  # records.columns of the rows kept


def _length_problem(text: str, clean: CleanConfig) -> str | None:
    if not text.strip():
        return "empty"
    if len(text) < clean.min_chars:
        return "too_short"
    if clean.max_chars is not None and len(text) > clean.max_chars:
        return "too_long"
    return None


def clean_rows(
    records: Records,
    clean: CleanConfig,
    clean_one: Callable[[str, CleanConfig, Counter[str]], str] = clean_text,
) -> CleanedRows:
    """Clean each text with `clean_one`, then drop empty/too short/too long rows, conflicts
    (labelled rows only) and duplicates, counting each in records.drops."""
    labelled = records.labels is not None
    labels = records.labels if records.labels is not None else [""] * len(records.texts)
    kept: list[tuple[str, str, RowId]] = []
    pii: Counter[str] = Counter()
    for text, label, row_id in zip(records.texts, labels, records.row_ids, strict=True):
        text = clean_one(text, clean, pii)
        problem = _length_problem(text, clean)
        if problem:
            records.drops.add(problem, row_id)
        else:
            kept.append((text, label, row_id))

    labels_of: defaultdict[str, set[str]] = defaultdict(set)
    for text, label, _ in kept:
        labels_of[text].add(label)
    # A text labelled two ways teaches nothing and would poison evaluation: drop every copy.
    conflicting = {text for text, seen in labels_of.items() if len(seen) > 1}

    out: list[tuple[str, str, RowId]] = []
    seen_texts: set[str] = set()
    repeated = 0
    for text, label, row_id in kept:
        if text in conflicting:
            records.drops.add("conflicting_labels", row_id)
            continue
        if text in seen_texts:
            if clean.dedupe:
                records.drops.add("duplicate", row_id)
                continue
            repeated += 1
        seen_texts.add(text)
        out.append((text, label, row_id))

    conflicts = {"texts": len(conflicting), "rows": records.drops.count("conflicting_labels")}
    return CleanedRows(
        texts=[text for text, _, _ in out],
        labels=[label for _, label, _ in out] if labelled else [],
        row_ids=[row_id for _, _, row_id in out],
        duplicates=records.drops.count("duplicate"),
        conflicts=conflicts if labelled else None,
        repeated_texts=repeated,
        pii={kind: pii[kind] for kind in PII_KINDS} if clean.redact_pii else None,
        columns=_kept_columns(records, [row_id for _, _, row_id in out]),
    )


def _kept_columns(records: Records, kept: list[RowId]) -> dict[str, list[str]]:
    if not records.columns:
        return {}
    position = {row_id: i for i, row_id in enumerate(records.row_ids)}
    return {name: [values[position[row_id]] for row_id in kept]
            for name, values in records.columns.items()}
