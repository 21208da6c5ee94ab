"""Atomic checkpoints: weights as safetensors plus everything an exact resume needs.

A checkpoint is a folder written as `<name>.tmp`, fsynced, marked complete (meta.json, with the
step, written last), then renamed into place; the previous checkpoint is kept as `<name>.prev`.
Wherever a save dies, one of `<name>`, a complete `<name>.tmp` and `<name>.prev` holds a whole
checkpoint: loading takes the newest complete one, and falls back to an older one when it is
damaged.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_model, save_file, save_model
from torch import nn

from lmforge.errors import LmforgeError
from lmforge.files import PREVIOUS, STAGED, fsync_dir, fsync_file, replace_dir_atomic

WEIGHTS = "model.safetensors"
SHARDS = "shards"  # an FSDP run's weights and optimizer state, one file per process
STATE = "trainer_state.pt"
META = "meta.json"  # written last: a folder holding a readable one is complete
COPIES = ("", STAGED, PREVIOUS)  # the suffixes of a checkpoint's copies, in order of preference


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


def _copy(directory: Path, suffix: str) -> Path:
    return directory.with_name(directory.name + suffix)


def recorded_step(directory: Path) -> int:
    """The step in `directory`'s meta.json; raises if the folder is not a complete checkpoint."""
    meta = json.loads((directory / META).read_text())
    # checkpoints written before "step" was recorded at the top hold it in "loop"
    return int(meta["step"] if "step" in meta else meta["loop"]["step"])


def _complete_copies(directory: Path) -> tuple[list[tuple[Path, int]], list[str]]:
    """The complete copies of checkpoint `directory`, newest first, and warnings about
    damaged ones. A `.tmp` without a readable meta.json is a save that had not finished."""
    found, warnings = [], []
    for preference, suffix in enumerate(COPIES):
        path = _copy(directory, suffix)
        if not path.is_dir():
            continue
        try:
            found.append((recorded_step(path), -preference, path))
        except Exception as error:  # missing, truncated or malformed meta.json
            if suffix != ".tmp":
                warnings.append(f"checkpoint {path} is damaged ({type(error).__name__}: {error})")
    found.sort(key=lambda item: item[:2], reverse=True)
    return [(path, step) for step, _, path in found], warnings


def find_checkpoint(directory: Path) -> tuple[Path, int] | None:
    """(path, step) of the newest complete copy of checkpoint `directory`, or None."""
    copies, _ = _complete_copies(directory)
    return copies[0] if copies else None


def last_step(directory: Path) -> int | None:
    """The step of the newest complete copy of a run's last checkpoint, or None when it has none.
    `directory` is the run directory (its checkpoints/last is read) or a checkpoint folder."""
    found = find_checkpoint(directory / "checkpoints" / "last") or find_checkpoint(directory)
    return found[1] if found else None


def _promote(directory: Path) -> None:
    """The renames that put `<name>.tmp` in place, keeping the current one as `<name>.prev`."""
    replace_dir_atomic(_copy(directory, STAGED), directory, keep_previous=True)


def _stage(directory: Path) -> Path:
    """An empty `<name>.tmp` to write a copy of checkpoint `directory` into."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = _copy(directory, STAGED)
    newest = find_checkpoint(directory)
    if newest is not None and newest[0] == tmp:
        _promote(directory)  # a save killed between its renames: finish it, so it is kept
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def save_checkpoint(
    directory: Path, model: nn.Module, step: int, meta: dict[str, Any],
    state: dict[str, Any] | None = None,
) -> None:
    """Write `directory` atomically: weights, trainer state (optionally), then meta.json with
    `step` and `meta` as the mark that the copy is complete, then the renames."""
    tmp = _stage(directory)
    _save_weights(model, tmp / WEIGHTS)
    _complete(directory, tmp, step, meta, state)


def _frozen(model: nn.Module) -> set[str]:
    return {name for name, p in model.named_parameters(remove_duplicate=False)
            if not p.requires_grad}


def _save_weights(model: nn.Module, path: Path) -> None:
    """Every weight; or, for a model with frozen weights (adapters over a pretrained base), the
    ones that train: the frozen ones never change, and a 7B base is 14 GB per checkpoint."""
    frozen = _frozen(model)
    if not frozen:
        save_model(model, str(path))
        return
    trained, seen = {}, set()
    for name, tensor in model.state_dict().items():
        where = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tensor.shape)
        if name in frozen or where in seen:  # a tied weight once (load_model ties it back)
            continue
        seen.add(where)
        trained[name] = tensor.detach().contiguous()
    save_file(trained, str(path), metadata={"frozen_left_out": "true"})


def save_sharded_checkpoint(
    directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer, step: int,
    meta: dict[str, Any], state: dict[str, Any],
) -> None:
    """The same for a model sharded with FSDP: every rank writes its shards of the weights and
    of the optimizer state (torch.distributed.checkpoint); rank 0 then writes the rest and
    renames. Every rank must call it."""
    from lmforge.training import distributed, sharding

    tmp = _copy(directory, STAGED)
    distributed.on_main(lambda: _stage(directory))
    distributed.barrier()
    sharding.save_state(model, optimizer, tmp / SHARDS)
    distributed.barrier()
    distributed.on_main(lambda: _complete(directory, tmp, step, meta, state))
    distributed.barrier()


def _complete(
    directory: Path, tmp: Path, step: int, meta: dict[str, Any], state: dict[str, Any] | None
) -> None:
    if state is not None:
        torch.save(state, tmp / STATE)
    for file in tmp.rglob("*"):
        if file.is_file():
            fsync_file(file)
    # written in place, not by files.write_atomic: the folder's rename is the atomic step, and
    # a meta.json that is there only after its data is on disk is what marks the copy complete
    (tmp / META).write_text(json.dumps({"step": step, **meta}, indent=2))
    fsync_file(tmp / META)
    if (tmp / SHARDS).is_dir():
        fsync_dir(tmp / SHARDS)
    fsync_dir(tmp)
    _promote(directory)


@dataclass
class LoadedCheckpoint:
    path: Path  # the copy read: `<name>`, `<name>.tmp` or `<name>.prev`
    meta: dict[str, Any]
    state: dict[str, Any] | None  # trainer state, when asked for
    warnings: list[str]  # damaged copies that were skipped


def _read(
    directory: Path, model: nn.Module, with_state: bool, optimizer: torch.optim.Optimizer | None
) -> tuple[dict, dict | None]:
    meta = json.loads((directory / META).read_text())
    if (directory / SHARDS).is_dir():  # an FSDP run's: read by any number of processes
        from lmforge.training import sharding

        sharding.load_state(model, optimizer if with_state else None, directory / SHARDS)
    else:
        missing, unexpected = load_model(model, str(directory / WEIGHTS), strict=False)
        with safe_open(str(directory / WEIGHTS), framework="pt") as weights:
            if (weights.metadata() or {}).get("frozen_left_out"):  # they are the model's own
                missing = sorted(set(missing) - _frozen(model))
        if missing or unexpected:
            raise ValueError(f"weights do not match the model (missing {missing[:3]})")
    state = torch.load(directory / STATE, weights_only=True) if with_state else None
    return meta, state


def load_checkpoint(
    directory: Path, model: nn.Module, with_state: bool = True,
    optimizer: torch.optim.Optimizer | None = None,
) -> LoadedCheckpoint:
    """Load the newest complete copy of checkpoint `directory` into `model`, falling back to an
    older copy when it is damaged. A sharded (FSDP) checkpoint also loads `optimizer`, when
    given, since its optimizer state lives among the shards."""
    copies, warnings = _complete_copies(directory)
    for path, _ in copies:
        try:
            meta, state = _read(path, model, with_state, optimizer)
            return LoadedCheckpoint(path, meta, state, warnings)
        except Exception as error:  # any damage (truncation, bad JSON, bad pickle) means "skip"
            warnings.append(f"checkpoint {path} is damaged ({type(error).__name__}: {error})")
    detail = "; ".join(warnings) or "none found"
    raise LmforgeError(f"no usable checkpoint in {directory.parent}: {detail}")
