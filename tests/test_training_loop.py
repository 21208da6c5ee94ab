"""The training loop: it learns, resumes exactly after a crash, survives a damaged checkpoint."""

import numpy as np
import pytest
import torch

from lmforge.config import TrainConfig
from lmforge.errors import LmforgeError
from lmforge.models import EncoderClassifier, TransformerConfig
from lmforge.tasks import classification as task
from lmforge.training import fit
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


def run(tmp, cfg, resume=False, loss_fn=None, m=None):
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
        show_progress=False,
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
