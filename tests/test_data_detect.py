"""detect_columns, used by `lmforge init` to write a config that works on the user's file."""

import pytest

from lmforge.data import detect_columns
from lmforge.errors import LmforgeError


def test_finds_text_and_label_beside_an_id_column(tmp_path):
    path = tmp_path / "tickets.csv"
    rows = [
        f"{i},{'refund please item broken' if i % 2 else 'where is my parcel'} #{i},"
        f"{'billing' if i % 2 else 'shipping'}"
        for i in range(40)
    ]
    path.write_text("ticket_id,body_text,queue\n" + "\n".join(rows) + "\n", encoding="utf-8")
    assert detect_columns(str(path)) == {
        "format": "csv",
        "text_column": "body_text",
        "label_column": "queue",
    }


def test_prefers_conventional_names(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(
        '{"title": "a long title that is longer than the review", "review": "ok", "sentiment": 1}\n'
        '{"title": "another long title that is long", "review": "bad", "sentiment": 0}\n',
        encoding="utf-8",
    )
    assert detect_columns(str(path)) == {
        "format": "jsonl",
        "text_column": "review",
        "label_column": "sentiment",
    }


def test_folder_uses_the_fixed_column_names(tmp_path):
    (tmp_path / "pos").mkdir()
    assert detect_columns(str(tmp_path)) == {
        "format": "folder",
        "text_column": "text",
        "label_column": "label",
    }


def test_no_label_column_is_a_clear_error(tmp_path):
    path = tmp_path / "texts.csv"
    path.write_text("id,text\n" + "".join(f"{i},text {i}\n" for i in range(10)), encoding="utf-8")
    with pytest.raises(LmforgeError, match="no label column found in .*; columns are: id, text"):
        detect_columns(str(path))
