"""Reading datasets: every format, malformed rows counted by line, clear errors for mistakes."""

import hashlib
import json

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmforge.config import DataConfig
from lmforge.data import prepare_classification_data, read_labelled, read_texts
from lmforge.data.sources import read_records
from lmforge.errors import LmforgeError

TEXTS = ["great phone", "awful battery", "NA", "works, mostly", "broke after a day", "love it"]
LABELS = ["pos", "neg", "neg", "pos", "neg", "pos"]


def _write(tmp_path, fmt):
    frame = pd.DataFrame({"id": range(len(TEXTS)), "text": TEXTS, "label": LABELS})
    if fmt == "csv":
        path = tmp_path / "data.csv"
        frame.to_csv(path, index=False)
    elif fmt == "tsv":
        path = tmp_path / "data.tsv"
        frame.to_csv(path, sep="\t", index=False)
    elif fmt == "jsonl":
        path = tmp_path / "data.jsonl"
        frame.to_json(path, orient="records", lines=True, force_ascii=False)
    elif fmt == "parquet":
        path = tmp_path / "data.parquet"
        frame.to_parquet(path)
    else:
        path = tmp_path / "data"
        for i, (text, label) in enumerate(zip(TEXTS, LABELS, strict=True)):
            (path / label).mkdir(parents=True, exist_ok=True)
            (path / label / f"{i}.txt").write_text(text + "\n", encoding="utf-8")
    return path


def _read(path, **data):
    split, report = read_labelled(str(path), DataConfig(path=str(path), **data))
    return split, report


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet", "folder"])
def test_every_format_reads_the_same_texts_and_labels(tmp_path, fmt):
    split, report = _read(_write(tmp_path, fmt))
    assert sorted(zip(split.texts, split.labels, strict=True)) == sorted(
        zip(TEXTS, LABELS, strict=True)
    )
    assert report["format"] == fmt
    assert report["rows_read"] == report["rows_kept"] == len(TEXTS)


def test_integer_labels_become_strings_ordered_numerically(tmp_path):
    path = tmp_path / "stars.jsonl"
    rows = [{"text": f"review number {i}", "label": stars} for i, stars in enumerate([10, 2, 1])]
    path.write_text("\n".join(json.dumps(row) for row in rows * 2), encoding="utf-8")
    data = prepare_classification_data(DataConfig(path=str(path), split={"val": 0, "test": 0}))
    assert data.label_names == ["1", "2", "10"]
    assert set(data.train.labels) == {"1", "2", "10"}


def test_csv_with_a_broken_row_and_invalid_utf8_is_read_and_counted(tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_bytes(
        b"text,label\n"
        b"good value,pos\n"
        b"too,many,fields,neg\n"
        b"caf\xe9 was fine,pos\n"
        b'"a stray quote,neg\n'
        b"terrible service,neg\n"
        b",pos\n"
    )
    split, report = _read(path)
    assert split.texts == ["good value", "caf\ufffd was fine", "terrible service"]
    assert report["dropped"]["wrong_field_count"] == 2
    assert report["examples"]["wrong_field_count"] == [3, 5]
    assert report["dropped"]["missing_text"] == 1
    assert report["examples"]["missing_text"] == [7]
    assert report["undecodable"] == {"rows": 1, "examples": [4]}
    assert report["rows_read"] == report["rows_kept"] + sum(report["dropped"].values())


def test_jsonl_bad_lines_are_counted_by_line_number(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(
        '{"text": "fine", "label": "a"}\n'
        "{not json\n"
        "\n"
        '["a list"]\n'
        '{"text": "no label"}\n'
        '{"text": "also fine", "label": "b"}\n',
        encoding="utf-8",
    )
    split, report = _read(path)
    assert split.texts == ["fine", "also fine"]
    assert report["examples"] == {
        "invalid_json": [2],
        "not_an_object": [4],
        "missing_label": [5],
    }
    assert report["blank_lines"] == 1


def test_missing_column_error_names_the_columns_there_are(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("review,stars\nok,1\n", encoding="utf-8")
    with pytest.raises(
        LmforgeError, match=r"column 'text' not found in .*data.csv; columns are: review, stars"
    ):
        _read(path)


def test_empty_file_missing_file_and_unknown_extension_are_clear_errors(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    with pytest.raises(LmforgeError, match="empty.csv has no rows"):
        _read(empty)
    with pytest.raises(LmforgeError, match="data file not found: .*nope.csv"):
        _read(tmp_path / "nope.csv")
    odd = tmp_path / "data.xyz"
    odd.write_text("x", encoding="utf-8")
    with pytest.raises(LmforgeError, match=r"unknown format '\.xyz' for .*data.xyz; use one of"):
        _read(odd)


def test_plain_text_cannot_train_a_classifier(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("one\ntwo\n", encoding="utf-8")
    with pytest.raises(LmforgeError, match="has no labels"):
        prepare_classification_data(DataConfig(path=str(path)))


def test_folder_ignores_and_counts_stray_files(tmp_path):
    path = _write(tmp_path, "folder")
    (path / "README.md").write_text("about", encoding="utf-8")
    (path / "pos" / "notes.md").write_text("not data", encoding="utf-8")
    split, report = _read(path)
    assert len(split.texts) == len(TEXTS)
    assert report["ignored_files"] == {"count": 2, "examples": ["README.md", "pos/notes.md"]}


def test_a_corpus_folder_and_a_labelled_folder_count_stray_files_alike(tmp_path):
    path = _write(tmp_path, "folder")
    (path / "pos" / "notes.md").write_text("not data", encoding="utf-8")
    (path / "pos" / ".draft.txt").write_text("hidden", encoding="utf-8")
    labelled = read_records(str(path), "auto", "text", label_column="label")
    corpus = read_records(str(path), "auto", "text", label_column=None)
    assert sorted(corpus.texts) == sorted(text + "\n" for text in TEXTS)
    assert labelled.data_hash == corpus.data_hash
    for records in (labelled, corpus):
        assert list(records.ignored_files.examples) == ["pos/.draft.txt", "pos/notes.md"]


def test_data_hash_is_the_sha256_of_the_file(tmp_path):
    path = _write(tmp_path, "csv")
    data = prepare_classification_data(DataConfig(path=str(path), split={"val": 0, "test": 0}))
    assert data.data_hash == hashlib.sha256(path.read_bytes()).hexdigest()


def test_read_texts_from_txt_skips_and_counts_blank_lines(tmp_path):
    path = tmp_path / "new.txt"
    path.write_text("first review\n\n  <b>second</b>  \n", encoding="utf-8")
    texts, report = read_texts(str(path), "text")
    assert texts == ["first review", "  <b>second</b>  "]  # not cleaned: the predictor cleans
    assert report["skipped"] == {"blank_line": 1}
    assert report["examples"] == {"blank_line": [2]}


def test_read_texts_from_a_table_needs_no_label_column(tmp_path):
    path = tmp_path / "new.csv"
    path.write_text("text\nhello\n\nNA\n", encoding="utf-8")
    texts, report = read_texts(str(path), "text")
    assert texts == ["hello", "NA"]
    assert report["rows_read"] == 2


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    body=st.lists(
        st.sampled_from(
            [
                b"ok text,a",
                b"other,b",
                b'"quoted, text",a',
                b'"open,b',
                b"x,y,z",
                b"\xff\xfe,a",
                b"",
                b"  ",
                b",",
                b"only",
                b'{"text": "j", "label": 1}',
            ]
        ),
        max_size=12,
    ),
    suffix=st.sampled_from([".csv", ".tsv", ".jsonl"]),
)
def test_any_file_is_read_or_rejected_with_a_clear_error_and_every_row_accounted_for(
    tmp_path, body, suffix
):
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(b"text,label\n" + b"\n".join(body))
    try:
        _, report = _read(path)
    except LmforgeError:
        return
    assert report["rows_read"] == report["rows_kept"] + sum(report["dropped"].values())
    json.dumps(report)
