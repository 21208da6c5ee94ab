"""What a task is to the verbs: a recipe. pipeline.py calls these methods and knows no task by
name; a new task is one module in tasks/ with a recipe, and its entry in tasks.TASKS.

    run = recipe.prepare(cfg, run_dir, resume, log)        # data, tokenizer, encoded splits
    model = recipe.build_model(run, run_dir, resume, ...)  # (any pre-training included)
    plan = recipe.training(run, model)                     # what the training loop needs
    tested = recipe.test(run, model)                       # eval.json (+ per-text rows)
    meta = recipe.bundle_meta(run, model, run_dir)         # lmforge.json
    fold = recipe.refold(run, {"train": ..., "val": ..., "test": ...})  # cross-validation
    predictor = recipe.load(bundle_dir, meta, device)      # what a bundle loads into
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from rich.console import Console
from torch import nn

from lmforge.config import Config
from lmforge.models.adapters import adapter_meta

Log = Callable[[str], None]


@dataclass
class Prepared:
    """What a run trains on. `data_report` goes to data_report.json, `split_texts` (each
    split's texts or documents) to splits.json; `parts` holds the task's own pieces."""

    cfg: Config
    data_hash: str
    tokenizer: Any
    split_texts: dict[str, list[str]]
    data_report: dict[str, Any]
    parts: dict[str, Any] = field(default_factory=dict)
    # each split's labels, for a task that has them (cross-validation stratifies by them)
    labels: dict[str, list[str]] | None = None


@dataclass
class TrainingPlan:
    """What the training loop needs (see training.fit)."""

    examples: Sequence
    collate: Callable
    loss: Callable[[nn.Module, Any], Any]
    val_metrics: Callable[[nn.Module], dict[str, float]] | None
    metric_mode: str  # "min" or "max": how the early-stopping metric improves
    lengths: np.ndarray | None = None  # per example, for length-bucketed batches


@dataclass
class Evaluated:
    """A model's evaluation: the report (eval.json) and, where a task has them, per-text rows
    (test_predictions.jsonl)."""

    report: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    scored_test: bool = True  # False: the data had no test split (the report says so)
    # a bundle the recipe wrote, to ship as the run's model/ in place of the trained model
    # (classification's arch auto: the candidate or fusion best on validation)
    bundle: Path | None = None


class TaskRecipe(Protocol):
    name: str
    val_metrics: tuple[str, ...]  # what its validation reports; the first is the default
    # train.early_stopping_metric
    runs_with: str  # the verb that runs its bundles: "predict" or "generate"
    quickstart_run: str  # the run directory's name under runs/ for `lmforge quickstart`
    report_kind: str  # its views in report.html (evaluation.html_report.SECTIONS; "metrics":
    # eval.json as a table)
    # Optional: `configure(cfg)`, called while a config of this task (and kind of input) is
    # checked: fill the defaults that are the task's own (its model, its schedule) where the
    # config gives none, and raise ValueError for a model or tokenizer it cannot use. The
    # rules every task shares stay in config.py.

    def starter_config(self, data: str) -> Config:
        """`lmforge init`: a config for this data file, its columns detected."""

    def quickstart_config(self, fast: bool) -> Config:
        """The built-in data and a model sized for the quickstart's time budget."""

    def prepare(self, cfg: Config, run_dir: Path, resume: bool, log: Log) -> Prepared:
        """Read, clean and split the data, make the tokenizer, encode the splits (rank 0
        writes caches, every rank returns the same)."""

    def build_model(
        self, run: Prepared, run_dir: Path, resume: bool, show_progress: bool, log: Log
    ) -> nn.Module: ...

    def training(self, run: Prepared, model: nn.Module) -> TrainingPlan | None:
        """What the training loop needs; None when build_model made the whole model (a
        retrieval index, a fitted estimator) and there is nothing to train by gradient."""

    def test(self, run: Prepared, model: nn.Module) -> Evaluated | None:
        """The model on the test split beside the task's baselines; None without a test split."""

    def refold(self, run: Prepared, parts: dict[str, Any]) -> Prepared:
        """The run with its splits made again from its train and val rows (`pool`: the train
        split's, then the val split's, in split_texts order): parts["train"], parts["val"] and
        optionally parts["test"] are index arrays into the pool; without "test" the run's own
        test split stays. The tokenizer stays the run's."""

    def summary(self, report: dict[str, Any]) -> dict[str, Any]:
        """The few figures of a report that the bundle keeps (lmforge.json's "metrics")."""

    def bundle_meta(self, run: Prepared, model: nn.Module, run_dir: Path) -> dict[str, Any]: ...

    def load(self, bundle_dir: Path, meta: dict[str, Any], device: str) -> Any:
        """The predictor a bundle of this task loads into."""

    def evaluate(
        self, predictor: Any, bundle_dir: Path, run_dir: Path | None, data: str | None
    ) -> dict[str, Any]:
        """The report of `lmforge evaluate`: on the run's own test split (data None), or on
        the file `data`; report["data_check"] says what was scored."""

    def predict(self, predictor: Any, texts: list[str]) -> tuple[list[dict[str, Any]], str]:
        """`lmforge predict`: one row per text, and a one-line summary."""

    def render(self, report: dict[str, Any], console: Console, title: str) -> None:
        """Print a report as a table."""

    def quickstart_notes(self, predictor: Any, bundle_dir: Path) -> list[str]:
        """What the quickstart shows after training (samples, the next command)."""


def metric_mode(metric: str) -> str:
    """How a val metric improves: "min" for losses, perplexities and errors (rmse, mae), "max"
    for the others."""
    return "min" if any(word in metric for word in ("loss", "perplexity", "rmse", "mae")) else "max"


def pool(run: Prepared) -> list[str]:
    """The texts (or documents) of the train split, then of the val split: what refold's
    indices point into."""
    return run.split_texts["train"] + run.split_texts["val"]


def bundle_meta(run: Prepared, model: nn.Module, run_dir: Path | None) -> dict[str, Any]:
    """What every bundle's lmforge.json says of its model and its run (a recipe adds its own
    keys): the architecture of lmforge's own model, or the pretrained model's name."""
    cfg = run.cfg
    meta: dict[str, Any] = {
        "task": cfg.task,
        "arch": cfg.model.arch,
        "text_column": cfg.data.text_column,
        "clean": cfg.data.clean.model_dump(),
        "max_length": cfg.model.max_length,
    }
    if run_dir is not None:
        meta["run"] = {"dir": str(run_dir.resolve()), "data": cfg.data.path,
                       "data_hash": run.data_hash}
    if cfg.model.arch == "pretrained":
        meta["pretrained"] = {"name": cfg.model.pretrained, "revision": cfg.model.revision}
    else:
        meta["architecture"] = model.config.to_dict()
    if cfg.model.adapter is not None:  # the bundle holds the adapter; its base stays outside
        meta["adapter"] = adapter_meta(cfg.model.adapter, cfg.model.pretrained,
                                       cfg.model.revision)
    return meta


def open_lmforge_bundle(bundle_dir: Path, device: str) -> Any:
    """A classification or generation bundle's Predictor or Generator. (bundle.py builds on the
    tasks' model code, so it is imported when a bundle is opened.)"""
    from lmforge.bundle import open_model_bundle

    return open_model_bundle(bundle_dir, device)
