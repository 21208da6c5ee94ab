"""torchrun support: the process group, this process's rank, and the few collectives the loop uses.

Without torchrun (WORLD_SIZE unset or 1) every helper here is a no-op, so the same code runs on
one CPU, one GPU, eight GPUs or many nodes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from lmforge.errors import LmforgeError

T = TypeVar("T")
_STORES: list[dist.TCPStore] = []


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def restart_count() -> int:
    """How often torchrun has restarted the workers (after a failure, with --max-restarts)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def init(device: str = "auto") -> None:
    """Join the process group torchrun set up: NCCL on GPUs, gloo on CPUs."""
    if world_size() == 1 or dist.is_initialized():
        return
    use_cuda = torch.cuda.is_available() and device != "cpu"
    if use_cuda:
        torch.cuda.set_device(local_rank())
    backend = "nccl" if use_cuda else "gloo"
    if "TORCHELASTIC_RESTART_COUNT" not in os.environ:
        dist.init_process_group(backend=backend)
        return
    # torchrun's store outlives a restart and still holds the killed workers' addresses; a
    # fresh key prefix per attempt keeps a restarted worker from dialling a dead one.
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                          world_size(), is_master=not agent_store and rank() == 0,
                          timeout=timedelta(minutes=10))
    _STORES.append(store)  # released in shutdown(), after the group that uses it
    attempt = dist.PrefixStore(f"lmforge/attempt-{restart_count()}", store)
    dist.init_process_group(backend=backend, store=attempt, rank=rank(), world_size=world_size())


def shutdown() -> None:
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    _STORES.clear()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def mean(value: float) -> float:
    """The mean of `value` over all ranks."""
    if not dist.is_initialized():
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor)
    return float(tensor.item()) / dist.get_world_size()


def gather(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank."""
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def on_main(fn: Callable[[], T]) -> T | None:
    """Run `fn` on rank 0 only; if it raises a user error, every rank raises it.

    Without this a mistake found on rank 0 (say, an existing run directory) would leave the
    other ranks waiting at the next collective forever.
    """
    result, error = None, None
    if is_main():
        try:
            result = fn()
        except LmforgeError as exc:
            error = str(exc)
    if dist.is_initialized():
        box = [error]
        dist.broadcast_object_list(box, src=0)
        error = box[0]
    if error is not None:
        raise LmforgeError(error)
    return result


def launch(nproc: int, args: list[str]) -> int:
    """`lmforge train --nproc N ...`: run `torchrun --nproc-per-node N -m lmforge ...`."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", str(nproc),
               "-m", "lmforge", *args]
    return subprocess.run(command, check=False).returncode
