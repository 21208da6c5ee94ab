"""Splitting cleaned rows into train/val/test, stratified by label and deterministic per seed."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from lmforge.config import SplitConfig
from lmforge.errors import LmforgeError


@dataclass
class Split:
    texts: list[str]
    labels: list[str]  # always strings: a label 5 in the file is "5" here


def order_labels(labels: Iterable[str]) -> list[str]:
    """Distinct labels, numerically ordered when all are integers ("2" < "10"), else sorted."""
    distinct = set(labels)
    try:
        return sorted(distinct, key=lambda label: (int(label), label))
    except ValueError:
        return sorted(distinct)


def _take(
    indices: np.ndarray, labels: list[str], fraction: float, seed: int, stratify: bool, name: str
) -> tuple[np.ndarray, np.ndarray, str | None]:
    """Split `fraction` of `indices` off as split `name`: (rest, taken, warning or None)."""
    # Imported here: sklearn takes a second to import, and the predictor imports lmforge.data.
    from sklearn.model_selection import train_test_split

    if fraction == 0:
        return indices, indices[:0], None
    strata = [labels[i] for i in indices] if stratify else None
    try:
        rest, taken = train_test_split(
            indices, test_size=fraction, random_state=seed, stratify=strata
        )
        return rest, taken, None
    except ValueError:
        if strata is None:
            raise
    counts = Counter(strata)
    label, smallest = min(counts.items(), key=lambda item: item[1])
    if smallest < 2:
        why = f"class '{label}' has only {smallest} row"
    else:
        taken = math.ceil(fraction * len(indices))
        why = f"{taken} of {len(indices)} rows cannot hold all {len(counts)} classes on each side"
    rest, taken = train_test_split(indices, test_size=fraction, random_state=seed)
    return rest, taken, f"the {name} split is not stratified: {why}"


def split_dataset(
    texts: list[str], labels: list[str], split: SplitConfig
) -> tuple[Split, Split, Split, list[str]]:
    """(train, val, test, warnings); unstratified, with a warning, when a class is too small."""
    n = len(texts)
    n_test = math.ceil(split.test * n)
    val_fraction = split.val / (1 - split.test)
    n_val = math.ceil(val_fraction * (n - n_test))
    if n - n_test - n_val < 1:
        raise LmforgeError(
            f"too few rows to split: {n} after cleaning leave no training rows with "
            f"data.split.val={split.val} and data.split.test={split.test}"
        )
    indices = np.arange(n)
    rest, test_idx, test_warning = _take(
        indices, labels, split.test, split.seed, split.stratify, "test"
    )
    train_idx, val_idx, val_warning = _take(
        rest, labels, val_fraction, split.seed, split.stratify, "val"
    )

    def subset(chosen: np.ndarray) -> Split:
        return Split(texts=[texts[i] for i in chosen], labels=[labels[i] for i in chosen])

    warnings = [w for w in (test_warning, val_warning) if w]
    return subset(train_idx), subset(val_idx), subset(test_idx), warnings
