"""train.tracking: mlflow records a finished run in an MLflow store: the resolved config as
params, every logged step's metrics, the reports and the bundle as artifacts, data hash tags."""

import sys

import pytest
from conftest import tiny_config

from lmforge import pipeline, tracking
from lmforge.errors import LmforgeError

pytestmark = pytest.mark.usefixtures("one_thread")
mlflow_tracking = pytest.importorskip("mlflow.tracking")


@pytest.mark.timeout(120)
def test_a_run_is_recorded_with_params_metrics_and_artifacts(reviews_csv, tmp_path,
                                                             monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default store: ./mlruns
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = tiny_config(reviews_csv, max_steps=20, eval_every=10, tracking="mlflow",
                      experiment="reviews")
    result = pipeline.train(cfg, out=tmp_path / "run", show_progress=False)

    client = mlflow_tracking.MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("reviews")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.params["train.lr"] == "0.003"
    assert run.data.params["data.label_column"] == "sentiment"
    losses = client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in losses] == [10, 20]
    f1 = client.get_metric_history(run.info.run_id, "eval/f1_macro")
    assert [m.step for m in f1] == [10, 20]
    data_hash = (tmp_path / "run" / "splits.json").read_text().split('"data_hash": "')[1][:64]
    assert run.data.tags["lmforge.data_hash"] == data_hash
    assert result.eval_report is not None
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"eval.json", "config.yaml", "model"} <= artifacts
    bundle = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert "model/lmforge.json" in bundle
    assert (tmp_path / "mlruns" / "artifacts").is_dir()


def test_tracking_uri_from_the_environment(tmp_path, monkeypatch):
    from lmforge.config import load_config

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'elsewhere.db'}")
    client, experiment_id = tracking.experiment(load_config({"train": {"tracking": "mlflow"}}))
    assert client.get_experiment(experiment_id).name == "lmforge"
    assert (tmp_path / "elsewhere.db").is_file()


def test_missing_mlflow_is_one_clear_error_before_training(reviews_csv, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed
    cfg = tiny_config(reviews_csv, tracking="mlflow")
    with pytest.raises(LmforgeError, match=r"pip install 'lmforge\[mlflow\]'"):
        pipeline.train(cfg, out=tmp_path / "run", show_progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.timeout(120)
def test_tune_records_each_trial_as_a_child_run(reviews_csv, tmp_path, monkeypatch):
    import yaml

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump(tiny_config(reviews_csv, max_steps=10, eval_every=5,
                                                 tracking="mlflow")))
    pipeline.tune(config, trials=2, out=tmp_path / "study")
    client = mlflow_tracking.MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("lmforge").experiment_id])
    (parent,) = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId")
                == parent.info.run_id]
    assert sorted(run.data.tags["lmforge.trial"] for run in children) == ["0", "1"]
    assert all(run.data.params["train.tracking"] == "mlflow" for run in children)
