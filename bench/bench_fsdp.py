"""What FSDP saves per process: the bytes of weights, gradients and AdamW state each of 2
processes holds after one training step, under DDP and under FSDP (lmforge's own sharding,
`lmforge.training.sharding`), on CPU over gloo; and the time of a step. Run as a script; it
launches torchrun itself.

    .venv/bin/python bench/bench_fsdp.py [--d-model 512 --layers 8]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def local_bytes(model, optimizer) -> int:
    import torch

    def size(t: torch.Tensor) -> int:
        t = t.to_local() if hasattr(t, "to_local") else t
        return t.numel() * t.element_size()

    total = 0
    for p in model.parameters():
        total += size(p) + (size(p.grad) if p.grad is not None else 0)
    for state in optimizer.state.values():
        total += sum(size(v) for v in state.values() if hasattr(v, "numel") and v.dim() > 0)
    return total


def worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist
    from torch import nn

    from lmforge.config import TrainConfig
    from lmforge.models.transformer import GPT, GPTConfig
    from lmforge.training import sharding
    from lmforge.training.loop import make_optimizer

    dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=8000, d_model=args.d_model, n_layers=args.layers,
                          n_heads=8, d_ff=4 * args.d_model, max_length=128, dropout=0.0))
    if args.strategy == "fsdp":
        sharding.shard(model)
        wrapped = model
    else:
        wrapped = nn.parallel.DistributedDataParallel(model)
    cfg = TrainConfig(device="cpu")
    optimizer = make_optimizer(model, cfg, torch.device("cpu"))
    ids = torch.randint(0, 8000, (4, 128))
    times = []
    for _ in range(3):
        start = time.perf_counter()
        logits = wrapped(ids)
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids.reshape(-1))
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    total = sum(p.numel() for p in model.parameters())
    result = {"rank": dist.get_rank(), "bytes": local_bytes(model, optimizer),
              "parameters": total, "step_s": min(times)}
    Path(args.out, f"{args.strategy}-{dist.get_rank()}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--strategy", default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.strategy:
        worker(args)
        return
    out = tempfile.mkdtemp()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for strategy in ("ddp", "fsdp"):
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc-per-node", "2", __file__, "--strategy", strategy, "--out", out,
                        "--d-model", str(args.d_model), "--layers", str(args.layers)],
                       env=env, check=True, capture_output=True)
    rows = {s: [json.loads(Path(out, f"{s}-{r}.json").read_text()) for r in (0, 1)]
            for s in ("ddp", "fsdp")}
    params = rows["ddp"][0]["parameters"]
    print(f"GPT {params / 1e6:.1f}M parameters, 2 processes (gloo, CPU)")
    for strategy, ranks in rows.items():
        mb = max(r["bytes"] for r in ranks) / 2**20
        step = max(r["step_s"] for r in ranks)
        print(f"{strategy:5s} weights+grads+AdamW per process: {mb:8.1f} MiB   step {step:.3f} s")
    ratio = max(r["bytes"] for r in rows["fsdp"]) / max(r["bytes"] for r in rows["ddp"])
    print(f"fsdp / ddp bytes per process: {ratio:.2f}")


if __name__ == "__main__":
    main()
