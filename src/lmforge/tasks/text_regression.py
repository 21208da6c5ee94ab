"""Text regression: a number predicted from a text column (`task: regression` on a text table).

The text machinery is classification's (tokenizer, encoded splits, batches, lmforge's encoder,
RNN or TextCNN, or a pretrained encoder) with one output; the target is standardized with the
training split's mean and deviation, fitted with MSE or Huber loss, and reported as MAE, RMSE
and R² with bootstrap intervals beside the training mean and ridge regression over TF-IDF
features of the texts. A bundle is classification's layout with "target_scale" in lmforge.json;
it loads into a TextRegressor, whose rows are {"text", "value"}.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

import lmforge.render as render
import lmforge.runs as runs
from lmforge.config import (
    TASK_MODEL_DEFAULTS,
    CleanConfig,
    Config,
    DataConfig,
    fill_train_defaults,
    load_config,
)
from lmforge.data import PreparedData, Split, clean_text
from lmforge.data.builtin import BUILTIN_HSK_LEVELS, HSK_LEVELS_COLUMNS
from lmforge.data.clean import CleanedRows
from lmforge.data.detect import detect_number_columns
from lmforge.data.features import as_number
from lmforge.data.prepare import read_and_clean, rows_report
from lmforge.data.records import Records
from lmforge.data.report import length_quantiles
from lmforge.data.split import split_dataset
from lmforge.errors import LmforgeError
from lmforge.evaluation.regression import regression_metrics, ridge_cv, val_regression_metrics
from lmforge.evaluation.report import render_beside_baselines
from lmforge.models.tfidf import tfidf_vectorizer
from lmforge.tasks.classification import (
    ClassificationTask,
    TokenizedSplit,
    _quantiles,
    build_model,
    encode_split_ids,
    evaluation_split,
    make_collate,
    predict_logits,
)
from lmforge.tasks.recipe import Evaluated, Log, Prepared, TrainingPlan, bundle_meta
from lmforge.tokenization import Encoded, TextTokenizer
from lmforge.training import distributed, seed_everything

NOT_A_NUMBER = "not_a_number_target"  # data_report.json's reason for a target that is no number
ONE_OUTPUT = ["value"]  # the head's one "label": build_model sizes its outputs by it
TEXT_ARCHS = ("transformer", "pretrained", "rnn", "textcnn")
# The schedule of text regression's own models where the config gives none: ten epochs, the best
# val step shipped (three, the shared default, left every model near the training mean on the
# HSK sentences; bench/RESULTS.md, "Text regression").
TRAIN_DEFAULTS = {"epochs": 10}
# Sentences of rising difficulty the quickstart grades (none of them in builtin:hsk-levels).
QUICKSTART_TEXTS = ["你好，我是学生。", "我明天想去商店买东西。",
                    "虽然今天下雨了，但是我们还是去公园散步了。",
                    "随着经济的迅速发展，人们对生活质量的要求越来越高。"]
Batch = dict[str, torch.Tensor]


class TextRegressor:
    """A loaded text regression bundle: `predict(texts)` cleans, tokenizes and runs the model
    as training did, and answers one {"text", "value"} per text."""

    def __init__(self, model: nn.Module, tokenizer: TextTokenizer, meta: dict[str, Any]) -> None:
        self.model, self.tokenizer, self.meta = model.eval(), tokenizer, meta
        self.max_length: int = meta["max_length"]
        self.clean = CleanConfig(**meta["clean"])
        self.scale: dict[str, float] = meta["target_scale"]

    def encode(self, texts: list[str], max_length: int | None = None) -> Encoded:
        """The tokens the model reads (what serving bills), cut to max_length."""
        cleaned = [clean_text(text, self.clean) for text in texts]
        return self.tokenizer.encode(cleaned, max_length or self.max_length)

    def outputs(self, texts: list[str], batch_size: int = 64) -> tuple[np.ndarray, int]:
        """The model's (n, 1) standardized outputs, and how many texts were truncated."""
        encoded = self.encode(texts)
        return (predict_logits(self.model, encoded.ids, self.tokenizer.pad_id, batch_size),
                encoded.n_truncated)

    def values(self, texts: list[str], batch_size: int = 64) -> tuple[np.ndarray, int]:
        """The predicted number of each text, and how many texts were truncated."""
        if not texts:
            return np.zeros(0), 0
        outputs, n_truncated = self.outputs(texts, batch_size)
        return unscale(outputs[:, 0], self.scale), n_truncated

    def predict_batch(self, texts: list[str], batch_size: int = 64) -> Predicted:
        values, n_truncated = self.values(texts, batch_size)
        return Predicted([{"text": text, "value": float(value)}
                          for text, value in zip(texts, values, strict=True)], n_truncated)

    def predict(self, texts: list[str], batch_size: int = 64) -> list[dict[str, Any]]:
        return self.predict_batch(list(texts), batch_size).rows


@dataclass
class Predicted:
    rows: list[dict[str, Any]]  # {"text", "value"}
    n_truncated: int


def unscale(outputs: np.ndarray, scale: dict[str, float]) -> np.ndarray:
    """The model's standardized outputs as numbers on the target's own scale."""
    return outputs.astype(np.float64) * scale["std"] + scale["mean"]


# --- data -------------------------------------------------------------------------------------


def read_numbered(path: str, cfg: DataConfig) -> tuple[Records, CleanedRows]:
    """A text table read and cleaned as classification reads it; a row whose target is no
    number is dropped and counted (not_a_number_target)."""
    records, cleaned = read_and_clean(path, cfg)
    keep = []
    for i, (label, row_id) in enumerate(zip(cleaned.labels, cleaned.row_ids, strict=True)):
        if as_number(label) is None:
            records.drops.add(NOT_A_NUMBER, row_id)
        else:
            keep.append(i)
    if not keep:
        raise LmforgeError(f"{path}: no row has a number in the target column "
                           f"'{cfg.label_column}' (dropped: {records.drops.summary()}); task "
                           "regression predicts a number")
    cleaned = replace(cleaned, texts=[cleaned.texts[i] for i in keep],
                      labels=[cleaned.labels[i] for i in keep],
                      row_ids=[cleaned.row_ids[i] for i in keep],
                      columns={name: [values[i] for i in keep]
                               for name, values in cleaned.columns.items()})
    return records, cleaned


def unstratified(data: DataConfig) -> DataConfig:
    """The data settings with a split that is not stratified: a number is no class."""
    return data.model_copy(update={"split": data.split.model_copy(update={"stratify": False})})


def prepare_regression_data(cfg: DataConfig) -> PreparedData:
    """Read, clean and split a text table with a numeric target (no label names)."""
    records, cleaned = read_numbered(cfg.path, cfg)
    train, val, test, warnings = split_dataset(cleaned.texts, cleaned.labels, cfg.split)
    splits = {"train": train, "val": val, "test": test}
    report = rows_report(records, cleaned) | {
        "target": cfg.label_column,
        "target_quantiles": {name: _target_quantiles(split.labels)
                             for name, split in splits.items()},
        "split_sizes": {name: len(split.texts) for name, split in splits.items()},
        "length_chars": length_quantiles(cleaned.texts),
        "warnings": warnings,
    }
    return PreparedData(train, val, test, [], report, records.data_hash)


def _target_quantiles(labels: list[str]) -> dict[str, float]:
    if not labels:
        return {}
    values = np.array([float(label) for label in labels])
    q = np.quantile(values, [0.1, 0.5, 0.9])
    return {"min": float(values.min()), "p10": float(q[0]), "p50": float(q[1]),
            "p90": float(q[2]), "max": float(values.max()), "mean": float(values.mean())}


def targets(split: Split) -> np.ndarray:
    return np.array([float(label) for label in split.labels])


# --- training pieces ----------------------------------------------------------------------------


def make_loss(kind: str) -> Callable[[nn.Module, Batch], torch.Tensor]:
    """MSE or Huber on the standardized target (Huber bends at one training deviation)."""
    error = F.huber_loss if kind == "huber" else F.mse_loss

    def loss_fn(model: nn.Module, batch: Batch) -> torch.Tensor:
        out = model(batch["input_ids"], batch["attention_mask"])
        return error(out[:, 0].float(), batch["labels"].float())

    return loss_fn


def make_val_metrics(split: TokenizedSplit, pad_id: int) -> Callable[[nn.Module], dict]:
    """val_rmse, val_mae, val_r2 and val_loss on the standardized val targets."""
    return lambda model: val_regression_metrics(
        split.labels, predict_logits(model, split.ids, pad_id)[:, 0])


def tfidf_ridge(train_texts: list[str], train_y: np.ndarray, texts: list[str]) -> np.ndarray:
    """Ridge regression over TF-IDF features of the texts (classification's TF-IDF), its
    strength chosen by leave-one-out cross-validation on the training split."""
    vectorizer = tfidf_vectorizer(len(train_texts))
    ridge = ridge_cv().fit(vectorizer.fit_transform(train_texts), train_y)
    return ridge.predict(vectorizer.transform(texts))


# --- the recipe ---------------------------------------------------------------------------------


class TextRegressionTask:
    """Texts with a number → lmforge's encoder (or RNN, TextCNN, a pretrained encoder) with one
    output, beside the training mean and TF-IDF ridge. Feature tables go to tabular's recipe
    (INPUT_RECIPES[("regression", "table")])."""

    name = "regression"
    val_metrics = ("val_rmse", "val_mae", "val_r2", "val_loss")
    runs_with = "predict"
    quickstart_run = "quickstart-regression"
    report_kind = "metrics"

    def configure(self, cfg: Config) -> None:
        """A model that reads text; classification's encoder shape (texts are texts, whatever
        their target) and text regression's schedule where the config gives none."""
        model = cfg.model
        if model.arch not in TEXT_ARCHS:
            raise ValueError(f"task regression of a text column trains model.arch "
                             f"{', '.join(TEXT_ARCHS)} (got '{model.arch}'); a feature table "
                             "(data.features, or data.inputs table) trains mlp")
        if cfg.tokenizer.kind == "byte_bpe":
            raise ValueError("tokenizer.kind 'byte_bpe' is for task generation; regression "
                             "uses bpe, wordpiece or char")
        if model.preset is None:
            for key, value in TASK_MODEL_DEFAULTS["classification"].items():
                if key not in model.model_fields_set:
                    setattr(model, key, value)
        if model.arch != "pretrained":  # a fine-tune keeps the shared, shorter schedule
            fill_train_defaults(cfg.train, TRAIN_DEFAULTS)

    def starter_config(self, data: str) -> Config:
        """Its text column and its column of numbers (the target) detected."""
        columns = detect_number_columns(data)
        return load_config({"task": self.name, "data": {"path": data, **columns}})

    def quickstart_config(self, fast: bool) -> Config:
        """The HSK level of each built-in graded Chinese sentence, at text regression's
        defaults (`--data builtin:diabetes` takes the table recipe's quickstart instead);
        fast: half the epochs."""
        data = {"path": BUILTIN_HSK_LEVELS, **HSK_LEVELS_COLUMNS}
        fast_train = {"epochs": TRAIN_DEFAULTS["epochs"] // 2}
        return load_config({"task": self.name, "data": data,
                            **({"train": fast_train} if fast else {})})

    def prepare(self, cfg: Config, run_dir: Path, resume: bool, log: Log) -> Prepared:
        cfg_split = cfg.model_copy(update={"data": unstratified(cfg.data)})
        data = prepare_regression_data(cfg_split.data)
        log(render.data_summary(data.report))
        tokenizer = runs.tokenizer_for_run(cfg, data.train.texts, data.data_hash, run_dir,
                                           resume, log)
        encoded = distributed.on_main(lambda: encode_split_ids(cfg_split, data, tokenizer, log))
        ids, truncated = encoded or encode_split_ids(cfg_split, data, tokenizer, lambda _: None)
        raw = {"train": targets(data.train), "val": targets(data.val),
               "test": targets(data.test)}
        scale = {"mean": float(raw["train"].mean()), "std": float(raw["train"].std()) or 1.0}
        splits = {name: TokenizedSplit(ids[name], ((y - scale["mean"]) / scale["std"])
                                       .astype(np.float32)) for name, y in raw.items()}
        report = dict(data.report)
        report["length_tokens"] = _quantiles(len(x) for s in splits.values() for x in s.ids)
        report["truncated_to_max_length"] = truncated
        report["target_scale"] = scale
        texts = {"train": data.train.texts, "val": data.val.texts, "test": data.test.texts}
        own = {"data": data, "splits": splits, "scale": scale}
        return Prepared(cfg, data.data_hash, tokenizer, texts, report, own)

    def build_model(self, run: Prepared, run_dir: Path, resume: bool, show_progress: bool,
                    log: Log) -> nn.Module:
        seed_everything(run.cfg.train.seed)
        model = build_model(run.cfg.model, run.tokenizer, ONE_OUTPUT)
        seed_everything(run.cfg.train.seed + distributed.rank())  # distinct dropout per rank
        return model

    def training(self, run: Prepared, model: nn.Module) -> TrainingPlan:
        cfg, splits, pad_id = run.cfg, run.parts["splits"], run.tokenizer.pad_id
        return TrainingPlan(
            examples=splits["train"],
            collate=make_collate(pad_id, label_dtype=torch.float32),
            loss=make_loss(cfg.regression.loss),
            val_metrics=make_val_metrics(splits["val"], pad_id) if len(splits["val"]) else None,
            metric_mode="max" if cfg.train.early_stopping_metric == "val_r2" else "min",
            lengths=np.array([len(x) for x in splits["train"].ids]),
        )

    def test(self, run: Prepared, model: nn.Module) -> Evaluated | None:
        data = run.parts["data"]
        if not data.test.texts:
            return None
        predictor = TextRegressor(model, run.tokenizer, self.bundle_meta(run, model, None))
        return self._evaluate(predictor, data.test, data.train, run.cfg)

    def _evaluate(self, predictor: TextRegressor, split: Split, train: Split | None,
                  cfg: Config) -> Evaluated:
        """The model on `split` beside the baselines fitted on `train` (none without it)."""
        gold = targets(split)
        values, n_truncated = predictor.values(split.texts)
        seed, resamples = cfg.train.seed, cfg.eval.bootstrap
        report = regression_metrics(gold, values, resamples, seed)
        report["truncated_to_max_length"] = n_truncated
        if cfg.eval.baselines and train is not None:
            train_y = targets(train)
            guesses = {"train_mean": np.full(len(gold), train_y.mean()),
                       "tfidf_ridge": tfidf_ridge(train.texts, train_y, split.texts)}
            report["baselines"] = {name: regression_metrics(gold, guess, resamples, seed)
                                   for name, guess in guesses.items()}
        rows = [{"text": text, "gold": float(g), "predicted": float(v)}
                for text, g, v in zip(split.texts, gold, values, strict=True)]
        return Evaluated(report, rows)

    # the splits made again from the pool's rows and encoded texts, targets and all
    refold = ClassificationTask.refold

    def summary(self, report: dict[str, Any]) -> dict[str, Any]:
        return {key: report[key] for key in ("n", "rmse", "mae", "r2") if key in report}

    def bundle_meta(self, run: Prepared, model: nn.Module, run_dir: Path | None) -> dict:
        return {**bundle_meta(run, model, run_dir), "label_column": run.cfg.data.label_column,
                "target_scale": run.parts["scale"]}

    def load(self, bundle_dir: Path, meta: dict[str, Any], device: str) -> TextRegressor:
        """lmforge.json (its target_scale too), the tokenizer and the weights checked, as
        bundle.open_network checks every network's bundle."""
        from lmforge.bundle import open_network

        meta, tokenizer, model = open_network(Path(bundle_dir), device)
        return TextRegressor(model, tokenizer, meta)

    def evaluate(self, predictor: TextRegressor, bundle_dir: Path, run_dir: Path | None,
                 data: str | None) -> dict[str, Any]:
        split, train, cfg, check = evaluation_split(predictor.meta, bundle_dir, run_dir, data)
        numbered = [i for i, label in enumerate(split.labels) if as_number(label) is not None]
        if len(numbered) < len(split.labels):
            check[NOT_A_NUMBER] = len(split.labels) - len(numbered)
        if not numbered:
            raise LmforgeError(f"{data or run_dir}: no text to score has a number as its "
                               f"target ('{predictor.meta['label_column']}')")
        report = self._evaluate(predictor, split.take(numbered), train, cfg).report
        report["data_check"] = check
        return report

    predict = ClassificationTask.predict  # rows of predict_batch, and what was truncated

    def render(self, report: dict[str, Any], console: Console, title: str) -> None:
        render_report(report, console, title)

    def quickstart_notes(self, predictor: TextRegressor, bundle_dir: Path) -> list[str]:
        """A few sentences of rising difficulty with the number the model gives each, and
        how to ask it for more."""
        rows = predictor.predict(QUICKSTART_TEXTS)
        return ["samples:", *(f"  {row['text']} → {row['value']:.2f}" for row in rows),
                f"more with: lmforge predict {bundle_dir} --input TEXTS (a .txt file of one "
                "text per line, a table, or - for stdin)"]


def render_report(report: dict[str, Any], console: Console, title: str) -> None:
    """MAE, RMSE and R² (with intervals) beside each baseline; says plainly when one wins."""
    render_beside_baselines(report, console, title, ("rmse", "mae", "r2"), True,
                            "the model on these texts", ": ship the baseline, or give the model "
                            "more data or steps")


RECIPE = TextRegressionTask()
