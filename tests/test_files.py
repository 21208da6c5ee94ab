"""Atomic writes: a file or a folder is the old one or the new one, never a part of either."""

import json
import os

import pytest

from lmforge.files import (
    replace_dir_atomic,
    restore_dir,
    staged_dir,
    write_atomic,
    write_json_atomic,
)


def test_write_atomic_replaces_a_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "eval.json"
    path.write_text("old")
    write_atomic(path, "nouveau 新")
    assert path.read_text(encoding="utf-8") == "nouveau 新"
    write_atomic(path, b"\x00bytes")
    assert path.read_bytes() == b"\x00bytes"
    assert [p.name for p in tmp_path.iterdir()] == ["eval.json"]


def test_write_json_atomic_writes_readable_unicode_json(tmp_path):
    path = tmp_path / "report.json"
    write_json_atomic(path, {"label": "好评", "n": 3})
    assert json.loads(path.read_text(encoding="utf-8")) == {"label": "好评", "n": 3}
    assert "好评" in path.read_text(encoding="utf-8")  # not \u-escaped: readable as it is


def test_a_write_that_fails_before_its_rename_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "eval.json"
    path.write_text('{"accuracy": 0.9}')

    def no_space(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", no_space)
    with pytest.raises(OSError, match="No space"):
        write_json_atomic(path, {"accuracy": 0.1})
    assert json.loads(path.read_text()) == {"accuracy": 0.9}
    assert [p.name for p in tmp_path.iterdir()] == ["eval.json"]  # the temporary is gone


def test_a_folder_written_in_stages_replaces_the_old_one_whole(tmp_path):
    final = tmp_path / "model"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with staged_dir(final) as staged:
        assert staged.is_dir() and not any(staged.iterdir())
        (staged / "sub").mkdir()
        (staged / "sub" / "new.txt").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    assert (final / "sub" / "new.txt").read_text() == "new" and not (final / "old.txt").exists()


def test_a_folder_whose_writing_fails_is_left_as_it_was(tmp_path):
    final = tmp_path / "model"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with pytest.raises(ValueError), staged_dir(final) as staged:
        (staged / "half.txt").write_text("half")
        raise ValueError("the export failed")
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    assert [p.name for p in final.iterdir()] == ["old.txt"]


def test_replace_dir_atomic_can_keep_the_previous_folder(tmp_path):
    final, staged = tmp_path / "last", tmp_path / "last.tmp"
    final.mkdir()
    (final / "step").write_text("8")
    staged.mkdir()
    (staged / "step").write_text("16")
    replace_dir_atomic(staged, final, keep_previous=True)
    assert (final / "step").read_text() == "16"
    assert (tmp_path / "last.prev" / "step").read_text() == "8"
    assert not staged.exists()


def test_restore_dir_puts_back_a_folder_left_between_the_two_renames(tmp_path):
    final, previous = tmp_path / "model", tmp_path / "model.prev"
    previous.mkdir()
    (previous / "weights").write_text("old")
    (tmp_path / "model.tmp").mkdir()  # the new copy, never renamed into place
    restore_dir(final)
    assert (final / "weights").read_text() == "old" and not previous.exists()
    restore_dir(final)  # nothing to do: nothing changes
    assert (final / "weights").read_text() == "old"
