"""The bundle: everything needed to use a trained model, and the Predictor that uses it.

    model/
      lmforge.json        task, labels, cleaning, max length, architecture, metrics, source run
      model.safetensors   weights (a pretrained model's bundle also has config.json: the
                          save_pretrained layout, so `transformers` loads it as it is)
      tokenizer.json      (or the pretrained tokenizer's files)

Loading a bundle and predicting applies exactly the cleaning and tokenization of training.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model, save_model
from torch import nn

from lmforge import __version__
from lmforge.config import CleanConfig
from lmforge.data import clean_text
from lmforge.errors import LmforgeError
from lmforge.models import EncoderClassifier, PretrainedClassifier, TransformerConfig
from lmforge.tasks.classification import predict_logits, softmax
from lmforge.tokenization import Encoded, TextTokenizer
from lmforge.training import resolve_device

META_FILE = "lmforge.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass
class Predictions:
    rows: list[dict[str, Any]]  # {"text", "label", "score", "probs": {label: p}}
    n_truncated: int


class Predictor:
    """A loaded classification bundle: `predict(texts)` cleans, tokenizes, runs and labels."""

    def __init__(self, model: nn.Module, tokenizer: TextTokenizer, meta: dict[str, Any]) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.meta = meta
        self.labels: list[str] = meta["labels"]
        self.max_length: int = meta["max_length"]
        self.clean = CleanConfig(**meta["clean"])

    def encode(self, texts: list[str], max_length: int | None = None) -> Encoded:
        """Clean and tokenize exactly as training did (cut to max_length, default the model's)."""
        cleaned = [clean_text(text, self.clean) for text in texts]
        return self.tokenizer.encode(cleaned, max_length or self.max_length)

    def logits(self, texts: list[str], batch_size: int = 64) -> tuple[np.ndarray, int]:
        """(n, classes) logits in `labels` order, and how many texts were truncated."""
        encoded = self.encode(texts)
        logits = predict_logits(self.model, encoded.ids, self.tokenizer.pad_id, batch_size)
        return logits, encoded.n_truncated

    def probabilities(self, texts: list[str], batch_size: int = 64) -> tuple[np.ndarray, int]:
        """(n, classes) probabilities in `labels` order, and how many texts were truncated."""
        logits, n_truncated = self.logits(texts, batch_size)
        probs = softmax(logits) if len(texts) else np.zeros((0, len(self.labels)))
        return probs, n_truncated

    def predict_batch(self, texts: list[str], batch_size: int = 64) -> Predictions:
        probs, n_truncated = self.probabilities(texts, batch_size)
        rows = []
        for text, p in zip(texts, probs, strict=True):
            best = int(p.argmax())
            rows.append(
                {
                    "text": text,
                    "label": self.labels[best],
                    "score": float(p[best]),
                    "probs": {label: float(v) for label, v in zip(self.labels, p, strict=True)},
                }
            )
        return Predictions(rows, n_truncated)

    def predict(self, texts: list[str], batch_size: int = 64) -> list[dict[str, Any]]:
        return self.predict_batch(list(texts), batch_size).rows


def save_bundle(
    directory: Path, model: nn.Module, tokenizer: TextTokenizer, meta: dict[str, Any]
) -> None:
    """Write the bundle under a temporary name, then rename it into place."""
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if isinstance(model, PretrainedClassifier):
        model.save(tmp)
    else:
        save_model(model, str(tmp / WEIGHTS_FILE))
    tokenizer.save(tmp)
    meta = {"lmforge_version": __version__, **meta}
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False), encoding="utf-8")
    shutil.rmtree(directory, ignore_errors=True)
    tmp.rename(directory)


def read_meta(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / META_FILE
    if not path.is_file():
        raise LmforgeError(
            f"{directory} is not an lmforge bundle (no {META_FILE}); pass a run's model/ folder"
        )
    return json.loads(path.read_text(encoding="utf-8"))


def load(directory: str | Path, device: str = "auto") -> Predictor:
    """Load a bundle for prediction (`lmforge.load(path).predict([...])`)."""
    directory = Path(directory)
    meta = read_meta(directory)
    if meta.get("task") != "classification":
        raise LmforgeError(f"{directory} holds a '{meta.get('task')}' model, not a classifier")
    tokenizer = TextTokenizer.load(directory)
    if meta.get("runtime") == "onnx":  # written by `lmforge export` / `compress --quantize`
        from lmforge.models.onnx_runtime import OnnxClassifier

        return Predictor(OnnxClassifier(directory / meta["onnx"]["file"]), tokenizer, meta)
    if meta["arch"] == "pretrained":
        from transformers import AutoModelForSequenceClassification

        model: nn.Module = PretrainedClassifier(
            AutoModelForSequenceClassification.from_pretrained(directory)
        )
    else:
        model = EncoderClassifier(TransformerConfig(**meta["architecture"]))
        load_model(model, str(directory / WEIGHTS_FILE))
    return Predictor(model.to(resolve_device(device)), tokenizer, meta)


def to_device(model: nn.Module, device: str) -> nn.Module:
    return model.to(torch.device(device))
