"""`lmforge tune`: Optuna trials as normal runs, a study that a rerun continues and that several
processes share through PostgreSQL, pruning through the training loop's on_eval, best.yaml."""

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from conftest import assert_one_line_error, tiny_config
from serve_support import postgres_url

from lmforge import pipeline, tuning
from lmforge.cli import main
from lmforge.config import TrainConfig, load_config
from lmforge.errors import LmforgeError
from lmforge.training import fit

pytestmark = pytest.mark.usefixtures("one_thread")


def write_config(path: Path, data: Path) -> Path:
    path.write_text(yaml.safe_dump(tiny_config(data, max_steps=10, eval_every=5)))
    return path


def trials_of(storage: str, study: str) -> list:
    return optuna.load_study(study_name=study, storage=storage).trials


@pytest.mark.timeout(240)
def test_three_trials_then_a_rerun_continues_the_study(reviews_csv, tmp_path, capsys):
    config = write_config(tmp_path / "small.yaml", reviews_csv)
    out = tmp_path / "study"
    first = pipeline.tune(config, trials=3, out=out)
    assert [t["number"] for t in first["trials"]] == [0, 1, 2]
    second = pipeline.tune(config, trials=3, out=out)
    storage = f"sqlite:///{(out / 'study.db').resolve()}"
    trials = trials_of(storage, "small")
    assert [t.number for t in trials] == list(range(6))
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 6  # each drew its own
    for t in trials:
        run = out / f"trial-{t.number}"
        assert (run / "config.yaml").is_file() and (run / "metrics.jsonl").is_file()
        assert load_config(run / "config.yaml").train.lr == pytest.approx(t.params["train.lr"])
    best = load_config(out / "best.yaml")
    assert second["best"]["number"] in range(6)
    assert best.train.lr == pytest.approx(second["best"]["params"]["train.lr"])
    assert best.train.max_steps == 10  # the base config, with the best trial's values
    assert json.loads((out / "study.json").read_text()) == second
    assert "best: trial" in capsys.readouterr().err


def test_default_space_tunes_the_sections_the_task_reads():
    classification = tuning.default_space(load_config({}))
    generation = tuning.default_space(load_config({"task": "generation"}))
    assert "classification.token_dropout" in classification
    assert "classification.token_dropout" not in generation and "train.lr" in generation


@pytest.mark.timeout(120)
def test_a_space_file_overrides_the_default(reviews_csv, tmp_path):
    config = write_config(tmp_path / "c.yaml", reviews_csv)
    space = tmp_path / "space.yaml"
    space.write_text("train.batch_size: {choices: [8, 16]}\nmodel.n_layers: {low: 1, high: 2}\n")
    report = pipeline.tune(config, trials=1, out=tmp_path / "s", space=space)
    assert set(report["trials"][0]["params"]) == {"train.batch_size", "model.n_layers"}
    assert isinstance(report["trials"][0]["params"]["model.n_layers"], int)


def test_a_space_naming_no_config_field_fails_before_any_trial(
    reviews_csv, tmp_path, monkeypatch, capsys
):
    config = write_config(tmp_path / "c.yaml", reviews_csv)
    space = tmp_path / "space.yaml"
    space.write_text("train.learning_rate: {low: 0.001, high: 0.01}\n")
    monkeypatch.setattr(sys, "argv", ["lmforge", "tune", str(config), "--trials", "1",
                                      "--space", str(space), "--out", str(tmp_path / "s")])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert_one_line_error(exit_info.value.code, capsys.readouterr().err, "train.learning_rate")
    assert not list((tmp_path / "s").glob("trial-*"))
    space.write_text("train.lr: {low: 0.01, high: 0.001}\n")
    with pytest.raises(LmforgeError, match="low < high"):
        tuning.read_space(space)


def test_on_eval_stops_training_where_it_says(tmp_path):
    """What prunes a trial: fit calls on_eval after each evaluation and stops when it says."""
    data = [(torch.randn(4), 0) for _ in range(64)]
    model = torch.nn.Linear(4, 2)

    def collate(items):
        return {"x": torch.stack([x for x, _ in items]), "y": torch.tensor([y for _, y in items])}

    def loss(model, batch):
        return torch.nn.functional.cross_entropy(model(batch["x"]), batch["y"])

    calls = []

    def on_eval(step, metrics):
        calls.append((step, metrics["val_loss"]))
        return step >= 4

    cfg = TrainConfig(max_steps=20, batch_size=8, eval_every=2, device="cpu")
    result = fit(model, data, collate, loss, lambda m: {"val_loss": 1.0, "f1_macro": 0.5}, cfg,
                 tmp_path, show_progress=False, on_eval=on_eval)
    assert result.stopped and result.state.step == 4 and [s for s, _ in calls] == [2, 4]


def fresh_postgres_database() -> str:
    """URL of a new, empty database on the test PostgreSQL: what a team's first `tune` meets."""
    import sqlalchemy

    url, reason = postgres_url()
    if url is None:
        pytest.skip(f"PostgreSQL test skipped: {reason}")
    name = f"tune_{uuid.uuid4().hex[:10]}"
    engine = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    engine.dispose()
    return f"{url.rsplit('/', 1)[0]}/{name}"


def _open_study(url: str) -> str:
    try:
        optuna.create_study(study_name="s", storage=tuning.open_storage(url),
                            load_if_exists=True)
        return "ok"
    except Exception as error:  # the test shows what the worker met
        return repr(error)


@pytest.mark.timeout(300)
def test_workers_started_together_on_a_fresh_database_all_open_the_study():
    # Two workers creating the study's tables at once: one used to die with "duplicate key
    # value violates unique constraint" (PostgreSQL's CREATE TYPE/CREATE TABLE race).
    import multiprocessing

    urls = [fresh_postgres_database() for _ in range(10)]
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        for url in urls:
            assert pool.map(_open_study, [url, url]) == ["ok", "ok"], url


@pytest.mark.timeout(60)
def test_a_storage_that_cannot_be_opened_names_it(tmp_path):
    url = f"sqlite:///{tmp_path}/no/such/folder/study.db"
    with pytest.raises(LmforgeError, match=r"--storage sqlite:///.*no/such/folder.*cannot open"):
        tuning.open_storage(url, attempts=2, pause_s=0.01)


@pytest.mark.timeout(400)
def test_two_workers_on_postgresql_share_one_study(reviews_csv, tmp_path):
    url = fresh_postgres_database()
    config = write_config(tmp_path / "c.yaml", reviews_csv)
    study = f"shared-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "lmforge", "tune", str(config), "--trials", "2",
               "--storage", url, "--study", study]
    workers = [subprocess.Popen([*command, "--out", str(tmp_path / name)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
               for name in ("a", "b")]
    errors = [worker.communicate(timeout=360)[1] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], errors
    trials = trials_of(url, study)
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    dirs = sorted(p.name for name in ("a", "b") for p in (tmp_path / name).glob("trial-*"))
    assert dirs == ["trial-0", "trial-1", "trial-2", "trial-3"]  # each trial run once
    ran = {t.user_attrs["run_dir"] for t in trials}
    assert len(ran) == 4
