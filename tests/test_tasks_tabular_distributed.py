"""A feature table trained by two processes (torchrun, DDP over gloo on the CPU): the bundle it
writes predicts."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from test_tasks_tabular import function_table, three_two_one, write_csv

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.mark.timeout(300)
def test_a_table_model_trains_with_two_processes_and_its_bundle_predicts(tmp_path):
    data = function_table(tmp_path / "f.csv", 400, seed=1)
    cfg = {"task": "regression", "data": {"path": str(data)},
           "model": {"hidden": [32, 32], "dropout": 0.0},
           "train": {"max_steps": 300, "eval_every": 100, "lr": 3e-3, "batch_size": 32},
           "eval": {"bootstrap": 0}}
    config = tmp_path / "cfg.yaml"
    config.write_text(json.dumps(cfg))
    run = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "lmforge", "train", str(config), "--out",
                           str(run), "--nproc", "2"],
                          env=ENV, capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("run written to") == 1  # rank 0 alone writes the run
    report = json.loads((run / "eval.json").read_text())
    assert report["r2"] > 0.9, report

    x = np.array([[1.0, -1.0, 0.5], [-1.5, 0.3, 1.2]])
    new = write_csv(tmp_path / "new.csv", ["x1", "x2", "x3"], x.tolist())
    out = tmp_path / "out.jsonl"
    predicted = subprocess.run([sys.executable, "-m", "lmforge", "predict", str(run / "model"),
                                "--input", str(new), "--output", str(out)],
                               env=ENV, capture_output=True, text=True, timeout=120)
    assert predicted.returncode == 0, predicted.stderr
    values = [json.loads(line)["value"] for line in out.read_text().splitlines()]
    spread = float(np.std(three_two_one(np.random.default_rng(1).uniform(-2, 2, (400, 3)))))
    assert np.allclose(values, three_two_one(x), atol=0.25 * spread), (values, three_two_one(x))
