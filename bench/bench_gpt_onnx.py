"""lmforge's GPT through ONNX Runtime (its KV cache as the graph's inputs and outputs) beside
PyTorch, at batch 1 on this machine's CPU: milliseconds to the first token (the prompt's pass) and
greedy tokens per second after it, through the decoder `lmforge generate` uses, the two runtimes
taking turns so that load from other processes falls on both alike. Each model is first checked
as `lmforge export` checks it (logits with and without the cache, greedy continuations).
Random weights: the speed of a model does not depend on what it learned.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_gpt_onnx.py [--threads 1] [--tokens 64]
        [--prompt 32] [--size tiny|small|medium]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from lmforge.models import GPT, GPTConfig
from lmforge.models.onnx_generation import OnnxGPT
from lmforge.optimize.export import DEFAULT_OPSET
from lmforge.optimize.export_gpt import (
    check_prompts,
    compare,
    export_gpt,
    paired_speed,
    share_tied_embedding,
)

SIZES = {  # name: (vocab, context, d_model, layers, heads)
    "tiny (d 64, 2 layers)": (2000, 256, 64, 2, 2),
    "small (d 256, 4 layers)": (8000, 512, 256, 4, 4),
    "medium (d 512, 8 layers)": (16000, 512, 512, 8, 8),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--prompt", type=int, default=32, help="prompt tokens")
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per generation")
    parser.add_argument("--size", choices=[n.split()[0] for n in SIZES], help="one size only")
    parser.add_argument("--budget", type=float, default=10.0, help="seconds of timing per model")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    folder = Path(tempfile.mkdtemp(prefix="bench-gpt-onnx-"))
    print(f"batch 1, greedy, a prompt of {args.prompt} tokens then {args.tokens} new ones; "
          f"{args.threads} thread(s) for both runtimes")
    for name, (vocab, context, d, layers, heads) in SIZES.items():
        if args.size and not name.startswith(args.size):
            continue
        torch.manual_seed(0)
        gpt = GPT(GPTConfig(vocab_size=vocab, max_length=context, d_model=d, n_layers=layers,
                            n_heads=heads, d_ff=4 * d)).eval()
        path = folder / f"{layers}x{d}.onnx"
        started = time.perf_counter()
        export_gpt(gpt, path, DEFAULT_OPSET)
        share_tied_embedding(path)
        onnx = OnnxGPT(path, gpt.config.to_dict(), threads=args.threads)
        check = compare(gpt, onnx, check_prompts(vocab, context), context)
        seconds = time.perf_counter() - started
        rng = torch.Generator().manual_seed(1)
        prompt = torch.randint(0, vocab, (args.prompt,), generator=rng).tolist()
        torch_figures, onnx_figures = paired_speed([gpt, onnx], prompt, args.tokens, context,
                                                   min_rounds=3, budget_s=args.budget)
        params = sum(p.numel() for p in gpt.parameters())
        speedup = onnx_figures["tokens_per_s_b1"] / torch_figures["tokens_per_s_b1"]
        print(f"{name}, {params / 1e6:.1f}M parameters, vocab {vocab}: exported and checked in "
              f"{seconds:.1f} s (max |logit diff| {check['max_abs_logit_diff']:.1e}, cached "
              f"{check['max_abs_logit_diff_cached']:.1e}, greedy differs for "
              f"{check['greedy_prompts_differ']} of {check['prompts']} prompts)")
        print(f"  tokens/s: PyTorch {torch_figures['tokens_per_s_b1']:.1f}, ONNX Runtime "
              f"{onnx_figures['tokens_per_s_b1']:.1f} ({speedup:.2f}x); first token ms: "
              f"PyTorch {torch_figures['first_token_ms_b1']:.2f}, ONNX Runtime "
              f"{onnx_figures['first_token_ms_b1']:.2f}")


if __name__ == "__main__":
    main()
