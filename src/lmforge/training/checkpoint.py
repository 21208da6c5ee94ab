"""Atomic checkpoints: weights as safetensors plus everything an exact resume needs.

A checkpoint is a folder written under a temporary name, fsynced, then renamed into place, so a
crash leaves either the previous checkpoint or the new one, never half of one. The previous
checkpoint is kept as `<name>.prev`, and loading falls back to it when the newest is damaged.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model, save_model
from torch import nn

from lmforge.errors import LmforgeError

WEIGHTS = "model.safetensors"
STATE = "trainer_state.pt"
META = "meta.json"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    for file in path.iterdir():
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())
    _fsync_dir(path)


def capture_rng() -> dict[str, Any]:
    """Every random stream's state as plain Python values (bytes, ints), which pickle safely
    across processes and load with weights_only=True."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [name, keys.tolist(), pos, has_gauss, gauss],
        "torch": bytes(torch.get_rng_state().numpy()),
    }
    if torch.cuda.is_available():
        state["cuda"] = [bytes(s.numpy()) for s in torch.cuda.get_rng_state_all()]
    return state


def _byte_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def restore_rng(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, gauss_np = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss_np))
    torch.set_rng_state(_byte_tensor(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_byte_tensor(s) for s in state["cuda"]])


def save_checkpoint(
    directory: Path, model: nn.Module, meta: dict[str, Any], state: dict[str, Any] | None = None
) -> None:
    """Write `directory` atomically: weights, a JSON meta file and (optionally) trainer state."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_model(model, str(tmp / WEIGHTS))
    if state is not None:
        torch.save(state, tmp / STATE)
    (tmp / META).write_text(json.dumps(meta, indent=2))
    _fsync_tree(tmp)
    previous = directory.with_name(directory.name + ".prev")
    if directory.exists():
        shutil.rmtree(previous, ignore_errors=True)
        directory.rename(previous)
    tmp.rename(directory)
    _fsync_dir(directory.parent)


def _read(directory: Path, model: nn.Module, with_state: bool) -> tuple[dict, dict | None]:
    meta = json.loads((directory / META).read_text())
    missing, unexpected = load_model(model, str(directory / WEIGHTS), strict=False)
    if missing or unexpected:
        raise ValueError(f"weights do not match the model (missing {missing[:3]})")
    state = torch.load(directory / STATE, weights_only=True) if with_state else None
    return meta, state


def load_checkpoint(
    directory: Path, model: nn.Module, with_state: bool = True
) -> tuple[dict[str, Any], dict[str, Any] | None, list[str]]:
    """Load `directory` into `model`, falling back to its `.prev` copy if it is damaged.

    Returns (meta, trainer state, warnings about damaged checkpoints that were skipped).
    """
    warnings = []
    for candidate in (directory, directory.with_name(directory.name + ".prev")):
        if not candidate.exists():
            continue
        try:
            meta, state = _read(candidate, model, with_state)
            return meta, state, warnings
        except Exception as error:  # any damage (truncation, bad JSON, bad pickle) means "skip"
            warnings.append(f"checkpoint {candidate} is damaged ({type(error).__name__}: {error})")
    detail = "; ".join(warnings) or "none found"
    raise LmforgeError(f"no usable checkpoint in {directory.parent}: {detail}")
