"""Hyperparameter search (`lmforge tune`) with Optuna, for any task: each trial is a normal run
(runs/<study>/trial-<n>) of the config with some fields drawn from a search space, scored by its
best validation value of train.early_stopping_metric (never the test split), and pruned when its
evaluations fall below the median of earlier trials' at the same step.

The study lives in its storage: SQLite under the output folder by default, or a database URL
(postgresql+psycopg://...) that several machines share, each running its own --trials; a rerun
of the same command continues the study. best.yaml is the config of the best trial so far.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

import lmforge.tracking as tracking
from lmforge.config import Config, apply_overrides, dump_config, load_config, read_config_file
from lmforge.errors import LmforgeError
from lmforge.files import write_atomic, write_json_atomic
from lmforge.tasks.recipe import Log, metric_mode

# The search space of a config, by the sections it tunes: a config tunes the sections it holds
# (a run's config holds only its task's), so each task gets the fields it reads. A field is
# {low, high[, log]} (an int range when both are ints) or {choices: [...]}.
DEFAULT_SPACE: dict[str, dict[str, dict[str, Any]]] = {
    "train": {
        "train.lr": {"low": 1e-4, "high": 3e-3, "log": True},
        "train.weight_decay": {"low": 0.0, "high": 0.1},
        "train.warmup_ratio": {"low": 0.0, "high": 0.2},
    },
    "model": {"model.dropout": {"low": 0.0, "high": 0.3}},
    "classification": {"classification.token_dropout": {"low": 0.0, "high": 0.2}},
}
# A pretrained model is fine-tuned at lower rates, and keeps its own dropout.
PRETRAINED_LR = {"low": 1e-5, "high": 2e-4, "log": True}

BEST_CONFIG = "best.yaml"
STUDY_FILE = "study.json"  # the trials as this command last saw them
TrainTrial = Callable[[dict[str, Any], Path, Callable[[int, dict[str, float]], bool]], Any]


def default_space(cfg: Config) -> dict[str, dict[str, Any]]:
    sections = set(cfg.to_dict())
    if cfg.model.arch == "pretrained":
        return {"train.lr": PRETRAINED_LR} | {key: spec for key, spec in
                                               DEFAULT_SPACE["train"].items() if key != "train.lr"}
    return {key: spec for section, fields in DEFAULT_SPACE.items() if section in sections
            for key, spec in fields.items()}


def read_space(path: str | Path) -> dict[str, dict[str, Any]]:
    """A search space file: YAML mapping a config field (train.lr) to {low, high[, log]} or
    {choices: [...]}."""
    path = Path(path)
    if not path.is_file():
        raise LmforgeError(f"search space file not found: {path}")
    try:
        space = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise LmforgeError(f"{path} is not valid YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(space, dict) or not space:
        raise LmforgeError(f"{path} must map config fields (train.lr) to ranges or choices")
    for key, spec in space.items():
        _check_spec(f"{path}: {key}", spec)
    return space


def _check_spec(where: str, spec: Any) -> None:
    if not isinstance(spec, dict):
        raise LmforgeError(f"{where}: give {{low: A, high: B}} or {{choices: [...]}}")
    unknown = set(spec) - {"low", "high", "log", "choices"}
    if unknown:
        raise LmforgeError(f"{where}: unknown key '{sorted(unknown)[0]}' (low, high, log, choices)")
    if "choices" in spec:
        if not isinstance(spec["choices"], list) or not spec["choices"] or len(spec) > 1:
            raise LmforgeError(f"{where}: choices is a non-empty list, alone")
        return
    low, high = spec.get("low"), spec.get("high")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)):
        raise LmforgeError(f"{where}: low and high must be numbers (got {low!r}, {high!r})")
    if low >= high or (spec.get("log") and low <= 0):
        need = "low < high" + (", low > 0 with log" if spec.get("log") else "")
        raise LmforgeError(f"{where}: need {need} (got {low}, {high})")


def with_values(raw: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """The raw config with dotted fields set to `values` (numbers kept as numbers)."""
    raw = copy.deepcopy(raw)
    for key, value in values.items():
        node = raw
        *sections, name = key.split(".")
        for section in sections:
            node = node.setdefault(section, {})
        node[name] = value
    return raw


def _suggest(trial: Any, key: str, spec: dict[str, Any]) -> Any:
    if "choices" in spec:
        return trial.suggest_categorical(key, spec["choices"])
    low, high, log = spec["low"], spec["high"], bool(spec.get("log"))
    if isinstance(low, int) and isinstance(high, int):
        return trial.suggest_int(key, low, high, log=log)
    return trial.suggest_float(key, float(low), float(high), log=log)


def tune(
    config: str | Path | dict[str, Any],
    trials: int,
    train_trial: TrainTrial,
    out: str | Path | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    space: str | Path | None = None,
    overrides: list[str] | None = None,
    log: Log = print,
) -> dict[str, Any]:
    """Run `trials` more trials of the study; returns study.json's content (every trial of the
    study, from every machine, and the best). `train_trial(raw config, run dir, on_eval)`
    trains one run."""
    import optuna

    if trials < 1:
        raise LmforgeError(f"--trials {trials}: run at least 1 trial")
    raw = apply_overrides(config if isinstance(config, dict) else read_config_file(config),
                          overrides or [])
    base = load_config(raw)
    name = study_name or (Path(config).stem if not isinstance(config, dict) else "study")
    out = Path(out) if out else Path("runs") / name
    out.mkdir(parents=True, exist_ok=True)
    fields = read_space(space) if space else default_space(base)
    for key, spec in fields.items():  # a field the config refuses fails now, not in a trial
        _check_spec(key, spec)
        edge = spec["choices"][0] if "choices" in spec else spec["low"]
        try:
            load_config(with_values(raw, {key: edge}))
        except LmforgeError as error:
            raise LmforgeError(f"search space: {key}: {error}") from None
    metric = base.train.early_stopping_metric
    direction = "minimize" if metric_mode(metric) == "min" else "maximize"
    url = storage or f"sqlite:///{(out / 'study.db').resolve()}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(study_name=name, storage=open_storage(url),
                                    load_if_exists=True, direction=direction,
                                    pruner=optuna.pruners.MedianPruner())
    except ValueError as error:
        raise LmforgeError(f"study '{name}' in {_hide_password(url)}: {error}") from None
    parent = _mlflow_parent(study, base, name)
    log(f"study '{name}' ({url}): {len(study.trials)} trials so far; {trials} more, "
        f"{direction} val {metric} over {', '.join(fields)}")

    def objective(trial: Any) -> float:
        values = {key: _suggest(trial, key, spec) for key, spec in fields.items()}
        trial_raw = with_values(raw, values)
        if parent is not None:
            trial_raw = with_values(trial_raw, {"train.tracking": "none"})  # recorded below
        run_dir = out / f"trial-{trial.number}"
        trial.set_user_attr("run_dir", str(run_dir.resolve()))
        seen: list[float] = []

        def on_eval(step: int, metrics: dict[str, float]) -> bool:
            seen.append(metrics[metric])
            trial.report(metrics[metric], step)
            return trial.should_prune()

        result = train_trial(trial_raw, run_dir, on_eval)
        if parent is not None:
            tracking.record_run(load_config(with_values(trial_raw, {"train.tracking": "mlflow"})),
                                run_dir, parent, {"lmforge.trial": str(trial.number)})
        if not seen:
            raise LmforgeError("tune compares trials on the validation split: set "
                               "data.split.val above 0")
        if result.stopped:
            log(f"trial {trial.number}: pruned at step {result.steps} (val {metric} "
                f"{seen[-1]:.4f})")
            raise optuna.TrialPruned()
        best = min(seen) if direction == "minimize" else max(seen)
        log(f"trial {trial.number}: val {metric} {best:.4f} with "
            + ", ".join(f"{key}={_short(value)}" for key, value in values.items()))
        return best

    study.optimize(objective, n_trials=trials, catch=())
    return _finish(study, raw, out, url, metric, direction)


def _mlflow_parent(study: Any, cfg: Config, name: str) -> str | None:
    """With train.tracking mlflow, the run the study's trials are recorded under (made once
    per study, found again by a rerun or another machine)."""
    if cfg.train.tracking != "mlflow":
        return None
    parent = study.user_attrs.get("mlflow_parent_run")
    if parent is None:
        parent = tracking.start_parent(cfg, name, {"lmforge.study": name})
        study.set_user_attr("mlflow_parent_run", parent)
    return parent


def _finish(
    study: Any, raw: dict[str, Any], out: Path, url: str, metric: str, direction: str
) -> dict[str, Any]:
    """study.json and best.yaml (the base config with the best trial's values)."""
    rows = [{"number": t.number, "state": t.state.name.lower(), "value": t.value,
             "params": t.params, "run_dir": t.user_attrs.get("run_dir")}
            for t in study.trials]
    report: dict[str, Any] = {"study": study.study_name, "storage": _hide_password(url),
                              "metric": metric, "direction": direction, "trials": rows,
                              "best": None}
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    if complete:
        best = study.best_trial
        write_atomic(out / BEST_CONFIG, dump_config(load_config(with_values(raw, best.params))))
        report["best"] = {"number": best.number, "value": best.value, "params": best.params,
                          "config": str(out / BEST_CONFIG)}
    write_json_atomic(out / STUDY_FILE, report)
    return report


def open_storage(url: str, attempts: int = 6, pause_s: float = 0.25) -> Any:
    """Optuna's storage at `url`, its tables created if the database has none. Workers started
    together on a fresh database race to create the same tables (one gets "duplicate key" or
    "already exists"); the loser opens it again, and finds the tables the winner made."""
    import time

    import optuna
    import sqlalchemy.exc

    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url)
        except sqlalchemy.exc.DBAPIError as error:
            if attempt == attempts - 1:
                reason = str(error.orig or error).strip().splitlines()[0]
                raise LmforgeError(f"--storage {_hide_password(url)}: cannot open the study "
                                   f"database: {reason}") from None
            time.sleep(pause_s * (attempt + 1))
    raise AssertionError("unreachable")


def _hide_password(url: str) -> str:
    head, at, tail = url.rpartition("@")
    if not at or ":" not in head.split("//", 1)[-1]:
        return url
    scheme, _, user = head.partition("//")
    return f"{scheme}//{user.split(':')[0]}:***@{tail}"


def _short(value: Any) -> str:
    if isinstance(value, float) and value and not 1e-2 <= abs(value) < 1e3:
        return f"{value:.2e}"
    return f"{value:.4g}" if isinstance(value, float) and math.isfinite(value) else str(value)
