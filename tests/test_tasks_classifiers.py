"""Classifiers that are no single network: a TF-IDF + logistic-regression bundle, and an
ensemble of bundles (lmforge ensemble) whose weights are fitted on the validation split."""

import json
import sys

import numpy as np
import pytest
from conftest import assert_one_line_error, make_reviews, tiny_config
from serve_support import app_client, settings

import lmforge
from lmforge.bundle import check_bundle
from lmforge.cli import main
from lmforge.config import load_config, read_config_file
from lmforge.data import read_labelled
from lmforge.evaluation import tfidf_logreg_baseline
from lmforge.evaluation.fusion import fit_weights, log_loss
from lmforge.evaluation.metrics import encode_labels
from lmforge.models.tfidf import TfidfLogReg
from lmforge.runs import read_split_record
from lmforge.tasks.classifiers import save_tfidf_bundle, tfidf_meta

pytestmark = pytest.mark.usefixtures("one_thread")

CLEAN = {"normalize": True, "strip_html": True, "dedupe": True, "min_chars": 1, "max_chars": None}


def tfidf_bundle(directory, labels=("neg", "pos")):
    """A TF-IDF bundle fitted on make_reviews(), its two labels named `labels`."""
    rows = make_reviews()
    texts = [text for text, _ in rows]
    y = np.array([int(label == "pos") for _, label in rows])
    model = TfidfLogReg.fit(texts, y, len(labels))
    meta = {"task": "classification", "arch": "transformer", "labels": list(labels),
            "text_column": "review", "label_column": "sentiment", "clean": CLEAN}
    save_tfidf_bundle(directory, model, tfidf_meta(meta))
    return model


def test_a_tfidf_bundle_predicts_the_same_probabilities_after_loading(tmp_path):
    rows = make_reviews(seed=1)
    texts = [text for text, _ in rows]
    model = tfidf_bundle(tmp_path / "model")
    loaded = lmforge.load(tmp_path / "model")
    assert (tmp_path / "model" / "tfidf.json").is_file()
    assert not list(tmp_path.rglob("*.pkl"))
    probs, _ = loaded.probabilities(texts)
    assert np.array_equal(probs, model.probabilities(texts))
    # the baseline beside every report is the same model
    train = make_reviews()
    _, baseline = tfidf_logreg_baseline([t for t, _ in train], [lab for _, lab in train], texts,
                                        ["neg", "pos"])
    assert np.allclose(probs, baseline)
    assert loaded.predict(["很好 great"])[0]["label"] == "pos"
    assert check_bundle(tmp_path / "model")["arch"] == "tfidf_logreg"


def test_a_damaged_tfidf_vocabulary_is_one_line_naming_it(tmp_path, monkeypatch, capsys):
    tfidf_bundle(tmp_path / "model")
    (tmp_path / "model" / "tfidf.json").write_text("{", encoding="utf-8")
    texts = tmp_path / "t.txt"
    texts.write_text("很好\n", encoding="utf-8")
    monkeypatch.setattr(sys, "argv", ["lmforge", "predict", str(tmp_path / "model"),
                                      "--input", str(texts)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert_one_line_error(exit_info.value.code, capsys.readouterr().err,
                          str(tmp_path / "model" / "tfidf.json"))


@pytest.mark.parametrize("verb", [["export"], ["compress", "--quantize", "int8"]])
def test_export_and_compress_refuse_a_tfidf_bundle_in_one_line(tmp_path, monkeypatch, capsys,
                                                                verb):
    tfidf_bundle(tmp_path / "model")
    monkeypatch.setattr(sys, "argv", ["lmforge", verb[0], str(tmp_path / "model"), *verb[1:]])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert_one_line_error(exit_info.value.code, capsys.readouterr().err, "tfidf_logreg",
                          "not one network")


def test_greedy_selection_weighs_complementary_members_and_drops_a_useless_one():
    gold = np.array([0, 1] * 50)
    right_on_even = np.where((np.arange(100) % 2 == 0)[:, None], [[0.9, 0.1]], [[0.4, 0.6]])
    right_on_odd = np.where((np.arange(100) % 2 == 1)[:, None], [[0.1, 0.9]], [[0.6, 0.4]])
    useless = np.full((100, 2), 0.5)
    weights = fit_weights([right_on_even, right_on_odd, useless], gold)
    assert weights[0] > 0 and weights[1] > 0 and weights[2] == 0
    assert weights.sum() == pytest.approx(1)
    fused = weights[0] * right_on_even + weights[1] * right_on_odd
    assert log_loss(fused, gold) < min(log_loss(right_on_even, gold), log_loss(right_on_odd, gold))


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two weak encoders on the same data and split (different seeds)."""
    import csv

    tmp = tmp_path_factory.mktemp("runs")
    data = tmp / "reviews.csv"
    with open(data, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "review", "sentiment"])
        writer.writerows((i, text, label) for i, (text, label) in enumerate(make_reviews()))
    runs = []
    for seed in (0, 1):
        cfg = tiny_config(data, max_steps=8, seed=seed, eval_every=4)
        cfg["data"]["cache_dir"] = str(tmp / "cache")
        runs.append(lmforge.train(cfg, out=tmp / f"run{seed}", show_progress=False).run_dir)
    return runs


def test_an_ensemble_is_the_weighted_average_with_weights_fitted_on_val(two_runs, tmp_path):
    a, b = two_runs
    meta = lmforge.ensemble([a, b], out=tmp_path / "fused")
    members = {m["name"]: m["weight"] for m in meta["members"]}
    # the weights are greedy selection's on the runs' val split
    cfg = load_config(read_config_file(a / "config.yaml"))
    rows, _ = read_labelled(cfg.data.path, cfg.data)
    val = rows.take(read_split_record(a).locate("val", rows.texts)[0])
    loaded = [lmforge.load(run / "model") for run in (a, b)]
    val_probs = [p.probabilities(val.texts)[0] for p in loaded]
    expected = fit_weights(val_probs, encode_labels(val.labels, ["neg", "pos"], "val"))
    assert [members.get(name, 0.0) for name in ("run0", "run1")] == pytest.approx(expected)
    texts = [text for text, _ in make_reviews(20, seed=5)]
    fused = lmforge.load(tmp_path / "fused")
    average = sum(w * p.probabilities(texts)[0] for w, p in zip(expected, loaded, strict=True))
    assert np.allclose(fused.probabilities(texts)[0], average)
    assert meta["fusion"]["leaderboard"][-1]["name"] == "ensemble"
    # evaluate shows each member beside the ensemble, on the run's test split
    report = lmforge.evaluate(tmp_path / "fused", show=False)
    board = {row["name"]: row for row in report["leaderboard"]}
    assert board["ensemble"]["test"]["accuracy"] == pytest.approx(report["accuracy"])
    assert set(board) == {name for name, w in members.items() if w > 0} | {"ensemble"}


def test_an_ensemble_serves_as_one_model(two_runs, tmp_path):
    lmforge.ensemble(two_runs, out=tmp_path / "fused")
    db = f"sqlite:///{tmp_path / 'serve.db'}"
    with app_client(settings(tmp_path / "fused", db, auth=False)) as client:
        response = client.post("/v1/classify", json={"model": "fused", "input": ["很好", "很差"]})
        assert response.status_code == 200, response.text
        body = response.json()
        assert [row["label"] for row in body["data"]] == \
            [row["label"] for row in lmforge.load(tmp_path / "fused").predict(["很好", "很差"])]
        assert body["usage"]["prompt_tokens"] > 0


def test_members_with_other_labels_are_refused_in_one_line(two_runs, tmp_path, monkeypatch,
                                                           capsys):
    tfidf_bundle(tmp_path / "other", labels=("bad", "good"))
    monkeypatch.setattr(sys, "argv", ["lmforge", "ensemble", str(two_runs[0]),
                                      str(tmp_path / "other"), "--out", str(tmp_path / "f")])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert_one_line_error(exit_info.value.code, capsys.readouterr().err, "labels", "bad")
    assert not (tmp_path / "f").exists()
    meta = json.loads((two_runs[0] / "model" / "lmforge.json").read_text(encoding="utf-8"))
    assert meta["labels"] == ["neg", "pos"]
