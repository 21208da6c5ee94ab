"""Evaluate: metrics with bootstrap intervals, language-model perplexity, cheap baselines, and
the eval.json report."""

from lmforge.evaluation.baselines import majority_baseline, tfidf_logreg_baseline
from lmforge.evaluation.language_model import perplexity, token_counts, token_nll, unigram_nll
from lmforge.evaluation.metrics import (
    bootstrap_intervals,
    classification_metrics,
    paired_bootstrap_difference,
)
from lmforge.evaluation.report import build_eval_report, render_table

__all__ = [
    "bootstrap_intervals",
    "build_eval_report",
    "classification_metrics",
    "majority_baseline",
    "paired_bootstrap_difference",
    "perplexity",
    "render_table",
    "tfidf_logreg_baseline",
    "token_counts",
    "token_nll",
    "unigram_nll",
]
