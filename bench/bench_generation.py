"""Generation speed: lmforge's GPT against Hugging Face GPT-2, training and decoding, same weights.

Training: tokens/s (and MFU on a GPU, nanoGPT's estimate: 6N + 12·L·H·Q·T flops per token
against 989 TFLOP/s, an H100's dense bf16 peak) of lmforge's loop on lmforge's GPT and of Hugging
Face Trainer on GPT2LMHeadModel, same shape, batch and tokens, steady state (the first --warmup
steps excluded). Decoding: new tokens/s at batch 1 and 32, greedy, a fixed number of new
tokens, for lmforge's decoder (static KV cache) and for `GPT2LMHeadModel.generate`, on the same
weights, both warmed up.

GPU: GPT-2 124M shape (context 1024, batch 16, bf16, compiled; prompt 128, 256 new tokens).
Without a GPU a tiny shape runs on the CPU, so the script is exercised anywhere.

    python bench/bench_generation.py                 # GPU if present, else the tiny CPU shape
    python bench/bench_generation.py --steps 300 --warmup 50 --batch 32
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from lmforge.config import TrainConfig
from lmforge.decoding import Sampling, decode_tokens
from lmforge.models import GPTConfig
from lmforge.models.transformer import gpt_from_gpt2_state_dict
from lmforge.tasks.generation import TokenWindows, lm_loss, make_collate
from lmforge.training import fit

GPT2 = {"d": 768, "layers": 12, "heads": 12, "context": 1024, "batch": 16, "vocab": 50257,
        "prompt": 128, "new": 256}
TINY = {"d": 128, "layers": 4, "heads": 4, "context": 256, "batch": 8, "vocab": 8000,
        "prompt": 32, "new": 64}
H100_BF16_PEAK = 989e12


def flops_per_token(shape: dict, n_params: int) -> float:
    """nanoGPT's estimate (PaLM appendix B): 6N for the weights, 12·L·H·Q·T for attention."""
    q = shape["d"] // shape["heads"]
    return 6 * n_params + 12 * shape["layers"] * shape["heads"] * q * shape["context"]


def gpt2(shape: dict) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=shape["vocab"], n_positions=shape["context"], n_embd=shape["d"],
                     n_layer=shape["layers"], n_head=shape["heads"], resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
                     attn_implementation="sdpa")
    return GPT2LMHeadModel(cfg)


def ours_from(hf: GPT2LMHeadModel, shape: dict) -> torch.nn.Module:
    cfg = GPTConfig(vocab_size=shape["vocab"], max_length=shape["context"], d_model=shape["d"],
                    n_layers=shape["layers"], n_heads=shape["heads"], d_ff=4 * shape["d"])
    return gpt_from_gpt2_state_dict(hf.state_dict(), cfg)


class StepTimer(TrainerCallback):
    def __init__(self) -> None:
        self.times: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN003
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())


def train_trainer(shape: dict, tokens: np.ndarray, steps: int, warmup: int, gpu: bool,
                  compile_: bool, out: Path) -> float:
    """Tokens/s of Hugging Face Trainer on GPT2LMHeadModel."""
    T = shape["context"]
    rows = [{"input_ids": torch.from_numpy(tokens[i * T : i * T + T].astype(np.int64)),
             "labels": torch.from_numpy(tokens[i * T : i * T + T].astype(np.int64))}
            for i in range(shape["batch"] * steps)]
    timer = StepTimer()
    args = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=shape["batch"], max_steps=steps,
        learning_rate=3e-4, bf16=gpu, logging_steps=50, save_strategy="no", report_to=[],
        dataloader_num_workers=2 if gpu else 0, disable_tqdm=True, torch_compile=compile_,
    )
    Trainer(model=gpt2(shape), args=args, train_dataset=rows, callbacks=[timer]).train()
    steady = timer.times[warmup:]
    return (len(steady) - 1) * shape["batch"] * T / (steady[-1] - steady[0])


def train_lmforge(model: torch.nn.Module, shape: dict, tokens: np.ndarray, steps: int,
                  warmup: int, gpu: bool, compile_: bool, out: Path) -> float:
    """Tokens/s of lmforge's loop (from metrics.jsonl's 10-step windows, after the warm-up)."""
    cfg = TrainConfig(max_steps=steps, batch_size=shape["batch"], lr=3e-4, eval_every=10**9,
                      precision="bf16" if gpu else "fp32", compile=compile_, warmup_ratio=0.0)
    T = shape["context"]
    fit(model, TokenWindows(tokens, T), make_collate(tokens, T), lm_loss, None, cfg, out,
        show_progress=False)
    rates = [row["samples_per_s"] for row in map(json.loads, (out / "metrics.jsonl").open())
             if row["kind"] == "train" and row["step"] > warmup]
    return float(np.median(rates)) * T


def decode_lmforge(model: torch.nn.Module, prompts: torch.Tensor, new: int) -> float:
    """New tokens/s of lmforge's decoder, greedy, exactly `new` tokens per row."""
    rows = prompts.tolist()
    rng = torch.Generator(device=prompts.device)

    def once() -> None:
        for _ in decode_tokens(model, rows, new, model.config.max_length,
                               Sampling(temperature=0), rng):
            pass

    once()  # warm-up
    return _timed(once, prompts.shape[0] * new, prompts.device)


def decode_hf(model: GPT2LMHeadModel, prompts: torch.Tensor, new: int) -> float:
    def once() -> None:
        model.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=new,
                       min_new_tokens=new, do_sample=False, pad_token_id=0)

    once()  # warm-up
    return _timed(once, prompts.shape[0] * new, prompts.device)


def _timed(fn, new_tokens: int, device: torch.device) -> float:  # noqa: ANN001
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return new_tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--batch", type=int, default=None, help="Training batch.")
    parser.add_argument("--skip-training", action="store_true")
    args = parser.parse_args()
    gpu = torch.cuda.is_available()
    shape = dict(GPT2 if gpu else TINY)
    shape["batch"] = args.batch or shape["batch"]
    steps = args.steps or (300 if gpu else 40)
    warmup = args.warmup or (50 if gpu else 10)
    device = torch.device("cuda" if gpu else "cpu")
    name = torch.cuda.get_device_name(0) if gpu else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; shape {shape}; {steps} training steps, first {warmup} excluded")
    tokens = np.random.default_rng(0).integers(
        1, shape["vocab"], (steps + 1) * shape["batch"] * shape["context"] + 1
    ).astype(np.uint16)
    n_params = sum(p.numel() for p in ours_from(gpt2(shape), shape).parameters())
    n_params -= shape["context"] * shape["d"]  # nanoGPT leaves out the position embedding
    per_token = flops_per_token(shape, n_params)

    if not args.skip_training:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            rows = [
                ("HF Trainer, GPT2LMHeadModel",
                 train_trainer(shape, tokens, steps, warmup, gpu, False, tmp / "t")),
                ("lmforge loop, lmforge GPT",
                 train_lmforge(ours_from(gpt2(shape), shape), shape, tokens, steps, warmup,
                               gpu, gpu, tmp / "l")),
            ]
        base = rows[0][1]
        print(f"\n{'training':<34}{'tokens/s':>12}{'MFU':>8}{'vs Trainer':>12}")
        for label, rate in rows:
            mfu = f"{per_token * rate / H100_BF16_PEAK:.1%}" if gpu else "n/a"
            print(f"{label:<34}{rate:>12,.0f}{mfu:>8}{rate / base:>11.2f}x")

    hf = gpt2(shape).to(device).eval()
    ours = ours_from(hf, shape).to(device).eval()
    if gpu:
        hf, ours = hf.to(torch.bfloat16), ours.to(torch.bfloat16)
    print(f"\n{'decoding (greedy)':<34}{'batch':>6}{'new tok/s':>12}{'vs HF':>8}")
    for batch in (1, 32):
        prompts = torch.randint(1, shape["vocab"], (batch, shape["prompt"]), device=device)
        theirs = decode_hf(hf, prompts, shape["new"])
        mine = decode_lmforge(ours, prompts, shape["new"])
        print(f"{'HF generate':<34}{batch:>6}{theirs:>12,.0f}{1:>7.2f}x")
        print(f"{'lmforge decode_tokens':<34}{batch:>6}{mine:>12,.0f}{mine / theirs:>7.2f}x")


if __name__ == "__main__":
    main()
