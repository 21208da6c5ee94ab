"""Feature tables: a table's feature columns and target read into rows, each column typed (a
number or a category), and the preprocessing a bundle keeps (FeatureSchema): numbers standardized
with the training split's statistics, a missing number imputed with the training mean beside an
indicator, categories as ids with 0 for a value unseen in training (or missing).

Every row the table holds is accounted for in the data report: rows the parser could not read,
rows without a usable target, duplicates (identical in every feature and the target), and per
column the cells that were missing or not a number.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.config import DataConfig
from lmforge.data.builtin import BUILTIN_TABLES, read_builtin_table
from lmforge.data.records import Records, cell_str
from lmforge.data.report import DropLog, RowId
from lmforge.data.sources import TABLE_FORMATS, read_table, resolve_format
from lmforge.errors import LmforgeError

SCHEMA_FILE = "features.json"
MISSING = frozenset({"", "na", "n/a", "nan", "null", "none", "?"})  # cells read as missing
NUMBER_SHARE = 0.95  # a column is numeric when this share of its present cells are numbers


@dataclass
class FeatureRows:
    """Rows of a feature table: each row's feature cells (column -> raw value) and target."""

    cells: list[dict[str, Any]]
    targets: list[str]  # as read ("5", "class_0"); a regression target parses as a number
    row_ids: list[RowId]

    def take(self, indices: Any) -> FeatureRows:
        chosen = [int(i) for i in indices]
        return FeatureRows([self.cells[i] for i in chosen], [self.targets[i] for i in chosen],
                           [self.row_ids[i] for i in chosen])

    def keys(self) -> list[str]:
        """One string per row (its features and target), what splits.json records."""
        return [json.dumps([row, target], sort_keys=True, default=str)
                for row, target in zip(self.cells, self.targets, strict=True)]


def is_missing(value: Any) -> bool:
    text = cell_str(value)
    return text is None or text.strip().lower() in MISSING


def as_number(value: Any) -> float | None:
    """A cell as a finite number, or None when it is not one (missing cells included)."""
    if isinstance(value, bool) or is_missing(value):
        return None
    if isinstance(value, (int, float)):
        number = float(value)
    else:
        try:
            number = float(str(value).strip())
        except ValueError:
            return None
    return number if math.isfinite(number) else None


def as_category(value: Any) -> str | None:
    """A cell as a category name ("3" and 3.0 alike), or None when missing."""
    if is_missing(value):
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(cell_str(value)).strip()


def table_columns(path: str, fmt: str = "auto") -> list[str] | None:
    """The columns of a table file or built-in table, or None if `path` is no table."""
    if path in BUILTIN_TABLES:
        return read_builtin_table(path)[0]
    try:
        fmt = resolve_format(path, fmt)
    except LmforgeError:
        return None
    if fmt not in TABLE_FORMATS:
        return None
    return read_table(path, fmt, Records(source=path, format=fmt)).columns


def read_feature_rows(
    data: DataConfig, features: list[str] | None, path: str | None = None,
    target: bool = True,
) -> tuple[list[str], FeatureRows, dict[str, Any]]:
    """(feature columns, rows, report) of the table at `path` (default data.path): every
    column but the target unless `features` names them. With `target`, a row whose target cell
    is missing is dropped and counted; a row the parser cannot read is counted, never fatal."""
    path = path or data.path
    label = data.label_column
    records = Records(source=path, format="table")
    if path in BUILTIN_TABLES:
        columns, raw, records.data_hash = read_builtin_table(path)
        parsed: list[tuple[RowId, dict[str, Any]]] = list(enumerate(raw, start=2))
        records.rows_read = len(parsed)
    else:
        fmt = resolve_format(path, data.format)
        if fmt not in TABLE_FORMATS:
            raise LmforgeError(f"{path} is not a table; a feature table is a csv, tsv, jsonl or "
                               "parquet file")
        table = read_table(path, fmt, records)
        columns, parsed = table.columns, table.rows
    if not parsed and not records.drops.total():
        raise LmforgeError(f"{path} has no rows")
    if target and label not in columns:
        raise LmforgeError(f"column '{label}' not found in {path}; columns are: "
                           f"{', '.join(columns)} (set data.label_column)")
    chosen = list(features) if features else [c for c in columns if c != label]
    absent = [column for column in chosen if column not in columns]
    if absent:
        raise LmforgeError(f"feature column(s) {', '.join(absent)} not found in {path}; columns "
                           f"are: {', '.join(columns)} (set data.features)")
    if target and label in chosen:
        raise LmforgeError(f"data.features names the target column '{label}'; a feature "
                           "cannot be the value to predict")
    if not chosen:
        raise LmforgeError(f"{path} has no feature columns besides '{label}'")
    rows = FeatureRows([], [], [])
    for row_id, cells in parsed:
        value = cells.get(label) if target else None
        if any(isinstance(cells.get(c), (list, dict)) for c in chosen):
            records.drops.add("nested_cell", row_id)
        elif target and is_missing(value):
            records.drops.add("missing_label", row_id)
        else:
            rows.cells.append({column: cells.get(column) for column in chosen})
            rows.targets.append("" if value is None else str(cell_str(value)).strip())
            rows.row_ids.append(row_id)
    report = {"source": path, "data_hash": records.data_hash, "rows_read": records.rows_read,
              "drops": records.drops}
    return chosen, rows, report


def drop_duplicates(rows: FeatureRows, drops: DropLog) -> FeatureRows:
    """Rows identical in every feature and the target, kept once (the rest counted); rows with
    the same features and different targets are data, kept."""
    seen: set[str] = set()
    kept = []
    for index, key in enumerate(rows.keys()):
        if key in seen:
            drops.add("duplicate", rows.row_ids[index])
            continue
        seen.add(key)
        kept.append(index)
    return rows.take(kept)


def column_kinds(columns: list[str], rows: FeatureRows) -> dict[str, str]:
    """Each column's kind: "number" when nearly all its present cells are numbers, else
    "category" (a column with no present cell is a category: all of it is "unknown")."""
    kinds = {}
    for column in columns:
        present = [row[column] for row in rows.cells if not is_missing(row[column])]
        numbers = sum(as_number(value) is not None for value in present)
        kinds[column] = "number" if present and numbers >= NUMBER_SHARE * len(present) else \
            "category"
    return kinds


@dataclass
class NumberColumn:
    name: str
    mean: float
    std: float
    indicator: bool  # a 0/1 input saying the value was missing (training had missing values)


@dataclass
class CategoryColumn:
    name: str
    values: list[str]  # id i + 1 is values[i]; id 0 is unknown or missing


@dataclass
class FeatureSchema:
    """What a model reads of a row, and how: the preprocessing fitted on the training split,
    saved in the bundle (features.json) so that predict and serve apply exactly the same."""

    numbers: list[NumberColumn]
    categories: list[CategoryColumn]
    target: str  # the target column's name (for reports)
    counts: dict[str, Counter] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def fit(cls, columns: list[str], kinds: dict[str, str], train: FeatureRows,
            target: str) -> FeatureSchema:
        numbers, categories = [], []
        for column in columns:
            if kinds[column] == "number":
                values = [as_number(row[column]) for row in train.cells]
                present = np.array([v for v in values if v is not None], dtype=np.float64)
                mean = float(present.mean()) if present.size else 0.0
                std = float(present.std()) if present.size else 0.0
                numbers.append(NumberColumn(column, mean, std if std > 1e-12 else 1.0,
                                            len(present) < len(values)))
            else:
                counts = Counter(as_category(row[column]) for row in train.cells)
                counts.pop(None, None)
                ordered = sorted(counts, key=lambda value: (-counts[value], value))
                categories.append(CategoryColumn(column, ordered))
        return cls(numbers, categories, target)

    @property
    def columns(self) -> list[str]:
        return [c.name for c in self.numbers] + [c.name for c in self.categories]

    @property
    def n_numeric_inputs(self) -> int:
        """Standardized numbers, then one indicator per number column that has one."""
        return len(self.numbers) + sum(c.indicator for c in self.numbers)

    @property
    def cardinalities(self) -> list[int]:
        """Ids per category column, the unknown id 0 included."""
        return [len(c.values) + 1 for c in self.categories]

    @property
    def width(self) -> int:
        return self.n_numeric_inputs + len(self.categories)

    def encode(self, cells: list[dict[str, Any]]) -> np.ndarray:
        """(rows, width) float32: standardized numbers (missing ones at the training mean, i.e.
        0), their indicators, then category ids. self.counts tallies per column the cells that
        were missing, not numbers, or categories unseen in training."""
        out = np.zeros((len(cells), self.width), dtype=np.float32)
        tally = self.counts
        for j, column in enumerate(self.numbers):
            for i, row in enumerate(cells):
                value = as_number(row.get(column.name))
                if value is None:
                    reason = "missing" if is_missing(row.get(column.name)) else "not_a_number"
                    tally.setdefault(reason, Counter())[column.name] += 1
                    continue
                out[i, j] = (value - column.mean) / column.std
        indicators = [j for j, column in enumerate(self.numbers) if column.indicator]
        for k, j in enumerate(indicators):
            name = self.numbers[j].name
            for i, row in enumerate(cells):
                out[i, len(self.numbers) + k] = float(as_number(row.get(name)) is None)
        start = self.n_numeric_inputs
        for j, column in enumerate(self.categories):
            index = {value: i + 1 for i, value in enumerate(column.values)}
            for i, row in enumerate(cells):
                value = as_category(row.get(column.name))
                if value is None:
                    tally.setdefault("missing", Counter())[column.name] += 1
                elif value not in index:
                    tally.setdefault("unseen_category", Counter())[column.name] += 1
                out[i, start + j] = index.get(value, 0) if value is not None else 0
        return out

    def take_counts(self) -> dict[str, dict[str, int]]:
        """The tallies since the last call (per reason, per column), reset."""
        counts = {reason: dict(sorted(c.items())) for reason, c in self.counts.items()}
        self.counts = {}
        return counts

    def row_problem(self, row: Any) -> str | None:
        """Why a row sent for prediction cannot be read, naming the feature, or None: a feature
        absent, a number column given a non-number, a nested value. null is a missing value."""
        if not isinstance(row, dict):
            return f"a row must be a JSON object of features (got {type(row).__name__})"
        for name in self.columns:
            if name not in row:
                return f"feature '{name}' is missing"
            if isinstance(row[name], (list, dict)):
                return f"feature '{name}' must be a number or a string, not a JSON array/object"
        for column in self.numbers:
            value = row[column.name]
            if not is_missing(value) and as_number(value) is None:
                return f"feature '{column.name}' must be a number (got {value!r:.40})"
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"numbers": [asdict(c) for c in self.numbers],
                "categories": [asdict(c) for c in self.categories], "target": self.target}

    def save(self, directory: str | Path) -> None:
        (Path(directory) / SCHEMA_FILE).write_text(json.dumps(self.to_dict(), indent=1),
                                                   encoding="utf-8")

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    @classmethod
    def load(cls, directory: str | Path) -> FeatureSchema:
        path = Path(directory) / SCHEMA_FILE
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            return cls([NumberColumn(**c) for c in raw["numbers"]],
                       [CategoryColumn(**c) for c in raw["categories"]], raw["target"])
        except FileNotFoundError:
            raise LmforgeError(f"{path}: missing; a feature table's bundle keeps its "
                               "preprocessing there") from None
        except (ValueError, KeyError, TypeError) as error:
            raise LmforgeError(f"{path}: not a feature schema ({error})") from None
