"""The bundle a compression starts from (its model, its run's data, the split it is judged on)
and the folder it writes, staged under a temporary name so a failure leaves nothing behind."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.bundle import META_FILE, Predictor, load, read_meta
from lmforge.config import CleanConfig, Config, DataConfig, load_config, read_config_file
from lmforge.data import PreparedData, Split, prepare_classification_data, read_labelled
from lmforge.errors import LmforgeError
from lmforge.files import write_json_atomic
from lmforge.tasks.classification import OTHER_ARCHS
from lmforge.version import __version__

REPORT_FILE = "compress_report.json"


@dataclass
class Source:
    """A loaded classification bundle, the run it came from (if still there) and its eval split."""

    bundle_dir: Path
    predictor: Predictor
    run_dir: Path | None
    run_config: Config | None
    eval_split: Split
    eval_name: str  # "test split of runs/x" or the --data path
    _prepared: PreparedData | None = field(default=None, repr=False)
    _eval_logits: np.ndarray | None = field(default=None, repr=False)

    @property
    def meta(self) -> dict[str, Any]:
        return self.predictor.meta

    @property
    def is_onnx(self) -> bool:
        return self.meta.get("runtime") == "onnx"

    def logits(self, texts: list[str]) -> np.ndarray:
        """The original model's logits; those of the eval split are computed once."""
        if texts is not self.eval_split.texts:
            return self.predictor.logits(texts)[0]
        if self._eval_logits is None:
            self._eval_logits = self.predictor.logits(texts)[0]
        return self._eval_logits

    def run_data(self, why: str) -> tuple[Config, PreparedData]:
        """The run's config and splits, rebuilt as training built them."""
        if self.run_config is None or self.run_dir is None:
            raise LmforgeError(
                f"{why} needs the training split of the run {self.bundle_dir} came from, and "
                "its run directory (lmforge.json run.dir) is gone"
            )
        if self._prepared is None:
            self._prepared = _prepare_run_data(self.run_config, self.run_dir, self.meta)
        return self.run_config, self._prepared


def _prepare_run_data(cfg: Config, run_dir: Path, meta: dict[str, Any]) -> PreparedData:
    prepared = prepare_classification_data(cfg.data)
    trained_on = meta.get("run", {}).get("data_hash")
    if trained_on and prepared.data_hash != trained_on:
        raise LmforgeError(
            f"the data of run {run_dir} ({cfg.data.path}) changed since the model was trained; "
            "pass --data FILE with labelled texts to measure on"
        )
    if prepared.label_names != meta["labels"]:
        raise LmforgeError(
            f"run {run_dir} now yields labels {prepared.label_names}, the bundle has "
            f"{meta['labels']}"
        )
    return prepared


def load_source(bundle_dir: Path, run_dir: Path | None, data: str | Path | None) -> Source:
    """Load `bundle_dir` on the CPU and find the split its compressed copy will be judged on."""
    meta = read_meta(bundle_dir)
    if meta.get("task") != "classification":
        raise LmforgeError(
            f"{bundle_dir} holds a '{meta.get('task')}' model; export and compress handle "
            "classification bundles (lmforge's encoder and pretrained Hugging Face encoders)"
        )
    if meta.get("arch") in OTHER_ARCHS:
        raise LmforgeError(
            f"{bundle_dir} holds a '{meta['arch']}' model, not one network; export and compress "
            "take lmforge's encoder and pretrained encoders (an ensemble's are in its members/)"
        )
    if meta.get("arch") == "pretrained":
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # per-load weight bars would interleave with ours
    predictor = load(bundle_dir, device="cpu")
    cfg = load_config(read_config_file(run_dir / "config.yaml")) if run_dir else None
    source = Source(bundle_dir, predictor, run_dir, cfg, Split([], []), "")
    if data is not None:
        data_cfg = DataConfig(
            text_column=meta["text_column"],
            label_column=meta["label_column"],
            clean=CleanConfig(**meta["clean"]),
        )
        source.eval_split, _ = read_labelled(str(data), data_cfg)
        source.eval_name = str(data)
        unknown = sorted(set(source.eval_split.labels) - set(meta["labels"]))
        if unknown:
            raise LmforgeError(
                f"{data} holds labels the model does not know: {unknown[:5]} "
                f"(the model's labels: {meta['labels']})"
            )
        return source
    if cfg is None:
        raise LmforgeError(
            f"{bundle_dir} has no run directory with a test split to measure accuracy on; "
            f"pass --data FILE (a labelled table with columns '{meta['text_column']}' and "
            f"'{meta['label_column']}')"
        )
    _, prepared = source.run_data("measuring accuracy")
    if not prepared.test.texts:
        raise LmforgeError(
            f"run {run_dir} has no test split (data.split.test is 0); pass --data FILE with "
            "labelled texts to measure accuracy on"
        )
    source.eval_split, source.eval_name = prepared.test, f"test split of {run_dir}"
    return source


def write_meta(directory: Path, meta: dict[str, Any]) -> None:
    """lmforge.json of a bundle written here (an ONNX bundle, or updated metrics)."""
    write_json_atomic(directory / META_FILE, {**meta, "lmforge_version": __version__})


def default_out(bundle_dir: Path, suffix: str) -> Path:
    """A folder beside the bundle named after the operation: model-onnx, model-int8, ..."""
    return bundle_dir.with_name(f"{bundle_dir.name}-{suffix}")


def check_out(out: Path, bundle_dir: Path, force: bool) -> None:
    if out.resolve() == bundle_dir.resolve():
        raise LmforgeError(f"--out {out} is the bundle itself; choose another folder")
    if out.exists() and not force:
        raise LmforgeError(f"{out} already exists; pass --force to replace it, or --out DIR")


