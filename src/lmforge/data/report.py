"""Bookkeeping for data_report.json: why rows were dropped, label balance, text-length quantiles."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

# A row is named the way its user would find it: a 1-based line number in a file, or
# "file:line" / a relative file path when the source has several files.
RowId = int | str

MAX_EXAMPLES = 10

# Reasons the cleaning stage can drop a row; they always appear in the report (0 when none),
# so a reader can rely on the keys. Reasons from reading a file appear only when they happened.
CLEAN_REASONS = ("empty", "too_short", "too_long", "duplicate", "conflicting_labels")


@dataclass
class Tally:
    """How many rows something happened to, with the first few row ids a user can look up."""

    count: int = 0
    examples: list[RowId] = field(default_factory=list)

    def add(self, row_id: RowId) -> None:
        self.count += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(row_id)


@dataclass
class DropLog:
    """Rows dropped, per reason, in the order the reasons first occurred."""

    reasons: dict[str, Tally] = field(default_factory=dict)

    def add(self, reason: str, row_id: RowId) -> None:
        self.reasons.setdefault(reason, Tally()).add(row_id)

    def count(self, reason: str) -> int:
        tally = self.reasons.get(reason)
        return tally.count if tally else 0

    def total(self) -> int:
        return sum(tally.count for tally in self.reasons.values())

    def counts(self, always: Iterable[str] = ()) -> dict[str, int]:
        """Counts of the reasons that occurred, then of the `always` reasons (0 when none)."""
        always = tuple(always)
        counts = {r: tally.count for r, tally in self.reasons.items() if r not in always}
        return counts | {reason: self.count(reason) for reason in always}

    def examples(self) -> dict[str, list[RowId]]:
        return {reason: list(tally.examples) for reason, tally in self.reasons.items()}

    def summary(self) -> str:
        """'6 too_short, 4 duplicate': the counts an error message shows."""
        parts = [f"{tally.count} {reason}" for reason, tally in self.reasons.items()]
        return ", ".join(parts) or "nothing"


def length_quantiles(texts: list[str]) -> dict[str, float]:
    """Quantiles of text length in characters (min, p50, p90, p99, max)."""
    if not texts:
        return {}
    lengths = np.fromiter((len(text) for text in texts), dtype=np.int64, count=len(texts))
    p50, p90, p99 = np.percentile(lengths, [50, 90, 99])
    return {
        "min": int(lengths.min()),
        "p50": round(float(p50), 1),
        "p90": round(float(p90), 1),
        "p99": round(float(p99), 1),
        "max": int(lengths.max()),
    }


def label_counts(labels: list[str], label_names: list[str]) -> dict[str, int]:
    """Rows per label, listing every label (0 included) so a class missing from a split shows."""
    counts = dict.fromkeys(label_names, 0)
    for label in labels:
        counts[label] += 1
    return counts
