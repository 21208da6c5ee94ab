"""FSDP under torchrun (train.strategy): parameters, gradients and optimizer state sharded over
the processes with FSDP2 (`fully_shard`), and checkpoints written as shards with
torch.distributed.checkpoint, which any number of processes can read back.

Each block of the model (every child of an nn.ModuleList: a Transformer's layers) is its own
shard unit, then the root, so a forward holds one block's full weights at a time. The model's
structure is kept on the meta device before sharding (no memory) so that rank 0 can rebuild a
plain model from the gathered weights: the best checkpoint and the bundle hold whole weights,
loadable by anything.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from lmforge.config import TrainConfig
from lmforge.errors import LmforgeError
from lmforge.training import distributed

# Bytes per parameter to train it in fp32 with AdamW: weights, gradients, two moments.
TRAINING_BYTES_PER_PARAMETER = 16
# The share of a device's memory the model and its optimizer may take before auto picks FSDP
# (the rest is activations, the allocator's slack and the framework).
FITS_SHARE = 0.6


def choose(cfg: TrainConfig, model: nn.Module, device: torch.device) -> str | None:
    """The strategy of this run: None for one process, else "ddp" or "fsdp"."""
    if distributed.world_size() == 1:
        return None
    strategy = cfg.strategy
    if strategy == "auto":
        strategy = "ddp" if fits_one_device(model, device) else "fsdp"
    if strategy == "fsdp" and cfg.precision == "fp16":
        raise LmforgeError("train.strategy fsdp does not take train.precision fp16 (its loss "
                           "scaler does not see sharded gradients); use bf16 or fp32")
    return strategy


def fits_one_device(model: nn.Module, device: torch.device) -> bool:
    """Whether a full copy of the model, its gradients and AdamW's moments fit on `device`."""
    if device.type != "cuda":
        return True  # processes on one machine's CPUs share its memory either way
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    needed = TRAINING_BYTES_PER_PARAMETER * trainable + 4 * frozen
    return needed <= FITS_SHARE * torch.cuda.get_device_properties(device).total_memory


def shard(model: nn.Module) -> nn.Module:
    """Shard `model` in place over the process group; returns its structure on the meta device
    (what `gather` rebuilds a plain model into)."""
    from torch.distributed.fsdp import fully_shard

    skeleton = copy.deepcopy(model).to("meta")
    for module in list(model.modules()):
        if isinstance(module, nn.ModuleList):
            for block in module:
                fully_shard(block)
    fully_shard(model)
    return skeleton


def gather(model: nn.Module, skeleton: nn.Module) -> nn.Module | None:
    """The whole trained model on rank 0 (on the CPU), gathered from every rank's shards; None
    on the other ranks. Every rank must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not distributed.is_main():
        return None
    plain = copy.deepcopy(skeleton).to_empty(device="cpu")
    plain.load_state_dict(full)
    plain.train(model.training)
    return plain


def save_state(model: nn.Module, optimizer: torch.optim.Optimizer, folder: Any) -> None:
    """Every rank writes its shards of the weights and the optimizer state into `folder`."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    weights, moments = get_state_dict(model, optimizer)
    dcp.save({"model": weights, "optimizer": moments}, checkpoint_id=folder)


def load_state(model: nn.Module, optimizer: torch.optim.Optimizer | None, folder: Any) -> None:
    """Load shards written by `save_state` into `model` (sharded over any number of processes,
    or whole in one) and `optimizer` (None: the weights only)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_state_dict,
        set_model_state_dict,
        set_state_dict,
    )

    if optimizer is None:
        weights = get_model_state_dict(model)
        dcp.load({"model": weights}, checkpoint_id=folder)
        set_model_state_dict(model, weights)
        return
    weights, moments = get_state_dict(model, optimizer)
    state = {"model": weights, "optimizer": moments}
    dcp.load(state, checkpoint_id=folder)
    set_state_dict(model, optimizer, model_state_dict=state["model"],
                   optim_state_dict=state["optimizer"])
