"""Feature tables through the verbs: the MLP learns a function, a broken row is counted and not
fatal, training resumes exactly, init types the columns, predict and evaluate read tables."""

import csv
import json

import numpy as np
import pytest
from safetensors.numpy import load_file

import lmforge
from lmforge import pipeline
from lmforge.errors import LmforgeError

pytestmark = pytest.mark.usefixtures("one_thread")


def three_two_one(x):
    """A fixed 3-2-1 network (tanh hidden units): the function the MLP must learn."""
    w1 = np.array([[1.5, -2.0], [0.5, 1.0], [-1.0, 0.8]])
    hidden = np.tanh(x @ w1 + np.array([0.2, -0.1]))
    return hidden @ np.array([2.0, -1.5]) + 0.3


def write_csv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def function_table(path, n, seed):
    x = np.random.default_rng(seed).uniform(-2, 2, size=(n, 3))
    rows = [[*map(float, row), float(y)] for row, y in zip(x, three_two_one(x), strict=True)]
    return write_csv(path, ["x1", "x2", "x3", "label"], rows)


def class_table(path, n, seed):
    """Two numbers and a category decide the class: a colour 'red' flips it."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        a, b = rng.normal(size=2)
        colour = rng.choice(["red", "green", "blue"])
        positive = (a + b > 0) != (colour == "red")
        rows.append([f"{a:.4f}", f"{b:.4f}", colour, "yes" if positive else "no"])
    return write_csv(path, ["a", "b", "colour", "label"], rows)


@pytest.mark.timeout(120)
def test_a_tiny_mlp_fits_a_noiseless_3_2_1_function(tmp_path):
    data = function_table(tmp_path / "f.csv", 600, seed=0)
    result = lmforge.train({"task": "regression", "data": {"path": str(data)},
                            "model": {"hidden": [32, 32], "dropout": 0.0},
                            "train": {"max_steps": 800, "eval_every": 200, "lr": 3e-3}},
                           out=tmp_path / "run", show_progress=False)
    report = json.loads((result.run_dir / "eval.json").read_text())
    spread = float(np.std(three_two_one(np.random.default_rng(0).uniform(-2, 2, (600, 3)))))
    assert report["rmse"] < 0.08 * spread  # noiseless: the MSE is near zero
    assert report["r2"] > 0.99 and report["ci95"]["rmse"][0] <= report["rmse"]
    assert report["rmse"] < 0.2 * report["baselines"]["train_mean"]["rmse"]
    assert set(report["baselines"]) == {"train_mean", "ridge", "hist_gradient_boosting"}
    meta = json.loads((result.bundle_dir / "lmforge.json").read_text())
    assert meta["inputs"] == "table" and meta["task"] == "regression"

    new = write_csv(tmp_path / "new.csv", ["x3", "x1", "x2"], [[0.5, 1.0, -1.0]])
    lmforge.predict(result.bundle_dir, new, tmp_path / "out.jsonl")
    (row,) = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert row["value"] == pytest.approx(float(three_two_one(np.array([[1.0, -1.0, 0.5]]))[0]),
                                         abs=0.1 * spread)


@pytest.mark.timeout(120)
def test_bad_rows_are_counted_not_fatal_and_categories_unseen_map_to_unknown(tmp_path):
    path = class_table(tmp_path / "c.csv", 300, seed=1)
    lines = path.read_text().splitlines()
    lines[5] = lines[4]  # a duplicate: the same features and target
    lines += ["0.5,0.5,red", "0.1,,green,no", "zz,0.3,blue,yes", "0.2,0.2,green,",
              lines[6].rsplit(",", 1)[0] + ("," + ("no" if lines[6].endswith("yes") else "yes"))]
    path.write_text("\n".join(lines) + "\n")
    result = lmforge.train({"task": "classification", "data": {"path": str(path)},
                            "model": {"arch": "mlp"}, "train": {"max_steps": 300}},
                           out=tmp_path / "run", show_progress=False)
    report = json.loads((result.run_dir / "data_report.json").read_text())
    assert report["dropped"] == {"wrong_field_count": 1, "missing_label": 1, "duplicate": 1}
    assert report["examples"]["wrong_field_count"] == [302]
    assert report["columns"] == {"a": "number", "b": "number", "colour": "category"}
    cells = {reason: n for split in report["cells"].values() for reason, per in split.items()
             for n in per.values()}
    assert cells["missing"] >= 1 and cells["not_a_number"] >= 1
    # same features, another target: data, kept (300 + 5 rows - 3 dropped)
    assert report["rows_kept"] == 302
    tested = json.loads((result.run_dir / "eval.json").read_text())
    assert tested["accuracy"] > 0.8 and tested["accuracy"] > tested["baselines"]["majority"][
        "accuracy"]

    other = class_table(tmp_path / "other.csv", 40, seed=9)
    other.write_text(other.read_text() + "1.0,2.0\n0.3,0.1,blue,\n")
    scored = lmforge.evaluate(result.run_dir, data=other, show=False)
    assert scored["n"] == 40 and scored["accuracy"] > 0.7
    assert scored["data_check"]["dropped"] == {"wrong_field_count": 1, "missing_label": 1}

    predictor = lmforge.load(result.bundle_dir)
    (unseen,) = predictor.predict([{"a": 1.0, "b": 1.0, "colour": "purple"}])
    assert unseen["label"] == "yes"  # an unseen colour is "unknown", not red
    (red,) = predictor.predict([{"a": 1.0, "b": 1.0, "colour": "red"}])
    assert red["label"] == "no"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("task", ["classification", "regression"])
def test_training_resumes_exactly(tmp_path, task):
    table = class_table if task == "classification" else function_table
    data = table(tmp_path / "t.csv", 200, seed=2)
    cfg = {"task": task, "data": {"path": str(data)}, "model": {"arch": "mlp"},
           "train": {"max_steps": 40, "eval_every": 10}}
    straight = lmforge.train(cfg, out=tmp_path / "a", show_progress=False)
    stopped = lmforge.train(cfg, out=tmp_path / "b", show_progress=False,
                            on_eval=lambda step, metrics: step == 20)
    assert stopped.stopped
    resumed = lmforge.train(cfg, out=tmp_path / "b", resume=True, show_progress=False)
    assert resumed.resumed_from == 20 and resumed.steps == 40
    a = load_file(str(straight.bundle_dir / "model.safetensors"))
    b = load_file(str(resumed.bundle_dir / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[key], b[key]) for key in a)


def test_init_types_each_column_and_writes_an_mlp_config(tmp_path, capsys):
    data = class_table(tmp_path / "c.csv", 30, seed=3)
    config = pipeline.init_config("classification", data)
    assert "arch: mlp" in config and "inputs: table" in config
    assert "- colour" in config
    err = capsys.readouterr().err
    assert "column a: number" in err and "column colour: category" in err


def test_a_feature_column_that_is_not_there_is_named(tmp_path):
    data = class_table(tmp_path / "c.csv", 30, seed=3)
    with pytest.raises(LmforgeError, match="feature column.*'?size'? not found.*data.features"):
        lmforge.train({"task": "classification",
                       "data": {"path": str(data), "features": ["a", "size"]}},
                      out=tmp_path / "run", show_progress=False)


@pytest.mark.timeout(120)
def test_onnx_export_matches_pytorch_and_int8_keeps_the_labels(tmp_path):
    data = class_table(tmp_path / "c.csv", 200, seed=4)
    result = lmforge.train({"task": "classification", "data": {"path": str(data)},
                            "model": {"arch": "mlp"}, "train": {"max_steps": 60}},
                           out=tmp_path / "run", show_progress=False)
    report = pipeline.export(result.run_dir, out=tmp_path / "onnx")
    assert report["fp32_check"]["max_abs_output_diff"] < 1e-4
    rows = [{"a": a, "b": b, "colour": c} for a, b, c in
            [(0.3, -1.2, "red"), (None, 2.0, "blue"), (1.0, 0.5, "mauve")]]
    original = lmforge.load(result.bundle_dir).predict(rows)
    exported = lmforge.load(tmp_path / "onnx")
    assert json.loads((tmp_path / "onnx" / "lmforge.json").read_text())["runtime"] == "onnx"
    for mine, theirs in zip(original, exported.predict(rows), strict=True):
        assert mine["label"] == theirs["label"]
        assert mine["score"] == pytest.approx(theirs["score"], abs=1e-5)
    int8 = pipeline.compress(result.run_dir, quantize="int8", out=tmp_path / "int8")
    assert int8["int8_vs_pytorch"]["labels_differ"] <= 1
    assert (tmp_path / "int8" / "model.onnx").stat().st_size < \
        (tmp_path / "onnx" / "model.onnx").stat().st_size
    with pytest.raises(LmforgeError, match="--quantize int8 only"):
        pipeline.compress(result.run_dir, prune=0.5, out=tmp_path / "pruned")


def test_the_regression_loss_is_a_knob_of_task_regression_only():
    from lmforge.config import load_config

    assert load_config({"task": "regression", "regression": {"loss": "huber"}}).regression.loss \
        == "huber"
    with pytest.raises(LmforgeError, match="regression.loss is not used by task 'classification'"):
        load_config({"task": "classification", "regression": {"loss": "huber"}})


@pytest.mark.timeout(120)
def test_a_table_without_a_text_column_trains_the_mlp_on_its_own_schedule(tmp_path):
    from lmforge.config import load_config, read_config_file
    from lmforge.tasks.tabular import TABLE_TRAIN_DEFAULTS

    data = class_table(tmp_path / "c.csv", 80, seed=5)
    result = lmforge.train({"task": "classification", "data": {"path": str(data)},
                            "train": {"max_steps": 20}}, out=tmp_path / "run",
                           show_progress=False)
    written = load_config(read_config_file(result.run_dir / "config.yaml"))
    assert written.model.arch == "mlp" and written.train.lr == TABLE_TRAIN_DEFAULTS["lr"]
    assert written.train.max_steps == 20 and written.train.early_stopping_metric == "val_loss"
    assert json.loads((result.bundle_dir / "lmforge.json").read_text())["inputs"] == "table"


@pytest.mark.timeout(120)
def test_on_a_noisy_linear_table_the_mlp_does_as_well_as_ridge(tmp_path):
    """The MLP starts as ridge and its hidden layers learn only what is left: on a small linear
    table with noise (where hidden layers alone overfit) it is no worse than the ridge baseline."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 6))
    y = x @ rng.normal(size=6) + rng.normal(scale=1.0, size=300)
    data = write_csv(tmp_path / "linear.csv", [*(f"x{i}" for i in range(6)), "label"],
                     [[*r, t] for r, t in zip(x.tolist(), y.tolist(), strict=True)])
    result = lmforge.train({"task": "regression", "data": {"path": str(data)},
                            "train": {"epochs": 30}, "eval": {"bootstrap": 0}},
                           out=tmp_path / "run", show_progress=False)
    report = json.loads((result.run_dir / "eval.json").read_text())
    # (30 test rows: one row's error is worth a point of R²)
    assert report["r2"] >= report["baselines"]["ridge"]["r2"] - 0.025, report
