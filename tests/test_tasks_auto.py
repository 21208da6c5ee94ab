"""model.arch auto (classification): the candidates trained and fused, the best on validation
shipped, every one on the leaderboard; a named architecture stays exactly that one."""

import json

import pytest
from conftest import tiny_config

import lmforge
from lmforge import pipeline
from lmforge.errors import LmforgeError

pytestmark = pytest.mark.usefixtures("one_thread")


def test_arch_auto_ships_a_model_at_least_as_good_as_tfidf_on_val(tmp_path, reviews_csv,
                                                                   capsys):
    cfg = tiny_config(reviews_csv, max_steps=8, eval_every=4)  # a weak encoder
    cfg["model"]["arch"] = "auto"
    result = lmforge.train(cfg, out=tmp_path / "run", show_progress=False)
    report = json.loads((tmp_path / "run" / "eval.json").read_text(encoding="utf-8"))
    board = {row["name"]: row for row in report["leaderboard"]}
    assert {"transformer", "tfidf_logreg"} <= set(board)
    shipped = [name for name, row in board.items() if row["shipped"]]
    assert shipped == [report["shipped"]]
    for key in ("accuracy", "f1_macro"):
        assert board[report["shipped"]]["val"][key] >= board["tfidf_logreg"]["val"][key]
        # eval.json's top level is the shipped bundle's, the baselines beside it as always
        assert report[key] == pytest.approx(board[report["shipped"]]["test"][key])
    assert "tfidf_logreg" in report["baselines"] and "ci95" in board["transformer"]["test"]
    meta = json.loads((result.bundle_dir / "lmforge.json").read_text(encoding="utf-8"))
    expected_arch = "ensemble" if report["shipped"] == "fusion" else report["shipped"]
    assert meta["arch"] == expected_arch
    assert lmforge.load(result.bundle_dir).predict(["很好"])[0]["label"] in ("neg", "pos")
    for name in ("transformer", "tfidf_logreg"):  # each candidate is a bundle of its own
        assert lmforge.load(tmp_path / "run" / "candidates" / name).labels == ["neg", "pos"]
    assert "Leaderboard" in capsys.readouterr().err


def test_a_named_architecture_trains_that_one_alone(tmp_path, reviews_csv):
    result = lmforge.train(tiny_config(reviews_csv, max_steps=4), out=tmp_path / "run",
                           show_progress=False)
    meta = json.loads((result.bundle_dir / "lmforge.json").read_text(encoding="utf-8"))
    assert meta["arch"] == "transformer"
    assert not (tmp_path / "run" / "candidates").exists()
    assert "leaderboard" not in json.loads((tmp_path / "run" / "eval.json").read_text())


def test_init_and_the_quickstart_use_arch_auto(reviews_csv):
    import yaml

    assert yaml.safe_load(pipeline.init_config("classification", reviews_csv))["model"]["arch"] \
        == "auto"
    assert pipeline.quickstart_config(fast=True).model.arch == "auto"


def test_arch_auto_needs_a_val_split_and_a_classification_task():
    with pytest.raises(LmforgeError, match="data.split.val"):
        pipeline.load_config({"model": {"arch": "auto"}, "data": {"split": {"val": 0}}})
    with pytest.raises(LmforgeError, match="classification"):
        pipeline.load_config({"task": "generation", "model": {"arch": "auto"}})
