"""The run directory: what a rerun may replace without --force, and what it may not."""

import pytest
from torch import nn

from lmforge.errors import LmforgeError
from lmforge.runs import create_run_dir
from lmforge.training.checkpoint import save_checkpoint


def failed_start(run_dir):
    """What a run that failed before its first checkpoint leaves (a wrong column, say)."""
    (run_dir / "tokenizer").mkdir(parents=True)
    (run_dir / "config.yaml").write_text("task: classification\n")
    (run_dir / "data_report.json").write_text("{}")
    (run_dir / "metrics.jsonl").write_text("")
    return run_dir


def test_an_unfinished_start_is_replaced_with_one_note(tmp_path):
    run_dir = failed_start(tmp_path / "run")
    notes = []
    create_run_dir(run_dir, resume=False, force=False, log=notes.append)
    assert run_dir.is_dir() and not any(run_dir.iterdir())
    assert len(notes) == 1 and "starting it again" in notes[0]


@pytest.mark.parametrize("holds", ["checkpoint", "pre-training checkpoint", "bundle"])
def test_a_run_with_a_checkpoint_or_a_bundle_needs_resume_or_force(tmp_path, holds):
    run_dir = failed_start(tmp_path / "run")
    if holds == "bundle":
        (run_dir / "model").mkdir()
        (run_dir / "model" / "lmforge.json").write_text("{}")
    else:
        where = run_dir / "pretrain" if holds.startswith("pre") else run_dir
        save_checkpoint(where / "checkpoints" / "last", nn.Linear(2, 2), 10, {})
    with pytest.raises(LmforgeError, match="already exists.*--resume.*--force"):
        create_run_dir(run_dir, resume=False, force=False, log=print)
    assert (run_dir / "config.yaml").is_file()
    create_run_dir(run_dir, resume=False, force=True, log=print)
    assert not any(run_dir.iterdir())


@pytest.mark.parametrize("extra", ["notes.txt", None])
def test_a_folder_lmforge_did_not_write_is_never_replaced_without_force(tmp_path, extra):
    run_dir = tmp_path / "mine"
    if extra:  # a failed start, and a file of the user's beside it
        failed_start(run_dir)
        (run_dir / extra).write_text("mine")
    else:  # no config.yaml: not a run directory at all
        run_dir.mkdir()
        (run_dir / "data_report.json").write_text("{}")
    with pytest.raises(LmforgeError, match="already exists"):
        create_run_dir(run_dir, resume=False, force=False, log=print)
    assert any(run_dir.iterdir())
