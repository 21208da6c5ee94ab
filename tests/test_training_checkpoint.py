"""checkpoint.last_step: how far a run's training got, read from its newest complete checkpoint."""

from torch import nn

from lmforge.training.checkpoint import last_step, save_checkpoint


def test_last_step_reads_a_run_directory_or_a_checkpoint_folder(tmp_path):
    last = tmp_path / "checkpoints" / "last"
    assert last_step(tmp_path) is None and last_step(last) is None  # nothing saved yet
    save_checkpoint(last, nn.Linear(2, 2), 8, {})
    save_checkpoint(last, nn.Linear(2, 2), 16, {})
    assert last_step(tmp_path) == 16 and last_step(last) == 16
    last.rename(last.with_name("last.tmp"))  # a save killed between its renames
    assert last_step(tmp_path) == 16  # the complete last.tmp is newer than last.prev (8)
    (last.with_name("last.tmp") / "meta.json").unlink()  # that save had not finished
    assert last_step(tmp_path) == 8
