"""The training loop: it learns, resumes exactly after a crash, survives a damaged checkpoint."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from lmforge.config import TrainConfig
from lmforge.errors import LmforgeError
from lmforge.models import EncoderClassifier, TransformerConfig
from lmforge.tasks import classification as task
from lmforge.training import checkpoint, fit
from lmforge.training import loop as training_loop
from lmforge.training.checkpoint import WEIGHTS


def dataset(n=96, seed=0):
    rng = np.random.default_rng(seed)
    ids, labels = [], []
    for _ in range(n):
        label = int(rng.integers(0, 2))
        seq = rng.integers(5, 40, size=int(rng.integers(3, 10))).astype(np.int32)
        seq[0] = 1 + label  # the first token tells the class
        ids.append(seq)
        labels.append(label)
    return task.TokenizedSplit(ids, np.array(labels))


def model(seed=0):
    torch.manual_seed(seed)
    return EncoderClassifier(
        TransformerConfig(
            vocab_size=40,
            n_classes=2,
            max_length=16,
            d_model=32,
            n_layers=1,
            n_heads=2,
            d_ff=64,
            dropout=0.1,
        )
    )


def run(tmp, cfg, resume=False, loss_fn=None, m=None, show_progress=False):
    m = m or model()
    m.fit_result = fit(
        m,
        dataset(),
        task.make_collate(0),
        loss_fn or task.make_loss(),
        task.make_val_metrics(dataset(32, seed=1), 0),
        cfg,
        tmp,
        resume=resume,
        show_progress=show_progress,
    )
    return m


def weights(m):
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def test_fit_learns_and_writes_checkpoints_and_metrics(tmp_path):
    cfg = TrainConfig(max_steps=60, batch_size=16, lr=3e-3, eval_every=20)
    m = run(tmp_path, cfg)
    metrics = task.make_val_metrics(dataset(32, seed=1), 0)(m)
    assert metrics["accuracy"] >= 0.9
    assert (tmp_path / "checkpoints" / "last" / WEIGHTS).is_file()
    assert (tmp_path / "checkpoints" / "best" / WEIGHTS).is_file()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert sum('"kind": "eval"' in line for line in lines) == 3
    assert any((tmp_path / "tb").iterdir())


class Crash(Exception):
    pass


def crashing_loss(after_calls):
    inner, calls = task.make_loss(), {"n": 0}

    def loss_fn(m, batch):
        calls["n"] += 1
        if calls["n"] > after_calls:
            raise Crash()
        return inner(m, batch)

    return loss_fn


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_interrupted_then_resumed_run_equals_straight_through(tmp_path, grad_accum):
    cfg = TrainConfig(max_steps=24, batch_size=16, lr=3e-3, eval_every=8, grad_accum=grad_accum)
    straight = weights(run(tmp_path / "a", cfg))
    with pytest.raises(Crash):  # dies mid-epoch, between checkpoints (after step 8)
        run(tmp_path / "b", cfg, loss_fn=crashing_loss(13 * grad_accum))
    resumed = weights(run(tmp_path / "b", cfg, resume=True, m=model(seed=123)))
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key


class SaveFaults:
    """Counts the file writes, fsyncs and renames of the n-th save of checkpoints/last in a run
    and raises Crash at the k-th of them, as if the process died there."""

    def __init__(self, monkeypatch, nth_save):
        self.nth_save, self.armed = nth_save, False
        self.new_run()
        real_save = training_loop.save_checkpoint

        def save(directory, *args, **kwargs):
            self.saves += directory.name == "last"
            self.armed = directory.name == "last" and self.saves == self.nth_save
            try:
                real_save(directory, *args, **kwargs)
            finally:
                self.armed = False

        monkeypatch.setattr(training_loop, "save_checkpoint", save)
        for owner, name, label in [(checkpoint, "save_model", "write weights"),
                                   (torch, "save", "write state"),
                                   (Path, "write_text", "write meta"),
                                   (os, "fsync", "fsync"),
                                   (Path, "rename", "rename")]:
            monkeypatch.setattr(owner, name, self.counted(getattr(owner, name), label))

    def counted(self, real, label):
        def call(*args, **kwargs):
            if self.armed:
                self.calls.append(label)
                if len(self.calls) == self.fail_at:
                    raise Crash(label)
            return real(*args, **kwargs)

        return call

    def new_run(self, fail_at=None):
        """Count from the start of a run; fail at the fail_at-th operation (None: never)."""
        self.fail_at, self.calls, self.saves = fail_at, [], 0


def test_a_save_killed_at_any_point_resumes_from_the_newest_complete_checkpoint(
    tmp_path, monkeypatch, capsys
):
    cfg = TrainConfig(max_steps=32, batch_size=16, lr=3e-3, eval_every=8)
    faults = SaveFaults(monkeypatch, nth_save=3)  # at step 24: last.prev (8) and last (16) exist
    straight = weights(run(tmp_path / "straight", cfg))
    operations = faults.calls
    assert operations.count("rename") == 2 and operations.count("fsync") >= 4
    for k in range(1, len(operations) + 1):
        done = operations[: k - 1]  # what finished before the crash
        faults.new_run(fail_at=k)
        with pytest.raises(Crash):
            run(tmp_path / str(k), cfg)
        faults.new_run()
        capsys.readouterr()
        resumed = run(tmp_path / str(k), cfg, resume=True, m=model(seed=123), show_progress=True)
        if "write meta" not in done:  # the new checkpoint was not complete: the previous one
            step, name = 16, "last"
        else:
            step, name = 24, "last" if done.count("rename") == 2 else "last.tmp"
        assert resumed.fit_result.resumed_from == step, (k, operations[k - 1])
        used = tmp_path / str(k) / "checkpoints" / name
        err = "".join(capsys.readouterr().err.split())  # rich wraps long lines
        assert f"resumedfromstep{step}({used})" in err, (k, operations[k - 1])
        after = weights(resumed)
        for key in straight:
            assert torch.equal(straight[key], after[key]), (k, operations[k - 1], key)


def test_a_save_resumed_from_last_tmp_is_kept_by_the_next_save(tmp_path, monkeypatch):
    cfg = TrainConfig(max_steps=24, batch_size=16, lr=3e-3, eval_every=8)
    faults = SaveFaults(monkeypatch, nth_save=2)  # at step 16
    faults.new_run(fail_at=9)
    with pytest.raises(Crash):
        run(tmp_path, cfg)
    assert faults.calls[-2:] == ["rename", "rename"]  # died between last -> last.prev and the next
    folder = tmp_path / "checkpoints"
    assert not (folder / "last").exists() and (folder / "last.tmp").is_dir()
    faults.new_run()
    assert run(tmp_path, cfg, resume=True).fit_result.resumed_from == 16
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith("last")) == [
        "last", "last.prev"
    ]
    assert checkpoint.find_checkpoint(folder / "last") == (folder / "last", 24)
    assert checkpoint.recorded_step(folder / "last.prev") == 16


def test_damaged_last_checkpoint_falls_back_to_the_previous_one(tmp_path):
    cfg = TrainConfig(max_steps=16, batch_size=16, eval_every=8)
    run(tmp_path, cfg)
    last = tmp_path / "checkpoints" / "last" / WEIGHTS
    last.write_bytes(last.read_bytes()[:100])  # truncated, as by a full disk
    result = run(tmp_path, cfg.model_copy(update={"max_steps": 24}), resume=True).fit_result
    assert result.resumed_from == 8  # last (step 16) was damaged: last.prev holds step 8
    assert result.state.step == 24


def test_no_usable_checkpoint_is_a_clear_error(tmp_path):
    cfg = TrainConfig(max_steps=8, batch_size=16, eval_every=8)
    run(tmp_path, cfg)
    for name in ("last", "last.prev"):
        target = tmp_path / "checkpoints" / name / WEIGHTS
        if target.exists():
            target.write_bytes(b"garbage")
    with pytest.raises(LmforgeError, match="no usable checkpoint"):
        run(tmp_path, cfg, resume=True)


def test_early_stopping_stops_before_max_steps(tmp_path):
    # lr 0 never improves the val metric after the first evaluation
    cfg = TrainConfig(
        max_steps=200,
        batch_size=16,
        lr=1e-12,
        eval_every=5,
        early_stopping_patience=2,
        early_stopping_metric="val_loss",
    )
    m = model()
    fit(
        m,
        dataset(),
        task.make_collate(0),
        task.make_loss(),
        task.make_val_metrics(dataset(32, seed=1), 0),
        cfg,
        tmp_path,
        metric_mode="min",
        show_progress=False,
    )
    evals = [
        line for line in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"eval"' in line
    ]
    assert len(evals) < 10


def test_linear_schedule_decays_as_trainers_and_cosine_stays_the_default_shape():
    linear = training_loop.lr_lambda(total_steps=110, warmup_steps=10, schedule="linear")
    cosine = training_loop.lr_lambda(total_steps=110, warmup_steps=10)
    assert linear(4) == cosine(4) == 0.5  # the same warm-up
    assert [round(linear(s), 6) for s in (10, 35, 60, 85, 110)] == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert cosine(35) == pytest.approx(0.8536, abs=1e-4) and cosine(110) == pytest.approx(0)
