"""Feature tables: classification and regression of a table's rows by an MLP (models/classic.py)
over the preprocessing of data/features.py, beside the baselines tables deserve (majority,
logistic regression, gradient-boosted trees; the training mean and ridge for regression).

Two recipes, one per task, found as INPUT_RECIPES[(task, "table")] (TASKS["regression"] is
text regression's, tasks/text_regression.py); a bundle holds model.safetensors (or model.onnx),
features.json and lmforge.json with "inputs": "table". A predictor takes rows as dicts of
feature values.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from safetensors.torch import load_model
from torch import nn

import lmforge.render as render
from lmforge.config import (
    Config,
    DataConfig,
    fill_train_defaults,
    load_config,
    read_config_file,
)
from lmforge.data.builtin import BUILTIN_TABLES
from lmforge.data.conversations import conversation_kind
from lmforge.data.detect import LABEL_NAMES, MAX_CLASSES, free_text_column
from lmforge.data.features import (
    FeatureRows,
    FeatureSchema,
    as_number,
    column_kinds,
    drop_duplicates,
    read_feature_rows,
    table_columns,
)
from lmforge.data.report import DropLog, label_counts
from lmforge.data.split import order_labels, split_dataset
from lmforge.errors import LmforgeError
from lmforge.evaluation.baselines import majority_baseline
from lmforge.evaluation.metrics import (
    bootstrap_intervals,
    classification_metrics,
    paired_bootstrap_difference,
)
from lmforge.evaluation.regression import regression_metrics, ridge_cv
from lmforge.evaluation.report import render_beside_baselines
from lmforge.files import write_atomic
from lmforge.models.classic import MLP, MLPConfig
from lmforge.models.onnx_runtime import ONNX_OUTPUT, OnnxClassifier
from lmforge.tasks.classification import balanced_class_weights, softmax
from lmforge.tasks.recipe import Evaluated, Log, Prepared, TrainingPlan
from lmforge.training import distributed, resolve_device, seed_everything

WEIGHTS_FILE = "model.safetensors"  # as bundle.py names it
SPLITS = ("train", "val", "test")
TREES = "hist_gradient_boosting"
ONNX_FEATURES = "features"  # the exported MLP's input


def holds_table(cfg: Config) -> bool:
    """INPUT_DETECTORS["table"]: data.features set, model.arch mlp, a built-in table, or a
    table file without the text column (its inputs are not one text column)."""
    data = cfg.data
    if data.features or cfg.model.arch == "mlp" or data.path in BUILTIN_TABLES:
        return True
    try:
        stat = Path(data.path).expanduser().stat()
    except OSError:
        return False  # no file (yet): nothing says it is a table
    return _is_feature_table(data.path, data.format, data.text_column, data.label_column,
                             stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=32)
def _is_feature_table(path: str, fmt: str, text_column: str, label_column: str,
                      mtime_ns: int, size: int) -> bool:
    """holds_table's reading of the file, once per version of it (a config is checked many
    times a run; the file's time and size stand for its version)."""
    columns = table_columns(path, fmt)
    if not columns or conversation_kind(path, fmt) is not None:
        return False  # no table, or chat/instruction rows: text of another shape
    if text_column in columns or not any(c != label_column for c in columns):
        return False
    # a text table whose text column is named otherwise (a review, say) is still text
    return free_text_column(path, fmt, label_column) is None


# A feature table's schedule (model.arch mlp) where the config gives none: tables are small, so
# many epochs, the best checkpoint on validation shipped (bench/RESULTS.md, "Feature tables").
TABLE_TRAIN_DEFAULTS: dict[str, Any] = {
    "lr": 1e-3, "batch_size": 64, "epochs": 100, "eval_every": 50, "warmup_ratio": 0.05,
    "weight_decay": 1e-4,
}

# The hidden layers' dropout for regression where the config gives none: the MLP starts as ridge
# and its hidden layers learn a residual, which on a few hundred rows is mostly noise to fit
# (bench/RESULTS.md, "Feature tables: regression").
REGRESSION_DROPOUT = 0.3


class TableExamples:
    """Training examples: (feature row, target) pairs over an encoded split."""

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[np.ndarray, Any]:
        return self.x[i], self.y[i]


def collate(items: list[tuple[np.ndarray, Any]]) -> dict[str, torch.Tensor]:
    return {"features": torch.from_numpy(np.stack([x for x, _ in items])),
            "target": torch.from_numpy(np.array([y for _, y in items]))}


@torch.no_grad()
def model_outputs(model: Any, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """The model's outputs (rows, n_outputs) for encoded rows, in eval mode."""
    was_training = getattr(model, "training", False)
    if isinstance(model, nn.Module):
        model.eval()
    first = next(model.parameters(), None) if isinstance(model, nn.Module) else None
    device = first.device if first is not None else torch.device("cpu")
    out = [model(torch.from_numpy(x[i:i + batch_size]).to(device)).float().cpu().numpy()
           for i in range(0, len(x), batch_size)]
    if isinstance(model, nn.Module):
        model.train(was_training)
    n_out = model.config.n_outputs if hasattr(model, "config") else 1
    return np.concatenate(out) if out else np.zeros((0, n_out), dtype=np.float32)


class OnnxTableModel(OnnxClassifier):
    """An exported MLP run by ONNX Runtime, called like the MLP: features -> outputs."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (out,) = self.session.run([ONNX_OUTPUT], {ONNX_FEATURES: features.cpu().numpy()})
        return torch.from_numpy(out)


class TablePredictor:
    """What a table bundle loads into: rows (dicts of feature values) → predictions."""

    def __init__(self, model: Any, schema: FeatureSchema, meta: dict[str, Any]) -> None:
        self.model, self.schema, self.meta = model, schema, meta
        self.labels: list[str] | None = meta.get("labels")
        self.task = meta["task"]

    def outputs(self, rows: list[dict[str, Any]]) -> np.ndarray:
        """Raw outputs: logits, or the standardized value (regression)."""
        return model_outputs(self.model, self.schema.encode(rows))

    def rows_of(self, outputs: np.ndarray) -> list[dict[str, Any]]:
        if self.labels is None:
            scale = self.meta["target_scale"]
            values = outputs[:, 0] * scale["std"] + scale["mean"]
            return [{"value": float(v)} for v in values]
        probs = softmax(outputs)
        return [{"label": self.labels[int(p.argmax())], "score": float(p.max()),
                 "probs": {label: float(q) for label, q in zip(self.labels, p, strict=True)}}
                for p in probs]

    def predict(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return self.rows_of(self.outputs(rows))


# --- preparing a run ----------------------------------------------------------------------------


def read_rows(data: DataConfig, features: list[str] | None, regression: bool,
              path: str | None = None) -> tuple[list[str], FeatureRows, dict[str, Any], DropLog]:
    """A table's feature rows with usable targets: for regression a target that is no number
    is dropped and counted (not_a_number_target)."""
    columns, rows, read = read_feature_rows(data, features, path)
    drops: DropLog = read["drops"]
    if regression:
        keep = []
        for i, target in enumerate(rows.targets):
            if as_number(target) is None:
                drops.add("not_a_number_target", rows.row_ids[i])
            else:
                keep.append(i)
        rows = rows.take(keep)
    return columns, rows, read, drops


def _with_mlp(cfg: Config) -> Config:
    """The config with model.arch mlp where it gave no arch (a table found by its columns):
    validated again, so the table's own defaults fill in what the config left out."""
    if cfg.model.arch == "mlp":
        return cfg
    if "arch" in cfg.model.model_fields_set:
        raise LmforgeError(f"{cfg.data.path} is a feature table: model.arch '{cfg.model.arch}' "
                           "reads text; use model.arch mlp (or data.inputs text and a text "
                           "column)")
    raw = cfg.model_dump(mode="json", exclude_unset=True)
    raw.setdefault("model", {})["arch"] = "mlp"
    train = raw.get("train", {})
    # f1_macro is text's default, filled in when the config was read; a table's is val_loss
    # (a config that wants f1_macro for a table names model.arch mlp and it stays)
    if train.get("early_stopping_metric") == "f1_macro":
        del train["early_stopping_metric"]
    return load_config(raw)


class TableTask:
    """One task (classification or regression) over feature tables."""

    runs_with = "predict"
    report_kind = "metrics"

    def __init__(self, name: str, val_metrics: tuple[str, ...], quickstart_data: str) -> None:
        self.name, self.val_metrics, self.quickstart_data = name, val_metrics, quickstart_data
        self.regression = name == "regression"
        self.quickstart_run = f"quickstart-{name}-table"

    # -- configs

    def configure(self, cfg: Config) -> None:
        """model.arch mlp (a feature table's model), val_loss to pick the best step (a table's
        val split is small: its loss decides where accuracy ties) and the tables' schedule,
        where the config gives none."""
        model = cfg.model
        if "arch" not in model.model_fields_set:
            model.arch = "mlp"
        if model.arch != "mlp":
            raise ValueError(f"{cfg.data.path} is a feature table: model.arch '{model.arch}' "
                             "reads text; use model.arch mlp (or data.inputs text and a text "
                             "column)")
        if "early_stopping_metric" not in cfg.train.model_fields_set:
            cfg.train.early_stopping_metric = "val_loss"
        if self.regression and "dropout" not in model.model_fields_set:
            model.dropout = REGRESSION_DROPOUT
        fill_train_defaults(cfg.train, TABLE_TRAIN_DEFAULTS)

    def starter_config(self, data: str) -> Config:
        """model.arch mlp, the target column found, every other column a feature; the type of
        each column is printed (stderr)."""
        columns = table_columns(data) or []
        label = next((c for c in columns if c.strip().lower() in LABEL_NAMES), None)
        if label is None:
            raise LmforgeError(f"no target column found in {data} (a column named "
                               f"{', '.join(LABEL_NAMES)}); columns are: {', '.join(columns)}")
        cfg = load_config({"task": self.name, "data": {"path": data, "label_column": label,
                                                        "inputs": "table"},
                           "model": {"arch": "mlp"}})
        features, rows, _, _ = read_rows(cfg.data, None, self.regression)
        note = render.notes()
        for column, kind in column_kinds(features, rows).items():
            note(f"column {column}: {kind}")
        note(f"column {label}: the target ({'a number' if self.regression else 'the class'})")
        return cfg.model_copy(update={"data": cfg.data.model_copy(update={"features": features})})

    def quickstart_config(self, fast: bool) -> Config:
        return load_config({"task": self.name, "data": {"path": self.quickstart_data},
                            "model": {"arch": "mlp"},
                            **({"train": {"epochs": 30}} if fast else {})})

    # -- training

    def prepare(self, cfg: Config, run_dir: Path, resume: bool, log: Log) -> Prepared:
        if cfg.model.arch != "mlp":
            cfg = _with_mlp(cfg)
            distributed.on_main(lambda: write_atomic(run_dir / "config.yaml",
                                                     _dump(cfg)))
        columns, rows, read, drops = read_rows(cfg.data, cfg.data.features, self.regression)
        rows = drop_duplicates(rows, drops)
        if len(rows.targets) < 3:
            raise LmforgeError(f"{cfg.data.path}: {len(rows.targets)} usable rows; a feature "
                               f"table needs at least 3 (dropped: {drops.summary()})")
        labels = None if self.regression else order_labels(rows.targets)
        if labels is not None and len(labels) > MAX_CLASSES and \
                all(as_number(label) is not None for label in labels):
            raise LmforgeError(f"{cfg.data.path}: the target column '{cfg.data.label_column}' "
                               f"holds {len(labels)} distinct numbers, not classes; to predict "
                               "a number use task regression (--task regression)")
        split_cfg = cfg.data.split
        if self.regression:
            split_cfg = split_cfg.model_copy(update={"stratify": False})
        parts = split_dataset([str(i) for i in range(len(rows.targets))], rows.targets,
                              split_cfg)
        train, val, test = (rows.take(int(i) for i in part.texts) for part in parts[:3])
        splits = {"train": train, "val": val, "test": test}
        for warning in parts[3]:
            log(f"warning: {warning}")
        kinds = column_kinds(columns, rows)
        schema = FeatureSchema.fit(columns, kinds, train, cfg.data.label_column)
        x, cells = {}, {}
        for name, split in splits.items():
            x[name] = schema.encode(split.cells)
            cells[name] = schema.take_counts()
        y, scale = _targets(splits, labels)
        report = {
            "source": cfg.data.path, "format": "table", "data_hash": read["data_hash"],
            "rows_read": read["rows_read"], "rows_kept": len(rows.targets),
            "dropped": drops.counts(always=["duplicate"]), "examples": drops.examples(),
            "split_sizes": {name: len(split.targets) for name, split in splits.items()},
            "columns": kinds, "target": cfg.data.label_column,
            "cells": cells,  # per split: cells missing, not a number, or of an unseen category
        }
        if labels is not None:
            report["label_counts"] = {name: label_counts(split.targets, labels)
                                      for name, split in splits.items()}
        else:
            report["target_scale"] = scale
        log(render.data_summary(report) + f"; {len(columns)} features ("
            f"{len(schema.numbers)} numbers, {len(schema.categories)} categories)")
        own = {"x": x, "y": y, "rows": splits, "schema": schema, "labels": labels,
               "scale": scale}
        split_labels = {name: split.targets for name, split in splits.items()}
        return Prepared(cfg, read["data_hash"], schema,
                        {name: split.keys() for name, split in splits.items()}, report, own,
                        None if self.regression else split_labels)

    def build_model(self, run: Prepared, run_dir: Path, resume: bool, show_progress: bool,
                    log: Log) -> nn.Module:
        cfg, schema = run.cfg, run.parts["schema"]
        seed_everything(cfg.train.seed)
        n_out = 1 if self.regression else len(run.parts["labels"])
        model = MLP(MLPConfig(schema.n_numeric_inputs, schema.cardinalities, n_out,
                              list(cfg.model.hidden), cfg.model.dropout))
        if self.regression:  # start as ridge on the numbers; the hidden layers learn the rest
            n = schema.n_numeric_inputs
            model.start_from_linear(*_ridge_start(run.parts["x"]["train"][:, :n],
                                                  run.parts["y"]["train"]))
        seed_everything(cfg.train.seed + distributed.rank())
        return model

    def training(self, run: Prepared, model: nn.Module) -> TrainingPlan:
        x, y = run.parts["x"], run.parts["y"]
        weights = None
        if not self.regression and run.cfg.classification.class_weights == "balanced":
            weights = balanced_class_weights(y["train"], len(run.parts["labels"]))

        def loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
            out = model(batch["features"]).float()
            if self.regression:  # on targets standardized: huber's bend is at one sd
                error = F.huber_loss if run.cfg.regression.loss == "huber" else F.mse_loss
                return error(out[:, 0], batch["target"].float())
            w = weights.to(out.device) if weights is not None else None
            return F.cross_entropy(out, batch["target"].long(), weight=w)

        val = (lambda model: self._val_metrics(model, x["val"], y["val"])) if len(x["val"]) \
            else None
        metric = run.cfg.train.early_stopping_metric
        mode = "min" if any(word in metric for word in ("loss", "rmse", "mae")) else "max"
        return TrainingPlan(TableExamples(x["train"], y["train"]), collate, loss, val, mode)

    def _val_metrics(self, model: nn.Module, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        out = model_outputs(model, x)
        if self.regression:
            found = regression_metrics(y, out[:, 0])
            return {"val_rmse": found["rmse"], "val_mae": found["mae"],
                    "val_r2": found["r2"] if found["r2"] is not None else 0.0,
                    "val_loss": found["rmse"] ** 2}
        loss = F.cross_entropy(torch.from_numpy(out), torch.from_numpy(y).long())
        pred = out.argmax(axis=1)
        from sklearn.metrics import f1_score

        return {"f1_macro": float(f1_score(y, pred, average="macro", zero_division=0)),
                "accuracy": float((pred == y).mean()), "val_loss": float(loss)}

    # -- the test report

    def test(self, run: Prepared, model: nn.Module) -> Evaluated | None:
        rows = run.parts["rows"]
        if not rows["test"].targets:
            return None
        predictor = TablePredictor(model, run.parts["schema"], self.bundle_meta(run, model, None))
        return self._evaluate(predictor, rows["test"], rows["train"], run.cfg)

    def _evaluate(self, predictor: TablePredictor, rows: FeatureRows, train: FeatureRows | None,
                  cfg: Config) -> Evaluated:
        """The model on `rows` beside the baselines fitted on `train` (none without it)."""
        schema = predictor.schema
        x = schema.encode(rows.cells)
        cells = schema.take_counts()
        predicted = predictor.rows_of(model_outputs(predictor.model, x))
        seed, resamples = cfg.train.seed, cfg.eval.bootstrap
        baselines = cfg.eval.baselines and train is not None
        if self.regression:
            gold = np.array([float(t) for t in rows.targets])
            values = np.array([row["value"] for row in predicted])
            report = regression_metrics(gold, values, resamples, seed)
            if baselines:
                report["baselines"] = _regression_baselines(schema, train, x, gold, resamples,
                                                            seed)
            out = [{"row": row_id, "gold": float(g), "predicted": float(v)}
                   for row_id, g, v in zip(rows.row_ids, gold, values, strict=True)]
        else:
            labels = predictor.labels or []
            known = [i for i, t in enumerate(rows.targets) if t in labels]
            if len(known) < len(rows.targets):
                cells["unknown_label_rows"] = len(rows.targets) - len(known)
            gold = [rows.targets[i] for i in known]
            pred = [predicted[i]["label"] for i in known]
            probs = np.array([[predicted[i]["probs"][label] for label in labels] for i in known])
            report = classification_metrics(gold, pred, labels, probs)
            report["bootstrap_resamples"] = resamples
            if resamples:
                report["ci95"] = bootstrap_intervals(gold, pred, labels, resamples, seed)
            if baselines:
                found = _classification_baselines(schema, train, x[known], labels, seed)
                report["baselines"] = {name: classification_metrics(gold, p, labels, q)
                                       for name, (p, q) in found.items()}
                if resamples:
                    report[f"vs_{TREES}"] = paired_bootstrap_difference(
                        gold, pred, found[TREES][0], labels, resamples, seed)
            out = [{"row": rows.row_ids[i], "gold": rows.targets[i], **predicted[i]}
                   for i in known]
        report["cells"] = cells
        return Evaluated(report, out)

    def refold(self, run: Prepared, parts: dict[str, Any]) -> Prepared:
        raise LmforgeError("--cv is not available for feature tables; use data.split")

    def summary(self, report: dict[str, Any]) -> dict[str, Any]:
        keys = ("n", "rmse", "mae", "r2") if self.regression else ("n", "accuracy", "f1_macro")
        return {key: report[key] for key in keys if key in report}

    # -- the bundle

    def bundle_meta(self, run: Prepared, model: nn.Module, run_dir: Path | None) -> dict:
        cfg = run.cfg
        meta: dict[str, Any] = {"task": self.name, "inputs": "table", "arch": "mlp",
                                "architecture": model.config.to_dict(),
                                "features": run.parts["schema"].columns,
                                "label_column": cfg.data.label_column}
        if self.regression:
            meta["target_scale"] = run.parts["scale"]
        else:
            meta["labels"] = run.parts["labels"]
        if run_dir is not None:
            meta["run"] = {"dir": str(run_dir.resolve()), "data": cfg.data.path,
                           "data_hash": run.data_hash}
        return meta

    def load(self, bundle_dir: Path, meta: dict[str, Any], device: str) -> TablePredictor:
        bundle_dir = Path(bundle_dir)
        schema = FeatureSchema.load(bundle_dir)
        if meta.get("runtime") == "onnx":
            return TablePredictor(OnnxTableModel(bundle_dir / meta["onnx"]["file"]), schema,
                                  meta)
        try:
            config = MLPConfig(**meta["architecture"])
        except (KeyError, TypeError, ValueError) as error:
            raise LmforgeError(f"{bundle_dir / 'lmforge.json'}: 'architecture' does not "
                               f"describe an MLP ({error})") from None
        if config.n_numbers + len(config.cardinalities) != schema.width or \
                config.cardinalities != schema.cardinalities:
            raise LmforgeError(f"{bundle_dir / 'features.json'} does not match the model's "
                               "inputs ('architecture'): not the preprocessing it was trained "
                               "with")
        model = MLP(config)
        path = bundle_dir / WEIGHTS_FILE
        if not path.is_file():
            raise LmforgeError(f"{path}: missing; the bundle's weights belong there")
        try:
            load_model(model, str(path))
        except Exception as error:  # a damaged or foreign safetensors file
            raise LmforgeError(f"{path}: cannot be loaded into the MLP ({error})") from None
        return TablePredictor(model.to(resolve_device(device)).eval(), schema, meta)

    def check_bundle(self, bundle_dir: Path, meta: dict[str, Any]) -> None:
        """What `lmforge serve` checks before it starts: the bundle loads."""
        self.load(bundle_dir, meta, "cpu")

    # -- the other verbs

    def read_inputs(self, predictor: TablePredictor, path: str) -> list[dict[str, Any]]:
        """`lmforge predict --input TABLE`: each readable row's features (rows the parser
        cannot read are counted on stderr)."""
        data = DataConfig(label_column=predictor.schema.target)
        _, rows, read = read_feature_rows(data, predictor.schema.columns, path, target=False)
        if read["drops"].total():
            render.notes()(f"{path}: {read['drops'].total()} rows not read "
                           f"({read['drops'].summary()})")
        return rows.cells

    def evaluate(self, predictor: TablePredictor, bundle_dir: Path, run_dir: Path | None,
                 data: str | None) -> dict[str, Any]:
        run = self._run(run_dir, predictor.meta) if run_dir is not None else None
        cfg = run.cfg if run is not None else None
        if data is None:
            if run is None:
                raise LmforgeError(f"{bundle_dir}: its run's data is gone; pass --data FILE")
            if not run.parts["rows"]["test"].targets:
                raise LmforgeError(f"run {run_dir} has no test split; pass --data FILE")
            report = self._evaluate(predictor, run.parts["rows"]["test"],
                                    run.parts["rows"]["train"], run.cfg).report
            report["data_check"] = {"source": cfg.data.path, "split": "test"}
            return report
        meta = predictor.meta
        data_cfg = DataConfig(label_column=meta["label_column"])
        _, rows, read, drops = read_rows(data_cfg, meta["features"], self.regression, data)
        if not rows.targets:
            raise LmforgeError(f"{data}: no row could be scored ({drops.summary()})")
        use = cfg or Config(task=self.name, model={"arch": "mlp"})
        train = run.parts["rows"]["train"] if run is not None else None
        report = self._evaluate(predictor, rows, train, use).report
        report["data_check"] = {"source": data, "rows_read": read["rows_read"],
                                "scored": len(rows.targets), "dropped": drops.counts()}
        return report

    def _run(self, run_dir: Path, meta: dict[str, Any]) -> Prepared | None:
        """The run's splits made again as training made them; None when its data is gone, an
        error when the data changed since."""
        cfg = load_config(read_config_file(run_dir / "config.yaml"))
        if cfg.data.path not in BUILTIN_TABLES and not Path(cfg.data.path).exists():
            return None
        run = self.prepare(cfg, run_dir, False, lambda _note: None)
        if run.data_hash != meta.get("run", {}).get("data_hash"):
            raise LmforgeError(f"the data of run {run_dir} ({cfg.data.path}) changed since "
                               "the model was trained; pass --data FILE")
        return run

    def evaluate_rows(self, run_dir: Path, meta: dict[str, Any]) -> FeatureRows | None:
        """The test rows of the run a bundle came from (None when its data is gone)."""
        run = self._run(run_dir, meta)
        return run.parts["rows"]["test"] if run is not None else None

    def predict(self, predictor: TablePredictor, texts: list[Any]) -> tuple[list[dict], str]:
        rows = predictor.predict(texts)
        counts = predictor.schema.take_counts()
        missing = sum(counts.get("missing", {}).values())
        unseen = sum(counts.get("unseen_category", {}).values())
        bad = sum(counts.get("not_a_number", {}).values())
        return rows, (f"{len(rows)} rows predicted; {missing} missing cells imputed, {bad} "
                      f"not numbers (imputed), {unseen} categories unseen in training")

    def render(self, report: dict[str, Any], console: Console, title: str) -> None:
        render_report(report, console, title, self.regression)

    def quickstart_notes(self, predictor: TablePredictor, bundle_dir: Path) -> list[str]:
        return [f"predict: lmforge predict {bundle_dir} --input TABLE (a csv/jsonl of the "
                f"columns {', '.join(predictor.schema.columns[:4])}, ...)"]


def _dump(cfg: Config) -> str:
    from lmforge.config import dump_config

    return dump_config(cfg)


def _targets(splits: dict[str, FeatureRows], labels: list[str] | None
             ) -> tuple[dict[str, np.ndarray], dict[str, float] | None]:
    """Each split's targets as the model learns them: class indices, or the number standardized
    with the training split's mean and deviation (returned as the scale)."""
    if labels is not None:
        index = {label: i for i, label in enumerate(labels)}
        return {name: np.array([index[t] for t in split.targets], dtype=np.int64)
                for name, split in splits.items()}, None
    raw = {name: np.array([float(t) for t in split.targets]) for name, split in splits.items()}
    mean, std = float(raw["train"].mean()), float(raw["train"].std()) or 1.0
    return ({name: ((v - mean) / std).astype(np.float32) for name, v in raw.items()},
            {"mean": mean, "std": std})


def _ridge_start(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Ridge regression of the (standardized) target on the numeric inputs, its strength chosen
    as the ridge baseline's is: the MLP's starting linear model."""
    if x.shape[1] == 0 or len(y) < 2:
        return torch.zeros(1, x.shape[1]), torch.tensor([float(y.mean()) if len(y) else 0.0])
    ridge = ridge_cv().fit(x, y)
    return (torch.tensor(ridge.coef_, dtype=torch.float32).view(1, -1),
            torch.tensor([float(ridge.intercept_)]))


def design_matrix(schema: FeatureSchema, x: np.ndarray, n_rows: int) -> np.ndarray:
    """The baselines' inputs: the numbers and indicators, then one-hot categories."""
    n = schema.n_numeric_inputs
    blocks = [x[:, :n]]
    for j, size in enumerate(schema.cardinalities):
        blocks.append(np.eye(size, dtype=np.float32)[x[:, n + j].astype(np.int64)])
    return np.concatenate(blocks, axis=1) if blocks else np.zeros((n_rows, 0))


def _classification_baselines(schema: FeatureSchema, train: FeatureRows, x_test: np.ndarray,
                              labels: list[str], seed: int
                              ) -> dict[str, tuple[list[str], np.ndarray]]:
    """Majority, logistic regression and HistGradientBoosting, fitted on the training split."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression

    x_train = design_matrix(schema, schema.encode(train.cells), len(train.targets))
    x_eval = design_matrix(schema, x_test, len(x_test))
    schema.take_counts()
    index = {label: i for i, label in enumerate(labels)}
    y = np.array([index[t] for t in train.targets])
    found = {"majority": majority_baseline(train.targets, len(x_test), labels)}
    for name, estimator in (("logistic_regression", LogisticRegression(max_iter=2000)),
                            (TREES, HistGradientBoostingClassifier(random_state=seed))):
        if len(np.unique(y)) < 2:
            found[name] = found["majority"]
            continue
        estimator.fit(x_train, y)
        probs = np.zeros((len(x_eval), len(labels)))
        probs[:, estimator.classes_] = estimator.predict_proba(x_eval)
        found[name] = ([labels[i] for i in probs.argmax(axis=1)], probs)
    return found


def _regression_baselines(schema: FeatureSchema, train: FeatureRows, x_test: np.ndarray,
                          gold: np.ndarray, resamples: int, seed: int) -> dict[str, Any]:
    """The training mean, ridge regression (its strength chosen by cross-validation) and
    HistGradientBoosting."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    x_train = design_matrix(schema, schema.encode(train.cells), len(train.targets))
    schema.take_counts()
    y = np.array([float(t) for t in train.targets])
    x_eval = design_matrix(schema, x_test, len(x_test))
    ridge = ridge_cv().fit(x_train, y)
    trees = HistGradientBoostingRegressor(random_state=seed).fit(x_train, y)
    guesses = {"train_mean": np.full(len(gold), y.mean()), "ridge": ridge.predict(x_eval),
               TREES: trees.predict(x_eval)}
    return {name: regression_metrics(gold, values, resamples, seed)
            for name, values in guesses.items()}


def render_report(report: dict[str, Any], console: Console, title: str,
                  regression: bool) -> None:
    """The model beside its baselines; says plainly when a baseline does better."""
    keys = ("rmse", "mae", "r2") if regression else ("accuracy", "f1_macro", "roc_auc")
    render_beside_baselines(report, console, title, keys, regression, "the MLP on this table",
                            "; on small tables trees and linear models often win: ship it, or "
                            "add rows and features")


CLASSIFICATION = TableTask("classification", ("f1_macro", "accuracy", "val_loss"),
                           "builtin:wine")
REGRESSION = TableTask("regression", ("val_rmse", "val_mae", "val_r2", "val_loss"),
                       "builtin:diabetes")
