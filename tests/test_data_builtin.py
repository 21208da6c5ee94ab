"""The built-in Chinese review corpus: loads offline, deduplicated before splitting."""

import json

import pytest

from lmforge.config import BUILTIN_SENTIMENT, DataConfig
from lmforge.data import prepare_classification_data
from lmforge.errors import LmforgeError


def test_builtin_corpus_loads_deduplicates_and_splits_without_leaks():
    data = prepare_classification_data(DataConfig())
    report = data.report
    assert report["source"] == BUILTIN_SENTIMENT
    assert 34_000 < report["rows_read"] < 36_000
    assert 0.4 < report["duplicates"] / report["rows_read"] < 0.6
    assert data.label_names == ["negative", "positive"]
    train, val, test = set(data.train.texts), set(data.val.texts), set(data.test.texts)
    assert not test & (train | val)
    assert not val & train
    assert report["rows_kept"] == len(train) + len(val) + len(test)
    json.dumps(report)  # written as data_report.json


def test_unknown_builtin_lists_the_known_ones():
    with pytest.raises(
        LmforgeError, match=f"unknown built-in dataset 'builtin:nope'; known: {BUILTIN_SENTIMENT}"
    ):
        prepare_classification_data(DataConfig(path="builtin:nope"))
