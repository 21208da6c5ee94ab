"""Where training reports to: metrics.jsonl, TensorBoard, and a progress bar (or plain lines)."""

from __future__ import annotations

import json
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

import lmforge.render as render


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


class TimeLeft:
    """Seconds left, from the step rate of the last `window` progress updates; None until
    `min_updates` have come. The time before the first update is never counted: the first
    steps pay for start-up (threads, allocations, compilation), and an average over them
    overstates the time left several times over."""

    def __init__(self, total: int, window: int = 10, min_updates: int = 4,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.total = total
        self.min_updates = min_updates
        self._clock = clock
        self._marks: deque[tuple[float, int]] = deque(maxlen=window)

    def update(self, step: int) -> float | None:
        self._marks.append((self._clock(), step))
        if len(self._marks) < self.min_updates:
            return None
        (t0, step0), (t1, step1) = self._marks[0], self._marks[-1]
        if step1 <= step0 or t1 <= t0:
            return None
        return (self.total - step) * (t1 - t0) / (step1 - step0)


def seconds_text(seconds: float | None) -> str:
    """"45s", "12m 05s", "2h 03m"; "?" when not known yet."""
    if seconds is None:
        return "?"
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    return f"{whole // 3600}h {whole % 3600 // 60:02d}m"


class TrainProgress:
    """A rich bar with loss, throughput and time left; plain lines when stderr is not a terminal
    (time left from the recent step rate, once it is known)."""

    def __init__(self, total: int, start: int, enabled: bool = True, every: int = 50) -> None:
        self.console = render.console()
        self.enabled = enabled
        self.every = every
        self.total = total
        self._bar = None
        self._left = TimeLeft(total)
        if enabled and self.console.is_terminal:
            self._bar = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TextColumn("loss {task.fields[loss]:.4f}"),
                TextColumn("{task.fields[rate]:.0f} samples/s"),
                TimeElapsedColumn(),
                TextColumn("left {task.fields[left]}"),
                console=self.console,
            )
            self._task = self._bar.add_task(
                "train", total=total, completed=start, loss=0.0, rate=0.0, left="?"
            )
            self._bar.start()

    def update(self, step: int, loss: float, samples_per_s: float) -> None:
        if not self.enabled:
            return
        left = self._left.update(step)
        if self._bar is not None:
            self._bar.update(self._task, completed=step, loss=loss, rate=samples_per_s,
                             left=seconds_text(left))
        elif step % self.every == 0 or step == self.total:
            left_text = f"  left {seconds_text(left)}" if left is not None else ""
            print(
                f"step {step}/{self.total}  loss {loss:.4f}  {samples_per_s:.0f} samples/s"
                f"{left_text}",
                file=sys.stderr,
                flush=True,
            )

    def note(self, message: str) -> None:
        if self.enabled:
            self.console.print(message)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
