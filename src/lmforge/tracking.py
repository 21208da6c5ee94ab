"""Experiment tracking in MLflow (`train.tracking: mlflow`): a finished run directory recorded
as an MLflow run: the resolved config as params, every step metrics.jsonl logged, the reports
and the bundle as artifacts, the data hash and commit as tags. MLflow is an optional extra
(`pip install 'lmforge[mlflow]'`), imported only here and only when tracking is on.

The run is recorded when training ends, from the run directory, so tracking never slows or
breaks the training loop; TensorBoard (tb/) shows a run live.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lmforge.config import Config
from lmforge.errors import LmforgeError

DEFAULT_STORE = Path("mlruns")  # MLflow 3 keeps runs in a database; a SQLite file in here
ARTIFACTS = ("config.yaml", "data_report.json", "eval.json", "cv.json", "report.html",
             "provenance.json", "metrics.jsonl")
PARAM_LIMIT = 6000  # MLflow's longest param value


def require() -> None:
    """A one-line error, before any training, when MLflow is not installed."""
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise LmforgeError("train.tracking is mlflow but MLflow is not installed: "
                           "pip install 'lmforge[mlflow]'") from None


def experiment(cfg: Config) -> tuple[Any, str]:
    """(an MlflowClient on the config's store, the id of train.experiment, made if new).
    The store: train.tracking_uri, else $MLFLOW_TRACKING_URI, else ./mlruns/mlflow.db with
    the artifacts beside it. A one-line error when MLflow is not installed."""
    require()
    from mlflow.tracking import MlflowClient

    uri = cfg.train.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    artifacts = None
    if uri is None:
        store = DEFAULT_STORE.resolve()
        store.mkdir(exist_ok=True)
        uri, artifacts = f"sqlite:///{store / 'mlflow.db'}", (store / "artifacts").as_uri()
    mlflow = MlflowClient(tracking_uri=uri)
    found = mlflow.get_experiment_by_name(cfg.train.experiment)
    if found is not None:
        return mlflow, found.experiment_id
    return mlflow, mlflow.create_experiment(cfg.train.experiment, artifact_location=artifacts)


def start_parent(cfg: Config, name: str, tags: dict[str, str]) -> str:
    """An MLflow run that others are recorded under (a tuning study's trials): its id."""
    mlflow, experiment_id = experiment(cfg)
    run = mlflow.create_run(experiment_id, run_name=name, tags=tags)
    return run.info.run_id


def record_run(
    cfg: Config, run_dir: Path, parent_id: str | None = None, tags: dict[str, str] | None = None
) -> str:
    """Record the run in `run_dir` as an MLflow run (a child of `parent_id`); its id."""
    from mlflow.entities import Metric, Param

    mlflow, experiment_id = experiment(cfg)
    origin = _read_json(run_dir / "provenance.json")
    all_tags = {"lmforge.task": cfg.task, "lmforge.run_dir": str(run_dir.resolve()),
                "lmforge.data_hash": origin.get("data", {}).get("sha256") or "",
                "mlflow.source.git.commit": origin.get("git_commit") or "", **(tags or {})}
    if parent_id is not None:
        all_tags["mlflow.parentRunId"] = parent_id
    all_tags = {key: value for key, value in all_tags.items() if value}  # no commit outside git
    run = mlflow.create_run(experiment_id, run_name=run_dir.name, tags=all_tags)
    run_id = run.info.run_id
    params = [Param(key, str(value)[:PARAM_LIMIT]) for key, value in flatten(cfg.to_dict())]
    for start in range(0, len(params), 100):  # MLflow takes 100 params per batch
        mlflow.log_batch(run_id, params=params[start : start + 100])
    metrics = list(_metrics(run_dir / "metrics.jsonl", Metric))
    for start in range(0, len(metrics), 1000):
        mlflow.log_batch(run_id, metrics=metrics[start : start + 1000])
    for name in ARTIFACTS:
        if (run_dir / name).is_file():
            mlflow.log_artifact(run_id, str(run_dir / name))
    if (run_dir / "model" / "lmforge.json").is_file():
        mlflow.log_artifacts(run_id, str(run_dir / "model"), artifact_path="model")
    mlflow.set_terminated(run_id)
    return run_id


def flatten(values: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """A nested config as (dotted key, value) pairs: train.lr, data.split.seed, ..."""
    pairs = []
    for key, value in values.items():
        if isinstance(value, dict):
            pairs += flatten(value, f"{prefix}{key}.")
        else:
            pairs.append((f"{prefix}{key}", value))
    return pairs


def _metrics(path: Path, metric: Any) -> Any:
    """metrics.jsonl's numbers as MLflow metrics: train/loss, eval/f1_macro, ... by step."""
    if not path.is_file():
        return
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        millis = int(record.get("time", 0) * 1000)
        for key, value in record.items():
            if key not in ("kind", "step", "time") and isinstance(value, (int, float)):
                yield metric(f"{record['kind']}/{key}", float(value), millis, record["step"])


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
