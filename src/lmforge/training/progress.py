"""Where training reports to: metrics.jsonl, TensorBoard, and a progress bar (or plain lines)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class RunLog:
    """Appends one JSON object per logged step or evaluation, mirrors scalars to TensorBoard."""

    def __init__(self, run_dir: Path, enabled: bool = True) -> None:
        self.enabled = enabled
        self._writer = None
        self._path = run_dir / "metrics.jsonl"
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(run_dir / "tb"))

    def log(self, kind: str, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"kind": kind, "step": step, "time": round(time.time(), 3), **values}
        with open(self._path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        for key, value in values.items():
            if isinstance(value, (int, float)):
                self._writer.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


class TrainProgress:
    """A rich bar with loss, throughput and time left; plain lines when stderr is not a terminal."""

    def __init__(self, total: int, start: int, enabled: bool = True, every: int = 50) -> None:
        self.console = Console(stderr=True)
        self.enabled = enabled
        self.every = every
        self.total = total
        self._bar = None
        self._t0 = time.perf_counter()
        self._start = start
        if enabled and self.console.is_terminal:
            self._bar = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TextColumn("loss {task.fields[loss]:.4f}"),
                TextColumn("{task.fields[rate]:.0f} samples/s"),
                TimeElapsedColumn(),
                TextColumn("left"),
                TimeRemainingColumn(),
                console=self.console,
            )
            self._task = self._bar.add_task(
                "train", total=total, completed=start, loss=0.0, rate=0.0
            )
            self._bar.start()

    def update(self, step: int, loss: float, samples_per_s: float) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(self._task, completed=step, loss=loss, rate=samples_per_s)
        elif step % self.every == 0 or step == self.total:
            done = max(step - self._start, 1)
            left = (time.perf_counter() - self._t0) / done * (self.total - step)
            print(
                f"step {step}/{self.total}  loss {loss:.4f}  {samples_per_s:.0f} samples/s  "
                f"left {left:.0f}s",
                file=sys.stderr,
                flush=True,
            )

    def note(self, message: str) -> None:
        if self.enabled:
            self.console.print(message)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
