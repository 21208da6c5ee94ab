"""Exact resume as the tests check it: a run trained straight through beside one killed mid-way
(its loss raises after a number of calls, between two checkpoints) and then resumed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

Loss = Callable[[Any, Any], Any]


class Crash(Exception):
    """A training run dying mid-way."""


def crashing(loss_fn: Loss, after: int) -> Loss:
    """`loss_fn`, raising Crash from its call number `after` + 1 on."""
    calls = {"n": 0}

    def loss(model: Any, batch: Any) -> Any:
        calls["n"] += 1
        if calls["n"] > after:
            raise Crash()
        return loss_fn(model, batch)

    return loss


def straight_and_resumed(
    train: Callable[[Path, Callable[[Loss], Loss], bool], dict], root: Path, crash_after: int = 6
) -> tuple[dict, dict]:
    """(state dict trained straight, state dict killed after `crash_after` steps and resumed).
    `train(out, wrap_loss, resume)` trains one run into `out` with `wrap_loss(loss)` as its
    loss and returns the model's state dict."""
    straight = train(root / "a", lambda loss: loss, False)
    with pytest.raises(Crash):
        train(root / "b", lambda loss: crashing(loss, crash_after), False)
    return straight, train(root / "b", lambda loss: loss, True)


def recipe_training(recipe: Any, cfg: Any) -> Callable[[Path, Callable[[Loss], Loss], bool], dict]:
    """straight_and_resumed's `train` for a task recipe: its prepare, build_model and training
    plan, fitted with the loss wrapped."""
    from lmforge.training import fit

    def train(out: Path, wrap_loss: Callable[[Loss], Loss], resume: bool) -> dict:
        prepared = recipe.prepare(cfg, out, False, lambda _: None)
        model = recipe.build_model(prepared, out, False, False, lambda _: None)
        plan = recipe.training(prepared, model)
        fit(model, plan.examples, plan.collate, wrap_loss(plan.loss), plan.val_metrics,
            cfg.train, out, resume=resume, metric_mode=plan.metric_mode, show_progress=False,
            lengths=plan.lengths)
        return model.state_dict()

    return train
