"""Splitting: disjoint, deterministic per seed, stratified; label ordering; and the record of
which texts each split held (splits.json)."""

import json
from collections import Counter

import pytest

from lmforge.config import DataConfig, SplitConfig
from lmforge.data import order_labels, prepare_classification_data
from lmforge.data.split import SplitRecord, split_dataset, text_key
from lmforge.errors import LmforgeError


def _rows(n_a=300, n_b=100):
    texts = [f"text number {i}" for i in range(n_a + n_b)]
    return texts, ["a"] * n_a + ["b"] * n_b


def test_order_labels_numeric_when_all_integers_else_alphabetic():
    assert order_labels(["10", "2", "1", "2"]) == ["1", "2", "10"]
    assert order_labels(["neg", "pos", "10", "neg"]) == ["10", "neg", "pos"]


def test_split_is_deterministic_for_a_seed_and_changes_with_it():
    texts, labels = _rows()
    first = split_dataset(texts, labels, SplitConfig(seed=3))
    again = split_dataset(texts, labels, SplitConfig(seed=3))
    other = split_dataset(texts, labels, SplitConfig(seed=4))
    assert first == again
    assert first[2].texts != other[2].texts


def test_stratified_split_keeps_label_proportions_and_is_disjoint():
    texts, labels = _rows()
    train, val, test, warnings = split_dataset(texts, labels, SplitConfig(val=0.2, test=0.1))
    assert (len(train.texts), len(val.texts), len(test.texts)) == (280, 80, 40)
    assert Counter(val.labels) == {"a": 60, "b": 20}
    assert Counter(test.labels) == {"a": 30, "b": 10}
    assert not set(train.texts) & set(val.texts) | set(train.texts) & set(test.texts)
    assert warnings == []


def test_zero_test_fraction_gives_an_empty_test_split():
    texts, labels = _rows()
    train, val, test, _ = split_dataset(texts, labels, SplitConfig(val=0.1, test=0))
    assert test.texts == [] and test.labels == []
    assert len(train.texts) + len(val.texts) == len(texts)


def test_a_class_too_small_to_stratify_falls_back_with_a_warning():
    texts, labels = _rows(n_a=50, n_b=1)
    train, val, test, warnings = split_dataset(texts, labels, SplitConfig())
    assert len(train.texts) + len(val.texts) + len(test.texts) == 51
    assert any("not stratified: class 'b' has only 1 row" in w for w in warnings)


def test_too_few_rows_to_split_is_a_clear_error():
    with pytest.raises(LmforgeError, match="too few rows to split"):
        split_dataset(["x", "y"], ["a", "b"], SplitConfig(val=0.1, test=0.1))


def test_report_shows_split_sizes_and_balance(tmp_path):
    texts, labels = _rows()
    path = tmp_path / "data.csv"
    path.write_text(
        "text,label\n" + "".join(f"{t},{lab}\n" for t, lab in zip(texts, labels, strict=True)),
        encoding="utf-8",
    )
    report = prepare_classification_data(DataConfig(path=str(path))).report
    assert report["split_sizes"] == {"train": 320, "val": 40, "test": 40}
    assert report["label_balance"]["test"] == {"a": 30, "b": 10}
    assert set(report["length_chars"]) == {"min", "p50", "p90", "p99", "max"}


def test_a_split_record_finds_its_splits_in_edited_data_in_split_order():
    texts, labels = _rows()
    train, val, test, _ = split_dataset(texts, labels, SplitConfig(val=0.1, test=0.1))
    record = SplitRecord.of("hash", {"train": train.texts, "val": val.texts, "test": test.texts})
    assert SplitRecord.from_json(json.loads(json.dumps(record.to_json()))) == record
    assert record.keys["test"][0] == text_key(test.texts[0]) and len(text_key("x")) == 16
    edited = ["a new text"] + texts[::-1] + ["another new text"]  # reordered, rows added
    found, missing = record.locate("test", edited)
    assert [edited[i] for i in found] == test.texts and missing == 0
    edited.remove(test.texts[5])
    found, missing = record.locate("test", edited)
    assert missing == 1 and len(found) == len(test.texts) - 1
    unseen = [edited[i] for i in record.unseen(edited)]  # neither train nor val
    assert sorted(unseen) == sorted(["a new text", "another new text", *test.texts[:5],
                                     *test.texts[6:]])
