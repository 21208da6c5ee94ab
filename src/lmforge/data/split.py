"""Splitting cleaned rows into train/val/test, stratified by label and deterministic per seed,
and the record of which texts each split held (a run's splits.json)."""

from __future__ import annotations

import hashlib
import math
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lmforge.config import SplitConfig
from lmforge.errors import LmforgeError


@dataclass
class Split:
    texts: list[str]
    labels: list[str]  # always strings: a label 5 in the file is "5" here
    # Columns the model does not read, kept for slice metrics (eval.slices): name -> values.
    columns: dict[str, list[str]] = field(default_factory=dict)

    def take(self, indices: Iterable[int]) -> Split:
        """The rows at `indices`, in that order."""
        chosen = list(indices)
        columns = {name: [values[i] for i in chosen] for name, values in self.columns.items()}
        return Split([self.texts[i] for i in chosen], [self.labels[i] for i in chosen], columns)


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
    texts: list[str],
    labels: list[str],
    split: SplitConfig,
    columns: dict[str, list[str]] | None = None,
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

    rows = Split(texts, labels, columns or {})
    warnings = [w for w in (test_warning, val_warning) if w]
    return rows.take(train_idx), rows.take(val_idx), rows.take(test_idx), warnings


def cv_folds(
    texts: list[str], labels: list[str] | None, k: int, seed: int
) -> list[np.ndarray]:
    """The held-out indices of each of `k` folds: every row in exactly one, a text and its
    duplicates (same text_key) in the same fold, each fold's labels in about the proportions
    of the whole when `labels` are given."""
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    groups = [text_key(text) for text in texts]
    if len(set(groups)) < k:
        raise LmforgeError(f"{k} folds need at least {k} distinct texts; there are "
                           f"{len(set(groups))}")
    indices = np.arange(len(texts))
    if labels is None:
        # GroupKFold takes no seed: shuffle the groups' order by one, so folds follow `seed`.
        order = np.random.default_rng(seed).permutation(len(texts))
        return [np.sort(order[held]) for _, held in
                GroupKFold(n_splits=k).split(order, groups=[groups[i] for i in order])]
    smallest = min(Counter(labels).values())
    if smallest < k:
        raise LmforgeError(f"{k} folds need at least {k} rows of every class (stratified); "
                           f"the smallest class has {smallest}: lower --cv")
    folds = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    return [np.sort(held) for _, held in folds.split(indices, labels, groups)]


def text_key(text: str) -> str:
    """A cleaned text's key in splits.json: the first 16 hex digits of its sha256. Cleaned texts
    are what dedup compares, so a text and its duplicate share a key."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclass
class SplitRecord:
    """Which texts each split of a run held, by key and in split order, and the hash of the
    data they came from: what lets a later evaluation find the same test split in edited data,
    and keep texts the model trained on out of any test set."""

    data_hash: str
    keys: dict[str, list[str]]  # split name -> the keys of its texts, in split order

    @classmethod
    def of(cls, data_hash: str, splits: dict[str, list[str]]) -> SplitRecord:
        keys = {name: [text_key(text) for text in texts] for name, texts in splits.items()}
        return cls(data_hash, keys)

    def to_json(self) -> dict[str, Any]:
        return {"data_hash": self.data_hash, "key": "sha256 of the cleaned text, 16 hex digits",
                "splits": self.keys}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> SplitRecord:
        return cls(value["data_hash"], value["splits"])

    def locate(self, name: str, texts: list[str]) -> tuple[list[int], int]:
        """(indices into `texts` of split `name`'s texts, in split order; how many are missing)."""
        slots: defaultdict[str, list[int]] = defaultdict(list)
        for slot, key in enumerate(self.keys[name]):
            slots[key].append(slot)
        found: list[int | None] = [None] * len(self.keys[name])
        for index, text in enumerate(texts):
            free = slots.get(text_key(text))
            if free:
                found[free.pop(0)] = index
        return [i for i in found if i is not None], found.count(None)

    def unseen(self, texts: list[str]) -> list[int]:
        """Indices of the texts that were in neither train nor val (early stopping saw val)."""
        seen = {key for name in ("train", "val") for key in self.keys.get(name, [])}
        return [i for i, text in enumerate(texts) if text_key(text) not in seen]
