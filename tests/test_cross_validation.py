"""`lmforge train --cv K`: folds of train + val, each scored on rows it never saw; the test split
untouched; cv.json; the bundle refit on every train and val row."""

import json

import numpy as np
import pytest
from conftest import tiny_config

from lmforge import pipeline
from lmforge.data.split import cv_folds, text_key
from lmforge.errors import LmforgeError
from lmforge.tasks import TASKS

pytestmark = pytest.mark.usefixtures("one_thread")


def test_folds_cover_every_row_once_keep_duplicates_together_and_stratify():
    texts = [f"text {i % 60}" for i in range(120)]  # each text twice
    labels = ["a" if i % 60 < 20 else "b" for i in range(120)]
    folds = cv_folds(texts, labels, 4, seed=0)
    assert sorted(np.concatenate(folds).tolist()) == list(range(120))
    for held in folds:
        keys = {text_key(texts[i]) for i in held}
        outside = {text_key(texts[i]) for i in range(120) if i not in set(held.tolist())}
        assert not keys & outside  # a text and its duplicate never straddle folds
        share = np.mean([labels[i] == "a" for i in held])
        assert abs(share - 1 / 3) < 0.1
    assert [f.tolist() for f in cv_folds(texts, None, 4, 1)] != [f.tolist() for f in folds]


def test_too_few_rows_of_a_class_for_k_folds_is_an_error():
    with pytest.raises(LmforgeError, match="smallest class has 2"):
        cv_folds([f"t{i}" for i in range(10)], ["a"] * 8 + ["b"] * 2, 3, 0)


@pytest.mark.timeout(120)
def test_cv_run_scores_held_out_folds_and_leaves_test_alone(reviews_csv, tmp_path, monkeypatch):
    recipe = TASKS["classification"]
    seen = []
    refold = type(recipe).refold

    def spy(self, run, parts):
        seen.append((run.split_texts, {name: list(p) for name, p in parts.items()}))
        return refold(self, run, parts)

    monkeypatch.setattr(type(recipe), "refold", spy)
    cfg = tiny_config(reviews_csv, max_steps=20, eval_every=10)
    result = pipeline.train(cfg, out=tmp_path / "run", cv=3, show_progress=False)

    report = json.loads((tmp_path / "run" / "cv.json").read_text())
    assert report == result.cv and report["k"] == 3 and len(report["folds"]) == 3
    assert set(report["mean"]) == set(report["std"]) == {"accuracy", "f1_macro"}
    for fold in report["folds"]:
        assert 0 <= fold["metrics"]["accuracy"] <= 1 and fold["metrics"]["n"] > 0
    folds = [parts for _, parts in seen[:3]]
    texts, refit = seen[0][0], seen[3][1]
    pool = texts["train"] + texts["val"]
    held = [set(parts["test"]) for parts in folds]
    assert sum(map(len, held)) == len(pool) and set().union(*held) == set(range(len(pool)))
    for parts, out in zip(folds, held, strict=True):
        assert not out & (set(parts["train"]) | set(parts["val"]))  # scored rows never trained on
        assert parts["val"]  # early stopping on rows of its own, not the scored fold
    assert not {text_key(t) for t in pool} & {text_key(t) for t in texts["test"]}
    assert sorted(refit["train"]) == list(range(len(pool))) and not refit["val"]

    record = json.loads((tmp_path / "run" / "splits.json").read_text())["splits"]
    assert record["test"] == [text_key(t) for t in texts["test"]]  # the same test split
    assert len(record["train"]) == len(pool) and record["val"] == []
    assert (tmp_path / "run" / "eval.json").is_file() and (tmp_path / "run" / "model").is_dir()
    assert not (tmp_path / "run" / "cv" / "fold-1" / "checkpoints").exists()


def test_cv_with_resume_is_refused(reviews_csv, tmp_path):
    with pytest.raises(LmforgeError, match="--cv"):
        pipeline.train(tiny_config(reviews_csv), out=tmp_path / "r", cv=3, resume=True)


@pytest.mark.timeout(120)
def test_cv_runs_for_generation_through_its_recipe(tmp_path):
    from conftest import make_reviews

    data = tmp_path / "docs.txt"
    data.write_text("\n".join(text for text, _ in make_reviews(120)), encoding="utf-8")
    cfg = {"task": "generation", "data": {"path": str(data)}, "tokenizer": {"vocab_size": 120},
           "model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64, "max_length": 16},
           "train": {"max_steps": 10, "batch_size": 8, "eval_every": 5}}
    result = pipeline.train(cfg, out=tmp_path / "run", cv=2, show_progress=False)
    assert set(result.cv["mean"]) == {"test_loss", "perplexity"}
    assert sum(fold["held_out_rows"] for fold in result.cv["folds"]) == result.cv["refit"]["rows"]
    assert result.eval_report["test_loss"] is not None


def test_cross_validation_of_arch_auto_is_refused_in_one_line(tmp_path, reviews_csv):
    cfg = tiny_config(reviews_csv)
    cfg["model"]["arch"] = "auto"
    with pytest.raises(LmforgeError, match="--cv needs a named model.arch"):
        pipeline.train(cfg, out=tmp_path / "run", cv=2, show_progress=False)
