"""Slice metrics: per value of a column the model does not read, the largest gap, and a warning
for values too small to judge; through training and evaluate."""

import csv
import json

import pytest
from conftest import make_reviews, tiny_config

import lmforge
from lmforge.errors import LmforgeError
from lmforge.evaluation.slices import MIN_SLICE_ROWS, slice_report

pytestmark = pytest.mark.usefixtures("one_thread")


def test_each_value_gets_its_metrics_and_the_gap_compares_values_with_enough_rows():
    n = MIN_SLICE_ROWS
    gold = ["pos"] * n + ["neg"] * n + ["pos"] * n + ["pos", "neg"]
    pred = ["pos"] * n + ["neg"] * n + ["neg"] * n + ["pos", "pos"]
    region = ["north"] * (2 * n) + ["south"] * n + ["west"] * 2
    out = slice_report(gold, pred, ["neg", "pos"], {"region": region}, n_resamples=50)
    by_region = out["slices"]["region"]
    assert list(by_region) == ["north", "south", "west"]
    assert by_region["north"]["n"] == 2 * n and by_region["north"]["accuracy"] == 1.0
    assert by_region["south"]["accuracy"] == 0.0
    assert by_region["west"] | {"ci95": None} == {
        "n": 2, "accuracy": 0.5, "precision_macro": 0.25, "recall_macro": 0.5,
        "f1_macro": pytest.approx(1 / 3), "ci95": None}
    lo, hi = by_region["north"]["ci95"]["accuracy"]
    assert lo <= 1.0 <= hi
    gap = out["slice_gaps"]["region"]
    # west (2 rows) is too small to judge, so the gap is between north and south.
    assert gap["accuracy"] == {"difference": 1.0, "best": "north", "worst": "south"}
    assert gap["values_compared"] == 2
    assert out["slice_warnings"] == [
        f"region: too few test rows to judge (under {MIN_SLICE_ROWS}) for west (2)"]


def test_a_slice_holding_one_class_is_not_punished_for_the_other():
    out = slice_report(["pos", "pos"], ["pos", "pos"], ["neg", "pos"], {"c": ["a", "a"]}, 0)
    assert out["slices"]["c"]["a"]["f1_macro"] == 1.0
    assert "ci95" not in out["slices"]["c"]["a"]


def _reviews_with_region(path):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["review", "sentiment", "region"])
        for i, (text, label) in enumerate(make_reviews()):
            writer.writerow([text, label, ["north", "south", ""][i % 3]])
    return path


def test_training_and_evaluate_report_slices_from_a_column_the_model_never_reads(tmp_path):
    data = _reviews_with_region(tmp_path / "reviews.csv")
    cfg = tiny_config(data, max_steps=4, eval_every=4)
    cfg["eval"]["slices"] = ["region"]
    run = lmforge.train(cfg, out=tmp_path / "run", show_progress=False)
    report = json.loads((run.run_dir / "eval.json").read_text())
    values = report["slices"]["region"]
    assert set(values) == {"north", "south", "(missing)"}
    assert sum(v["n"] for v in values.values()) == report["n"]
    assert set(report["slice_gaps"]["region"]) == {"accuracy", "f1_macro", "values_compared"}
    # The region never reaches the model: the bundle reads the text column only.
    meta = json.loads((run.bundle_dir / "lmforge.json").read_text())
    assert meta["text_column"] == "review"
    again = lmforge.evaluate(run.run_dir, show=False)
    assert again["slices"] == report["slices"]


def test_a_slice_column_missing_from_the_data_is_named(tmp_path, reviews_csv):
    cfg = tiny_config(reviews_csv)
    cfg["eval"]["slices"] = ["region"]
    with pytest.raises(LmforgeError, match=r"column 'region' not found .*set eval\.slices"):
        lmforge.train(cfg, out=tmp_path / "run", show_progress=False)
