"""The one training loop: AdamW, warm-up + cosine, clipping, accumulation, mixed precision,
periodic evaluation, early stopping, and checkpoints that resume exactly.

It knows nothing of tasks: a task hands it a model, a dataset with a collate function, a loss
and an evaluation function.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lmforge.config import TrainConfig
from lmforge.errors import LmforgeError
from lmforge.training.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from lmforge.training.progress import RunLog, TrainProgress

Batch = dict[str, torch.Tensor]


@dataclass
class LoopState:
    """Where training is; saved in every checkpoint so a resume continues from the same batch."""

    step: int = 0  # optimizer steps done
    epoch: int = 0
    batch_in_epoch: int = 0  # batches of `epoch` already consumed
    best_metric: float | None = None
    best_step: int | None = None
    evals_since_best: int = 0
    stopped_early: bool = False


@dataclass
class FitResult:
    state: LoopState
    resumed_from: int | None
    best_dir: Path | None
    seconds: float


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LmforgeError(f"train.device is '{name}' but no CUDA GPU is available")
    return device


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32."""
    if precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def lr_lambda(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    # Biases, norms and embeddings are not decayed: decaying them only hurts (as in BERT/GPT).
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_matrix = param.dim() >= 2 and "emb" not in name
        (decay if is_matrix else no_decay).append(param)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=device.type == "cuda")


BUCKET_BATCHES = (
    50  # batches per length bucket: wide enough to stay random, narrow enough to pad little
)


def epoch_batches(
    n: int, batch_size: int, seed: int, epoch: int, lengths: np.ndarray | None = None
) -> list[np.ndarray]:
    """The batches of one epoch, which depend only on (seed, epoch).

    With `lengths`, examples are sorted by length within random buckets of BUCKET_BATCHES
    batches and the batches are shuffled: batches hold texts of similar length, so little
    compute goes to padding, while the order stays random.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n)
    if lengths is not None:
        width = batch_size * BUCKET_BATCHES
        order = np.concatenate(
            [
                chunk[np.argsort(lengths[chunk], kind="stable")]
                for chunk in (order[i : i + width] for i in range(0, n, width))
            ]
        )
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if lengths is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def total_steps(n_examples: int, cfg: TrainConfig) -> int:
    if cfg.max_steps:
        return cfg.max_steps
    per_epoch = math.ceil(n_examples / cfg.batch_size)
    return max(1, math.ceil(cfg.epochs * per_epoch / cfg.grad_accum))


def _batches_from(
    dataset: Sequence[Any],
    collate: Callable[[list[Any]], Batch],
    cfg: TrainConfig,
    state: LoopState,
    lengths: np.ndarray | None,
) -> Iterator[tuple[int, int, Batch]]:
    """Yield (epoch, index in epoch, batch) forever, starting at the state's data position."""
    epoch, start = state.epoch, state.batch_in_epoch
    while True:
        batches = epoch_batches(len(dataset), cfg.batch_size, cfg.seed, epoch, lengths)
        for index in range(start, len(batches)):
            yield epoch, index, collate([dataset[i] for i in batches[index]])
        epoch, start = epoch + 1, 0


def _to(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _improved(value: float, best: float | None, mode: str) -> bool:
    if best is None:
        return True
    return value > best if mode == "max" else value < best


def fit(
    model: nn.Module,
    dataset: Sequence[Any],
    collate: Callable[[list[Any]], Batch],
    loss_fn: Callable[[nn.Module, Batch], torch.Tensor],
    evaluate_fn: Callable[[nn.Module], dict[str, float]] | None,
    cfg: TrainConfig,
    run_dir: Path,
    resume: bool = False,
    metric_mode: str = "max",
    show_progress: bool = True,
    lengths: np.ndarray | None = None,
) -> FitResult:
    """Train `model` in place; checkpoints go to run_dir/checkpoints/{last,best}.

    `lengths` (one per example) turns on length bucketing when train.bucket_by_length is set.
    """
    t_start = time.perf_counter()
    device = resolve_device(cfg.device)
    autocast_dtype = resolve_precision(cfg.precision, device)
    model.to(device)
    steps = total_steps(len(dataset), cfg)
    optimizer = make_optimizer(model, cfg, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(steps, int(cfg.warmup_ratio * steps))
    )
    scaler = torch.amp.GradScaler(device.type, enabled=autocast_dtype == torch.float16)
    ckpt_dir = run_dir / "checkpoints"
    state, resumed_from = LoopState(), None
    if resume:
        meta, saved, warnings = load_checkpoint(ckpt_dir / "last", model)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        scaler.load_state_dict(saved["scaler"])
        restore_rng(saved["rng"])
        state = LoopState(**meta["loop"])
        resumed_from = state.step
    forward_model = torch.compile(model) if cfg.compile else model

    log = RunLog(run_dir)
    progress = TrainProgress(steps, state.step, enabled=show_progress)
    for warning in warnings if resume else []:
        progress.note(f"[yellow]warning:[/] {warning}; using the previous checkpoint")
    if resumed_from is not None:
        progress.note(f"resumed from step {resumed_from} ({ckpt_dir / 'last'})")

    def checkpoint() -> None:
        trainer_state = {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": capture_rng(),
        }
        save_checkpoint(ckpt_dir / "last", model, {"loop": asdict(state)}, trainer_state)

    def evaluate_and_checkpoint() -> None:
        if evaluate_fn is not None:
            model.eval()
            with torch.no_grad(), _autocast(device, autocast_dtype):
                metrics = evaluate_fn(model)
            model.train()
            log.log("eval", state.step, metrics)
            value = metrics.get(cfg.early_stopping_metric)
            if value is None:
                raise LmforgeError(
                    f"train.early_stopping_metric '{cfg.early_stopping_metric}' is not a val "
                    f"metric; choose one of: {', '.join(sorted(metrics))}"
                )
            if _improved(value, state.best_metric, metric_mode):
                state.best_metric, state.best_step, state.evals_since_best = value, state.step, 0
                meta = {"step": state.step, "metrics": metrics}
                save_checkpoint(ckpt_dir / "best", model, meta)
            else:
                state.evals_since_best += 1
            patience = cfg.early_stopping_patience
            state.stopped_early = bool(patience and state.evals_since_best >= patience)
        checkpoint()

    model.train()
    bucket = lengths if cfg.bucket_by_length else None
    batches = _batches_from(dataset, collate, cfg, state, bucket)
    window_loss, window_samples, window_t = 0.0, 0, time.perf_counter()
    ema_loss = None
    while state.step < steps and not state.stopped_early:
        for _ in range(cfg.grad_accum):
            epoch, index, batch = next(batches)
            batch = _to(batch, device)
            with _autocast(device, autocast_dtype):
                loss = loss_fn(forward_model, batch)
            scaler.scale(loss / cfg.grad_accum).backward()
            window_loss += loss.item()
            window_samples += len(next(iter(batch.values())))
            state.epoch, state.batch_in_epoch = epoch, index + 1
        if cfg.max_grad_norm:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        state.step += 1
        step_loss = window_loss / cfg.grad_accum
        ema_loss = step_loss if ema_loss is None else 0.95 * ema_loss + 0.05 * step_loss
        window_loss = 0.0
        if state.step % 10 == 0 or state.step == steps:
            elapsed = time.perf_counter() - window_t
            rate = window_samples / max(elapsed, 1e-9)
            log.log(
                "train",
                state.step,
                {
                    "loss": step_loss,
                    "lr": scheduler.get_last_lr()[0],
                    "samples_per_s": rate,
                    "epoch": state.epoch,
                },
            )
            progress.update(state.step, ema_loss, rate)
            window_samples, window_t = 0, time.perf_counter()
        if state.step % cfg.eval_every == 0 or state.step == steps:
            evaluate_and_checkpoint()
    if state.stopped_early:
        progress.note(
            f"early stopping at step {state.step}: no improvement in "
            f"{cfg.early_stopping_patience} evaluations"
        )
    progress.close()
    log.close()
    best = ckpt_dir / "best" if (ckpt_dir / "best").exists() else None
    return FitResult(state, resumed_from, best, time.perf_counter() - t_start)


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
