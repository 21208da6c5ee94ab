"""The one training loop: AdamW, warm-up + cosine or linear decay, clipping, accumulation,
mixed precision, periodic evaluation, early stopping, and checkpoints that resume exactly.

It knows nothing of tasks: a task hands it a model, a dataset with a collate function, a loss
and an evaluation function.
"""

from __future__ import annotations

import contextlib
import functools
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
from lmforge.training import distributed, sharding
from lmforge.training.checkpoint import (
    SHARDS,
    capture_rng,
    find_checkpoint,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
    save_sharded_checkpoint,
)
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
    stopped: bool = False  # fit's on_eval asked to stop (a tuning trial pruned)
    # The trained model: the one given, or under FSDP a whole copy gathered on rank 0 (None on
    # the other ranks, which hold only shards).
    model: nn.Module | None = None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", distributed.local_rank())
        return torch.device("cpu")
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


def lr_lambda(
    total_steps: int, warmup_steps: int, schedule: str = "cosine"
) -> Callable[[int], float]:
    """The learning rate's multiplier at each step: linear warm-up, then a cosine or linear
    decay to zero (train.lr_schedule; "auto" is cosine here, the config resolves it)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        if schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def parameter_counts(model: Any) -> dict[str, int] | None:
    """{"trainable", "total"} parameters of a torch model (an adapter run trains a sliver of
    them); None for a model that is no torch module (an index, a fitted estimator)."""
    if not isinstance(model, nn.Module):
        return None
    params = list(model.parameters())
    return {"trainable": sum(p.numel() for p in params if p.requires_grad),
            "total": sum(p.numel() for p in params)}


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


def batches_per_rank(n_examples: int, batch_size: int, world: int) -> int:
    return max(1, math.ceil(n_examples / batch_size) // world)


def total_steps(n_examples: int, cfg: TrainConfig, world: int = 1) -> int:
    if cfg.max_steps:
        return cfg.max_steps
    per_epoch = batches_per_rank(n_examples, cfg.batch_size, world)
    return max(1, math.ceil(cfg.epochs * per_epoch / cfg.grad_accum))


def _batches_from(
    dataset: Sequence[Any],
    collate: Callable[[list[Any]], Batch],
    cfg: TrainConfig,
    state: LoopState,
    lengths: np.ndarray | None,
) -> Iterator[tuple[int, int, Batch]]:
    """Yield (epoch, index in epoch, batch) forever, from the state's data position.

    Under torchrun each rank takes every world-th batch of the same epoch order (a distributed
    sampler), and every rank gets the same number of batches so no rank waits on another.
    """
    rank, world = distributed.rank(), distributed.world_size()
    epoch, start = state.epoch, state.batch_in_epoch
    while True:
        batches = epoch_batches(len(dataset), cfg.batch_size, cfg.seed, epoch, lengths)
        mine = batches[rank : batches_per_rank(len(dataset), cfg.batch_size, world) * world : world]
        for index in range(start, len(mine)):
            yield epoch, index, collate([dataset[i] for i in mine[index]])
        epoch, start = epoch + 1, 0


def _to(batch: Batch, device: torch.device) -> Batch:
    """The batch on the device. To a GPU through pinned memory: a copy from pageable memory
    would hold the host until the GPU is idle, so the next step's kernels could not be queued
    while this one runs."""
    if device.type != "cuda":
        return {k: v.to(device) for k, v in batch.items()}
    return {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


class _Loop:
    """One training run's moving parts; `fit` below is the public entry point."""

    def __init__(self, model: nn.Module, n_examples: int, cfg: TrainConfig, run_dir: Path,
                 metric_mode: str, show_progress: bool) -> None:
        self.cfg, self.model, self.metric_mode = cfg, model, metric_mode
        self.device = resolve_device(cfg.device)
        self.autocast_dtype = resolve_precision(cfg.precision, self.device)
        model.to(self.device)
        self.strategy = sharding.choose(cfg, model, self.device)
        # FSDP shards the model in place, before the optimizer sees its (sharded) parameters
        self.skeleton = sharding.shard(model) if self.strategy == "fsdp" else None
        self.steps = total_steps(n_examples, cfg, distributed.world_size())
        self.optimizer = make_optimizer(model, cfg, self.device)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lr_lambda(self.steps, int(cfg.warmup_ratio * self.steps), cfg.lr_schedule),
        )
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.autocast_dtype == torch.float16
        )
        self.ckpt_dir = run_dir / "checkpoints"
        self.state = LoopState()
        self.main = distributed.is_main()
        self.log = RunLog(run_dir, enabled=self.main)
        self.show_progress = show_progress and self.main
        self.wrapped: nn.Module = model
        if self.strategy == "ddp":
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.wrapped = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
        # With train.compile, the loss is compiled with the model: the cross-entropy over the
        # vocabulary then fuses with the logits' cast instead of making float copies of them.
        self._losses: dict[Callable, Callable[[Batch], torch.Tensor]] = {}

    def restore(self) -> tuple[int, Path, list[str]]:
        """(step, the checkpoint copy read, warnings about damaged copies skipped)."""
        last = self.ckpt_dir / "last"
        found = find_checkpoint(last)
        if self.strategy == "fsdp" and found and not (found[0] / SHARDS).is_dir():
            raise LmforgeError(f"{last} was written without FSDP; resume it with "
                               "train.strategy ddp (or with one process)")
        loaded = load_checkpoint(last, self.model, optimizer=self.optimizer)
        saved = loaded.state
        if "optimizer" in saved:  # a sharded checkpoint's is among its shards, loaded above
            self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.scaler.load_state_dict(saved["scaler"])
        rngs, warnings = saved["rng"], loaded.warnings
        if len(rngs) == distributed.world_size():
            restore_rng(rngs[distributed.rank()])
        elif (loaded.path / SHARDS).is_dir():  # shards reload into any number of processes
            warnings = [*warnings, f"the checkpoint was written by {len(rngs)} process(es) and "
                        f"this run has {distributed.world_size()}: it continues, but not "
                        "bit-identically (each process's random stream and batches differ)"]
        else:
            raise LmforgeError(
                f"the checkpoint was written by {len(rngs)} process(es) but this run has "
                f"{distributed.world_size()}; resume with the same number of processes"
            )
        self.state = LoopState(**loaded.meta["loop"])
        return self.state.step, loaded.path, warnings

    def checkpoint(self) -> None:
        rngs = distributed.gather(capture_rng())  # each rank's dropout stream, for exact resume
        if self.strategy == "fsdp":
            state = {"scheduler": self.scheduler.state_dict(),
                     "scaler": self.scaler.state_dict(), "rng": rngs}
            save_sharded_checkpoint(self.ckpt_dir / "last", self.model, self.optimizer,
                                    self.state.step, {"loop": asdict(self.state)}, state)
            return
        if self.main:
            trainer_state = {
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": rngs,
            }
            save_checkpoint(self.ckpt_dir / "last", self.model, self.state.step,
                            {"loop": asdict(self.state)}, trainer_state)
        distributed.barrier()

    def evaluate(
        self, evaluate_fn: Callable[[nn.Module], dict[str, float]]
    ) -> dict[str, float]:
        """Every rank evaluates the same val split, so all take the same early-stopping path."""
        cfg, state = self.cfg, self.state
        self.model.eval()
        with torch.no_grad(), _autocast(self.device, self.autocast_dtype):
            metrics = evaluate_fn(self.model)
        self.model.train()
        self.log.log("eval", state.step, metrics)
        value = metrics.get(cfg.early_stopping_metric)
        if value is None:
            raise LmforgeError(
                f"train.early_stopping_metric '{cfg.early_stopping_metric}' is not a val "
                f"metric; choose one of: {', '.join(sorted(metrics))}"
            )
        better = state.best_metric is None or (
            value > state.best_metric if self.metric_mode == "max" else value < state.best_metric
        )
        if better:
            state.best_metric, state.best_step, state.evals_since_best = value, state.step, 0
            whole = self.whole_model()
            if self.main:
                save_checkpoint(self.ckpt_dir / "best", whole, state.step, {"metrics": metrics})
        else:
            state.evals_since_best += 1
        patience = cfg.early_stopping_patience
        state.stopped_early = bool(patience and state.evals_since_best >= patience)
        return metrics

    def whole_model(self) -> nn.Module | None:
        """The model with whole weights: itself, or under FSDP a copy gathered on rank 0 (None
        on the others). Every rank must call it."""
        if self.skeleton is None:
            return self.model
        return sharding.gather(self.model, self.skeleton)

    def _loss_of(
        self, loss_fn: Callable[[nn.Module, Batch], torch.Tensor]
    ) -> Callable[[Batch], torch.Tensor]:
        """batch -> loss on the (wrapped) model, compiled with train.compile."""
        if loss_fn not in self._losses:
            loss = functools.partial(loss_fn, self.wrapped)
            self._losses[loss_fn] = torch.compile(loss) if self.cfg.compile else loss
        return self._losses[loss_fn]

    def optimizer_step(
        self, batches: Iterator[tuple[int, int, Batch]],
        loss_fn: Callable[[nn.Module, Batch], torch.Tensor],
    ) -> tuple[torch.Tensor, int]:
        """One optimizer step over grad_accum batches: (mean loss, samples seen).

        The loss stays a device tensor: reading it every step would stall the GPU."""
        cfg, total_loss, samples = self.cfg, torch.zeros((), device=self.device), 0
        for micro in range(cfg.grad_accum):
            epoch, index, batch = next(batches)
            batch = _to(batch, self.device)
            last_micro = micro == cfg.grad_accum - 1
            # DDP all-reduces gradients on every backward; only the last micro-batch needs it
            sync = contextlib.nullcontext() if last_micro or self.wrapped is self.model \
                else self.wrapped.no_sync()
            if self.strategy == "fsdp":  # FSDP reduce-scatters only on the last micro-batch
                self.model.set_requires_gradient_sync(last_micro)
            with sync:
                with _autocast(self.device, self.autocast_dtype):
                    loss = self._loss_of(loss_fn)(batch)
                self.scaler.scale(loss / cfg.grad_accum).backward()
            total_loss += loss.detach().float()
            samples += len(next(iter(batch.values())))
            self.state.epoch, self.state.batch_in_epoch = epoch, index + 1
        if cfg.max_grad_norm:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.state.step += 1
        return total_loss / cfg.grad_accum, samples


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
    on_eval: Callable[[int, dict[str, float]], bool] | None = None,
) -> FitResult:
    """Train `model` in place; checkpoints go to run_dir/checkpoints/{last,best}.

    `evaluate_fn(model)` returns val metrics (None: no evaluation, no best checkpoint).
    `on_eval(step, val metrics)` is called after each evaluation; True stops training there
    (FitResult.stopped), as a tuning trial's pruner does.
    `lengths` (one per example) turns on length bucketing when train.bucket_by_length is set.
    """
    t_start = time.perf_counter()
    loop = _Loop(model, len(dataset), cfg, run_dir, metric_mode, show_progress)
    resumed_from, resumed_path, warnings = loop.restore() if resume else (None, None, [])
    state = loop.state
    progress = TrainProgress(loop.steps, state.step, enabled=loop.show_progress)
    counts = parameter_counts(model)
    progress.note(f"parameters: {counts['trainable']:,} trainable of {counts['total']:,} "
                  f"({100 * counts['trainable'] / max(counts['total'], 1):.2f}%)")
    for warning in warnings:
        progress.note(f"[yellow]warning:[/] {warning}; skipped")
    if resumed_from is not None:
        progress.note(f"resumed from step {resumed_from} ({resumed_path})")

    model.train()
    batches = _batches_from(dataset, collate, cfg, state, lengths if cfg.bucket_by_length else None)
    window_loss, window_steps, window_samples, window_t = 0.0, 0, 0, time.perf_counter()
    stopped = False
    while state.step < loop.steps and not state.stopped_early and not stopped:
        loss, samples = loop.optimizer_step(batches, loss_fn)
        window_loss, window_steps = window_loss + loss, window_steps + 1
        window_samples += samples
        if state.step % 10 == 0 or state.step == loop.steps:
            mean_loss = distributed.mean(float(window_loss) / window_steps)
            rate = window_samples * distributed.world_size() / (time.perf_counter() - window_t)
            loop.log.log("train", state.step, {
                "loss": mean_loss,
                "lr": loop.scheduler.get_last_lr()[0],
                "samples_per_s": rate,
                "epoch": state.epoch,
            })
            progress.update(state.step, mean_loss, rate)
            window_loss, window_steps, window_samples = 0.0, 0, 0
            window_t = time.perf_counter()
        if state.step % cfg.eval_every == 0 or state.step == loop.steps:
            if evaluate_fn is not None:
                metrics = loop.evaluate(evaluate_fn)
                stopped = on_eval is not None and bool(on_eval(state.step, metrics))
            loop.checkpoint()
    if state.stopped_early:
        progress.note(f"early stopping at step {state.step}: no improvement in "
                      f"{cfg.early_stopping_patience} evaluations")
    progress.close()
    loop.log.close()
    best = loop.ckpt_dir / "best"
    trained = loop.whole_model()
    if trained is not None and trained is not model:
        trained.to(loop.device)
    return FitResult(state, resumed_from, best if find_checkpoint(best) else None,
                     time.perf_counter() - t_start, stopped, trained)
