"""LoRA fine-tuning throughput and peak memory: lmforge against Hugging Face Trainer + peft, and
QLoRA's peak memory, on a causal LM with Qwen2.5-0.5B's shape (random weights), bf16.

Both sides load the same base from disk (saved here in bf16), put the same LoRA adapters on it
(r 16, alpha 32, every attention and MLP projection) and train on the same random token windows
with the same batch and sequence length (1024); tokens/s is the steady state (the first --warmup
steps excluded), peak memory is torch.cuda.max_memory_allocated. Each measurement runs in its
own process, so one side's allocations never count against the other. Without a GPU it runs a
tiny shape on the CPU (QLoRA skipped), so the script is exercised anywhere; those figures say
nothing of the GPU target (>= 1.5x Trainer's tokens/s at no more memory).

    python bench/bench_lora.py                          # GPU if present, else the tiny CPU shape
    python bench/bench_lora.py --steps 60 --warmup 10 --batch 8
    python bench/bench_lora.py --gradient-checkpointing --compile
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

QWEN_05B = {"vocab": 151936, "hidden": 896, "ff": 4864, "layers": 24, "heads": 14, "kv": 2,
            "seq": 1024, "batch": 8}
TINY = {"vocab": 1000, "hidden": 64, "ff": 128, "layers": 2, "heads": 2, "kv": 1, "seq": 64,
        "batch": 4}
LORA = {"r": 16, "alpha": 32, "dropout": 0.05}
LR = 2e-4


def save_base(shape: dict, folder: Path) -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=shape["vocab"], hidden_size=shape["hidden"], intermediate_size=shape["ff"],
        num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"],
        num_key_value_heads=shape["kv"], max_position_embeddings=32768, rope_theta=1e6,
        tie_word_embeddings=True,
    )
    Qwen2ForCausalLM(config).to(torch.bfloat16).save_pretrained(folder)


def token_stream(shape: dict, steps: int) -> np.ndarray:
    """Random ids, enough for every step's batch of windows (+1 for the shifted targets)."""
    rng = np.random.default_rng(0)
    return rng.integers(0, shape["vocab"], size=shape["batch"] * steps * shape["seq"] + 1)


def peak_gib() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


def run_lmforge(base: Path, shape: dict, args: argparse.Namespace, kind: str) -> dict:
    from lmforge.config import AdapterConfig, TrainConfig
    from lmforge.models import load_pretrained_causal_lm
    from lmforge.tasks import generation
    from lmforge.training import fit

    gpu = torch.cuda.is_available()
    model = load_pretrained_causal_lm(
        str(base), gradient_checkpointing=args.gradient_checkpointing,
        adapter=AdapterConfig(kind=kind, **LORA),
    )
    tokens = token_stream(shape, args.steps)
    cfg = TrainConfig(max_steps=args.steps, batch_size=shape["batch"], lr=LR, eval_every=10**9,
                      precision="bf16" if gpu else "fp32", compile=args.compile and gpu,
                      early_stopping_metric="val_loss")
    with tempfile.TemporaryDirectory() as out:
        fit(model, generation.TokenWindows(tokens, shape["seq"]),
            generation.make_collate(tokens, shape["seq"]), generation.lm_loss, None, cfg,
            Path(out), show_progress=False)
        # metrics.jsonl logs samples/s over each 10-step window; steady state skips warm-up
        rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").open()]
    rates = [r["samples_per_s"] for r in rows if r["kind"] == "train" and r["step"] > args.warmup]
    return {"tokens_per_s": float(np.median(rates)) * shape["seq"], "peak_gib": peak_gib()}


def run_trainer(base: Path, shape: dict, args: argparse.Namespace) -> dict:
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    gpu = torch.cuda.is_available()
    model = AutoModelForCausalLM.from_pretrained(base)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    model = get_peft_model(model, LoraConfig(
        r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
        target_modules="all-linear", task_type="CAUSAL_LM"))
    tokens = token_stream(shape, args.steps)
    seq = shape["seq"]
    rows = [{"input_ids": torch.from_numpy(tokens[i * seq:(i + 1) * seq].astype(np.int64)),
             "labels": torch.from_numpy(tokens[i * seq:(i + 1) * seq].astype(np.int64))}
            for i in range(shape["batch"] * args.steps)]
    times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_end(self, *_, **__):  # noqa: ANN002, ANN003
            if gpu:
                torch.cuda.synchronize()
            times.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as out:
        training_args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=shape["batch"], max_steps=args.steps,
            learning_rate=LR, bf16=gpu, logging_steps=50, save_strategy="no", report_to=[],
            dataloader_num_workers=2 if gpu else 0, disable_tqdm=True,
            torch_compile=args.compile and gpu,
        )
        Trainer(model=model, args=training_args, train_dataset=rows,
                callbacks=[StepTimer()]).train()
    steady = times[args.warmup:]
    rate = (len(steady) - 1) * shape["batch"] * seq / (steady[-1] - steady[0])
    return {"tokens_per_s": rate, "peak_gib": peak_gib()}


def measure(which: str, base: Path, args: argparse.Namespace) -> dict | None:
    """One measurement in a fresh process; None (with the reason printed) if it failed."""
    command = [sys.executable, __file__, "--one", which, "--base", str(base),
               "--steps", str(args.steps), "--warmup", str(args.warmup)]
    command += ["--batch", str(args.batch)] if args.batch else []
    command += ["--gradient-checkpointing"] if args.gradient_checkpointing else []
    command += ["--compile"] if args.compile else []
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        print(f"{which}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--compile", action="store_true", help="train.compile / torch_compile")
    parser.add_argument("--one", choices=["lmforge", "trainer", "qlora"], help=argparse.SUPPRESS)
    parser.add_argument("--base", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    gpu = torch.cuda.is_available()
    shape = dict(QWEN_05B if gpu else TINY)
    shape["batch"] = args.batch or shape["batch"]
    args.steps = args.steps or (60 if gpu else 30)
    args.warmup = args.warmup or 10
    if args.one:  # a child process: one measurement, as JSON on the last line
        result = (run_trainer(args.base, shape, args) if args.one == "trainer"
                  else run_lmforge(args.base, shape, args, "qlora" if args.one == "qlora"
                                   else "lora"))
        print(json.dumps(result))
        return
    device = torch.cuda.get_device_name(0) if gpu else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {device}; shape {shape}; LoRA {LORA} on every linear projection; "
          f"{args.steps} steps, first {args.warmup} excluded; gradient checkpointing "
          f"{args.gradient_checkpointing}; compile {args.compile and gpu}")
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        save_base(shape, base)
        results = {"HF Trainer + peft, LoRA": measure("trainer", base, args),
                   "lmforge, LoRA": measure("lmforge", base, args)}
        if gpu:
            results["lmforge, QLoRA (4-bit NF4 base)"] = measure("qlora", base, args)
        else:
            print("QLoRA: skipped (bitsandbytes' 4-bit needs a CUDA GPU)")
    trainer = results["HF Trainer + peft, LoRA"]
    print(f"{'run':<34}{'tokens/s':>12}{'vs Trainer':>12}{'peak GiB':>10}")
    for name, result in results.items():
        if result is None:
            print(f"{name:<34}{'failed':>12}")
            continue
        ratio = result["tokens_per_s"] / trainer["tokens_per_s"] if trainer else float("nan")
        peak = f"{result['peak_gib']:.2f}" if result["peak_gib"] is not None else "-"
        print(f"{name:<34}{result['tokens_per_s']:>12.0f}{ratio:>11.2f}x{peak:>10}")


if __name__ == "__main__":
    main()
