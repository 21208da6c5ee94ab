"""Translation metrics: BLEU and chrF (sacrebleu, its standard tokenization; `zh` for Chinese
targets) with bootstrap 95% intervals, and the two baselines every model is shown beside:
copying the source, and retrieval (the target of the most similar training source by TF-IDF
over character n-grams)."""

from __future__ import annotations

from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table as RichTable

from lmforge.errors import LmforgeError
from lmforge.evaluation.metrics import _index_chunks, _percentile_interval

# A target side counts as Chinese when this share of its letters are CJK ideographs.
CHINESE_SHARE = 0.3


def target_tokenize(references: list[str]) -> str:
    """sacrebleu's tokenizer for these references: 'zh' (one token per Chinese character) for
    Chinese, '13a' (its standard, mteval's) otherwise."""
    letters = [ch for text in references for ch in text if ch.isalpha()]
    cjk = sum(1 for ch in letters if "\u4e00" <= ch <= "\u9fff" or "\u3400" <= ch <= "\u4dbf")
    return "zh" if letters and cjk / len(letters) >= CHINESE_SHARE else "13a"


def _metrics(tokenize: str) -> dict[str, Any]:
    from sacrebleu.metrics import BLEU, CHRF

    return {"bleu": BLEU(tokenize=tokenize), "chrf": CHRF()}


def translation_scores(
    hypotheses: list[str], references: list[str], tokenize: str, n_resamples: int, seed: int = 0
) -> dict[str, Any]:
    """Corpus BLEU and chrF of `hypotheses` against one reference each, with 95% percentile
    bootstrap intervals over sentences (each resample's corpus score from its sentences'
    statistics, as sacrebleu's own bootstrap does); ci95 None with n_resamples 0."""
    if len(hypotheses) != len(references):
        raise LmforgeError(f"{len(hypotheses)} translations but {len(references)} references")
    if not references:
        raise LmforgeError("cannot score translations of zero sentences")
    scores: dict[str, Any] = {"n": len(references)}
    intervals: dict[str, list[float]] = {}
    for name, metric in _metrics(tokenize).items():
        stats = np.asarray(metric._extract_corpus_statistics(hypotheses, [references]))
        scores[name] = float(metric._compute_score_from_stats(list(stats.sum(0))).score)
        if n_resamples:
            values = [metric._compute_score_from_stats(list(row)).score
                      for idx in _index_chunks(len(stats), n_resamples, seed)
                      for row in stats[idx].sum(axis=1)]
            intervals[name] = _percentile_interval(np.asarray(values))
    scores["ci95"] = intervals or None
    return scores


def copy_source(sources: list[str]) -> list[str]:
    """The baseline that translates nothing: each source as its own translation (scores above
    zero wherever names, numbers and punctuation carry over)."""
    return list(sources)


def retrieval_translations(
    train_sources: list[str], train_targets: list[str], sources: list[str]
) -> list[str]:
    """For each source, the target of the most similar training source: cosine of TF-IDF over
    character 1–3-grams (fit on the training sources)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    if not train_sources:
        raise LmforgeError("the retrieval baseline needs training pairs")
    vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 3), sublinear_tf=True)
    index = vectorizer.fit_transform(train_sources)
    best = []
    for start in range(0, len(sources), 512):  # a block of similarities at a time
        similarity = vectorizer.transform(sources[start:start + 512]) @ index.T
        best.extend(np.asarray(similarity.argmax(axis=1)).ravel().tolist())
    return [train_targets[i] for i in best]


def render_translation_table(report: dict[str, Any], console: Console, title: str) -> None:
    """The model's BLEU and chrF beside the baselines', with their intervals."""
    table = RichTable(title=f"{title} (n={report['n']}, BLEU tokenize={report['tokenize']})")
    for column in ("", "BLEU", "chrF"):
        table.add_column(column, justify="left" if not column else "right")
    rows = [("model", report["model"])] + list(report.get("baselines", {}).items())
    for name, scores in rows:
        ci = scores.get("ci95") or {}
        table.add_row(name.replace("_", " "), *(
            f"{scores[key]:.2f}" + (f" [{ci[key][0]:.1f}, {ci[key][1]:.1f}]" if key in ci else "")
            for key in ("bleu", "chrf")))
    console.print(table)
    for example in report.get("examples", [])[:3]:
        console.print(f"  {example['source']}\n    → {example['output']}\n    "
                      f"(reference: {example['reference']})", markup=False)
