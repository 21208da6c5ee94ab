"""lmforge: from data to a served Transformer, driven by one YAML config.

The Python API mirrors the CLI verbs: `train`, `evaluate`, `predict`, `generate`, `translate`,
`quickstart`, `export`, `compress`, `ensemble`, and `load` (a Predictor for a classifier, a
Generator for a generation model, a Translator for a translation model).
They are imported on first use, so `import lmforge` (and `lmforge --help`) stays fast.
"""

from typing import Any

from lmforge.version import __version__

__all__ = [
    "__version__", "compress", "ensemble", "evaluate", "export", "generate", "load", "predict",
    "quickstart", "train", "translate",
]
VERBS = ("train", "evaluate", "predict", "generate", "translate", "quickstart", "export",
         "compress", "ensemble")


def __getattr__(name: str) -> Any:
    if name == "load":
        from lmforge.bundle import load

        return load
    if name in VERBS:
        from lmforge import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'lmforge' has no attribute '{name}'")
