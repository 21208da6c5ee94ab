"""Cleaning: the shared per-text transform, and the rows it drops, each counted under its reason."""

import pytest

from lmforge.config import CleanConfig, DataConfig
from lmforge.data import clean_text, prepare_classification_data, read_labelled
from lmforge.errors import LmforgeError

NO_SPLIT = {"val": 0, "test": 0}


def _csv(tmp_path, rows, name="data.csv"):
    path = tmp_path / name
    lines = ["text,label"] + [f'"{text}",{label}' for text, label in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_clean_text_normalizes_unicode_and_whitespace():
    clean = CleanConfig()
    assert clean_text("  ＡＢＣ１２３\u3000hello \t\n world  ", clean) == "ABC123 hello world"


def test_clean_text_strips_html_without_gluing_words():
    clean = CleanConfig()
    assert clean_text("<p>Great</p><p>phone</p> &amp; <b>fast</b>!", clean) == "Great phone & fast!"
    assert clean_text("line<br/>next<script>alert(1)</script>", clean) == "line next"
    # An escaped tag is text the user wrote, not markup.
    assert clean_text("&lt;b&gt; is bold", clean) == "<b> is bold"


def test_clean_text_does_nothing_when_switched_off():
    clean = CleanConfig(normalize=False, strip_html=False)
    assert clean_text(" <b>ＡＢ</b> ", clean) == " <b>ＡＢ</b> "


def test_duplicates_are_dropped_and_conflicting_copies_all_removed(tmp_path):
    path = _csv(
        tmp_path,
        [
            ("good", "pos"),
            ("good", "pos"),
            ("bad", "neg"),
            ("meh", "pos"),
            ("meh", "neg"),
            ("meh", "pos"),
            ("fine", "pos"),
            ("awful", "neg"),
        ],
    )
    split, report = read_labelled(path, DataConfig(path=path))
    assert split.texts == ["good", "bad", "fine", "awful"]
    assert report["duplicates"] == 1
    assert report["conflicts"] == {"texts": 1, "rows": 3}
    assert report["examples"]["conflicting_labels"] == [5, 6, 7]


def test_conflicts_are_removed_even_when_dedupe_is_off(tmp_path):
    path = _csv(tmp_path, [("same", "a"), ("same", "b"), ("x", "a"), ("x", "a"), ("y", "b")])
    data = prepare_classification_data(
        DataConfig(path=path, clean={"dedupe": False}, split=NO_SPLIT)
    )
    assert sorted(data.train.texts) == ["x", "x", "y"]
    assert data.report["conflicts"] == {"texts": 1, "rows": 2}
    assert any("dedupe is off" in warning for warning in data.report["warnings"])


def test_length_rules_drop_rows_with_their_reason(tmp_path):
    path = _csv(
        tmp_path,
        [("<br>", "a"), ("hi", "a"), ("just right", "b"), ("x" * 50, "b"), ("also okay", "a")],
    )
    data = prepare_classification_data(
        DataConfig(path=path, clean={"min_chars": 3, "max_chars": 20}, split=NO_SPLIT)
    )
    assert sorted(data.train.texts) == ["also okay", "just right"]
    dropped = data.report["dropped"]
    assert (dropped["empty"], dropped["too_short"], dropped["too_long"]) == (1, 1, 1)
    assert data.report["rows_read"] == data.report["rows_kept"] + sum(dropped.values())


def test_everything_dropped_names_the_count_of_each_rule(tmp_path):
    path = _csv(tmp_path, [("ab", "a")] * 4 + [("c", "b")] * 6)
    with pytest.raises(
        LmforgeError,
        match=r"no rows left after cleaning .*data.csv: 10 read, dropped: 10 too_short",
    ):
        prepare_classification_data(DataConfig(path=path, clean={"min_chars": 5}))


def test_one_class_after_cleaning_is_an_error(tmp_path):
    path = _csv(tmp_path, [("good", "pos"), ("great", "pos"), ("no", "neg")])
    with pytest.raises(LmforgeError, match="needs at least 2 classes, found 1: 'pos'"):
        prepare_classification_data(DataConfig(path=path, clean={"min_chars": 3}))
