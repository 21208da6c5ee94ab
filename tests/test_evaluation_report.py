"""eval.json content and the printed table: the model beside its baselines, with intervals."""

import io
import json
from pathlib import Path

import numpy as np
from rich.console import Console

from lmforge import render
from lmforge.config import EvalConfig
from lmforge.evaluation import build_eval_report, render_table

LABELS = ["neg", "pos"]
TRAIN_TEXTS = ["很好", "喜欢", "满意", "太差", "讨厌", "失望"] * 5
TRAIN_LABELS = ["pos", "pos", "pos", "neg", "neg", "neg"] * 5
TEST_TEXTS = ["很好的", "太差了", "很喜欢", "失望的", "满意", "讨厌"]
GOLD = ["pos", "neg", "pos", "neg", "pos", "neg"]
PRED = ["pos", "neg", "pos", "pos", "pos", "neg"]
PROBS = np.array([[0.2, 0.8], [0.9, 0.1], [0.3, 0.7], [0.4, 0.6], [0.1, 0.9], [0.7, 0.3]])


def _report(config: EvalConfig) -> dict:
    return build_eval_report(
        gold=GOLD,
        pred=PRED,
        probs=PROBS,
        labels=LABELS,
        train_texts=TRAIN_TEXTS,
        train_labels=TRAIN_LABELS,
        test_texts=TEST_TEXTS,
        config=config,
    )


def _render(report: dict) -> str:
    out = io.StringIO()
    render_table(report, Console(file=out, width=160))
    return out.getvalue()


def test_report_puts_baselines_beside_the_model_and_is_json():
    report = _report(EvalConfig(bootstrap=200))
    assert report["accuracy"] == 5 / 6
    assert report["bootstrap_resamples"] == 200
    lo, hi = report["ci95"]["accuracy"]
    assert lo <= report["accuracy"] <= hi
    model_keys = {
        "n",
        "labels",
        "accuracy",
        "precision_macro",
        "recall_macro",
        "f1_macro",
        "per_class",
        "confusion_matrix",
        "roc_auc",
    }
    assert model_keys <= set(report)
    for name in ("majority", "tfidf_logreg"):
        assert set(report["baselines"][name]) == model_keys
    assert report["baselines"]["majority"]["accuracy"] == 0.5
    assert set(report["vs_tfidf_logreg"]) == {"accuracy", "f1_macro", "p_model_not_better"}
    assert json.loads(json.dumps(report)) == report


def test_report_without_baselines_or_bootstrap_holds_only_the_model():
    report = _report(EvalConfig(baselines=False, bootstrap=0))
    assert "baselines" not in report and "ci95" not in report
    assert "vs_tfidf_logreg" not in report
    json.dumps(report)


def test_table_shows_metric_names_numbers_and_the_comparison():
    report = _report(EvalConfig(bootstrap=200))
    text = _render(report)
    for name in (
        "accuracy",
        "precision_macro",
        "recall_macro",
        "f1_macro",
        "roc_auc",
        "f1[neg]",
        "f1[pos]",
        "recall[pos]",
        "majority",
        "tfidf_logreg",
    ):
        assert name in text
    lo, hi = report["ci95"]["accuracy"]
    assert f"0.833 [{lo:.3f}, {hi:.3f}]" in text
    assert "0.500" in text  # the majority baseline's accuracy
    assert "model \u2212 tfidf_logreg: accuracy" in text


def test_table_works_without_baselines_or_intervals():
    text = _render(_report(EvalConfig(baselines=False, bootstrap=0)))
    assert "0.833" in text and "f1[pos]" in text
    assert "tfidf_logreg" not in text


def test_a_model_that_does_not_beat_a_baseline_gets_one_line_of_what_to_try():
    report = _report(EvalConfig(bootstrap=0))
    report["baselines"]["tfidf_logreg"].update(accuracy=0.9, f1_macro=0.9)
    out = io.StringIO()
    render_table(report, Console(file=out, width=160, soft_wrap=True))
    hint = [line for line in out.getvalue().splitlines() if "does not beat" in line]
    assert len(hint) == 1 and "tfidf_logreg" in hint[0] and "pretrained" in hint[0]
    assert '"When the model does not beat its baseline" in README.md' in hint[0]
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    assert "\n## When the model does not beat its baseline\n" in readme

    report["baselines"]["tfidf_logreg"].update(accuracy=0.5, f1_macro=0.5)
    assert "does not beat" not in _render(report)


def test_piped_the_comparison_line_is_never_broken(capsys):
    report = _report(EvalConfig(bootstrap=200))
    render_table(report, render.console(), title="Test split of runs/" + "deep/" * 30 + "run")
    err = capsys.readouterr().err
    assert any(line.startswith("model \u2212 tfidf_logreg: accuracy")
               and line.endswith("of resamples)") for line in err.splitlines()), err
