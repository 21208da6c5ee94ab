"""TF-IDF of character 1-3-grams + logistic regression: the cheap baseline every classifier is
reported beside, and a model of its own (a bundle like any other: vocabulary in JSON, idf and
weights in safetensors, no pickle). Fitting uses scikit-learn; predicting is a sparse product
done here, so a saved model predicts exactly what the fitted one did."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file
from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import normalize

from lmforge.errors import LmforgeError
from lmforge.files import write_json_atomic

VOCABULARY_FILE = "tfidf.json"
WEIGHTS_FILE = "model.safetensors"
# Below this many training texts, dropping n-grams seen only once could leave no vocabulary.
MIN_TEXTS_FOR_MIN_DF = 100
# Character n-grams need no word segmentation, so the same model works for Chinese and English;
# char_wb keeps n-grams inside word boundaries where there are spaces.
ANALYZER, NGRAM_RANGE = "char_wb", (1, 3)


def tfidf_vectorizer(n_texts: int) -> TfidfVectorizer:
    """The TF-IDF features of every TF-IDF model and baseline, for `n_texts` training texts."""
    return TfidfVectorizer(analyzer=ANALYZER, ngram_range=NGRAM_RANGE, sublinear_tf=True,
                           dtype=np.float32, min_df=2 if n_texts >= MIN_TEXTS_FOR_MIN_DF else 1)


@dataclass
class TfidfLogReg:
    """A fitted model: n-gram → column, idf per column, and the classifier's weights over the
    label indices it saw in training (`classes`); absent labels get probability 0."""

    vocabulary: dict[str, int]
    idf: np.ndarray  # (V,) float32
    coef: np.ndarray  # (c, V) float32; c = 1 for two classes (scikit-learn's binary form)
    intercept: np.ndarray  # (c,)
    classes: np.ndarray  # (c or 2,) label indices, int64
    n_labels: int

    @classmethod
    def fit(
        cls, texts: Sequence[str], y: np.ndarray, n_labels: int, seed: int = 0
    ) -> TfidfLogReg:
        """Fit on texts and label indices (at least two distinct ones)."""
        vectorizer = tfidf_vectorizer(len(texts))
        vectorizer.fit(list(texts))
        model = cls({term: int(i) for term, i in vectorizer.vocabulary_.items()},
                    vectorizer.idf_.astype(np.float32), np.zeros((0, 0), np.float32),
                    np.zeros(0, np.float32), np.zeros(0, np.int64), n_labels)
        classifier = LogisticRegression(C=4.0, max_iter=1000, random_state=seed)
        classifier.fit(model.features(texts), y)
        model.coef = classifier.coef_.astype(np.float32)
        model.intercept = classifier.intercept_.astype(np.float32)
        model.classes = classifier.classes_.astype(np.int64)
        return model

    def features(self, texts: Sequence[str]):  # scipy.sparse (n, V), rows of unit length
        counts = CountVectorizer(analyzer=ANALYZER, ngram_range=NGRAM_RANGE,
                                 vocabulary=self.vocabulary, dtype=np.float32)
        x = counts.transform(list(texts)).astype(np.float32)
        x.data = np.log(x.data) + 1  # sublinear tf
        return normalize(x.multiply(self.idf).tocsr(), norm="l2", copy=False)

    def probabilities(self, texts: Sequence[str]) -> np.ndarray:
        """(n, n_labels) probabilities in label-index order."""
        probs = np.zeros((len(texts), self.n_labels))
        if not len(texts):
            return probs
        scores = np.asarray(self.features(texts) @ self.coef.T, dtype=np.float64) + self.intercept
        if self.coef.shape[0] == 1:  # binary: sigmoid of the one score, as predict_proba does
            scores = np.hstack([np.zeros_like(scores), scores])
        scores -= scores.max(axis=1, keepdims=True)
        exp = np.exp(scores)
        probs[:, self.classes] = exp / exp.sum(axis=1, keepdims=True)
        return probs

    def save(self, directory: Path) -> None:
        write_json_atomic(directory / VOCABULARY_FILE, {
            "analyzer": ANALYZER, "ngram_range": list(NGRAM_RANGE), "sublinear_tf": True,
            "n_labels": self.n_labels, "vocabulary": self.vocabulary,
        })
        save_file({"idf": self.idf, "coef": self.coef, "intercept": self.intercept,
                   "classes": self.classes}, str(directory / WEIGHTS_FILE))

    @classmethod
    def load(cls, directory: Path) -> TfidfLogReg:
        """A saved model; a damaged file is an LmforgeError naming it."""
        path = directory / VOCABULARY_FILE
        try:
            spec = json.loads(path.read_text(encoding="utf-8"))
            vocabulary, n_labels = spec["vocabulary"], spec["n_labels"]
            if not isinstance(vocabulary, dict) or type(n_labels) is not int:
                raise TypeError("'vocabulary' must map n-grams to columns, 'n_labels' an int")
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise LmforgeError(f"{path}: not a TF-IDF vocabulary ({error})") from None
        weights_path = directory / WEIGHTS_FILE
        try:
            arrays = load_file(str(weights_path))
            model = cls(vocabulary, arrays["idf"], arrays["coef"], arrays["intercept"],
                        arrays["classes"], n_labels)
        except (OSError, SafetensorError, KeyError) as error:
            raise LmforgeError(f"{weights_path}: not a valid safetensors file of TF-IDF "
                               f"weights ({error})") from None
        shapes_fit = (model.idf.shape == (len(vocabulary),)
                      and model.coef.shape[1:] == (len(vocabulary),)
                      and len(model.intercept) == len(model.coef)
                      and bool(np.all((model.classes >= 0) & (model.classes < n_labels))))
        if not shapes_fit:
            raise LmforgeError(f"{weights_path}: its tensors do not fit the vocabulary in {path}")
        return model
