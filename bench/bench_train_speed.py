"""Training throughput: lmforge's loop against Hugging Face Trainer, same model, data and run.

Both train `BertForSequenceClassification` (BERT-base shape on a GPU: 12 layers, 768 wide,
sequence 128, batch 64, bf16) on the same fixed-length random tokens; steady state only (the
first --warmup steps are excluded). lmforge's own encoder at the same shape is reported beside.
Without a GPU it runs a tiny shape on the CPU, so the script is exercised anywhere.

    python bench/bench_train_speed.py                  # GPU if present, else tiny CPU shape
    python bench/bench_train_speed.py --steps 300 --warmup 50
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
    BertConfig,
    BertForSequenceClassification,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from lmforge.config import TrainConfig
from lmforge.models import EncoderClassifier, PretrainedClassifier, TransformerConfig
from lmforge.tasks import classification as task
from lmforge.training import fit

BASE = {"hidden": 768, "layers": 12, "heads": 12, "ff": 3072, "seq": 128, "batch": 64}
TINY = {"hidden": 64, "layers": 2, "heads": 2, "ff": 128, "seq": 32, "batch": 16}
VOCAB = 30522


def fixed_data(n: int, seq: int) -> task.TokenizedSplit:
    rng = np.random.default_rng(0)
    ids = [rng.integers(1000, VOCAB, size=seq).astype(np.int32) for _ in range(n)]
    return task.TokenizedSplit(ids, rng.integers(0, 2, size=n))


def bert(shape: dict) -> BertForSequenceClassification:
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=VOCAB, hidden_size=shape["hidden"],
                     num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"],
                     intermediate_size=shape["ff"], max_position_embeddings=512, num_labels=2,
                     attn_implementation="sdpa")
    return BertForSequenceClassification(cfg)


class StepTimer(TrainerCallback):
    def __init__(self) -> None:
        self.times: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN003
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())


def steady_rate(times: list[float], warmup: int, batch: int) -> float:
    steady = times[warmup:]
    return (len(steady) - 1) * batch / (steady[-1] - steady[0])


def run_trainer(shape: dict, data: task.TokenizedSplit, steps: int, warmup: int, gpu: bool,
                out: Path) -> float:
    rows = [{"input_ids": torch.from_numpy(x.astype(np.int64)), "labels": int(y)}
            for x, y in zip(data.ids, data.labels, strict=True)]
    timer = StepTimer()
    args = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=shape["batch"], max_steps=steps,
        learning_rate=5e-5, bf16=gpu, logging_steps=50, save_strategy="no", report_to=[],
        dataloader_num_workers=2 if gpu else 0, disable_tqdm=True,
    )
    Trainer(model=bert(shape), args=args, train_dataset=rows, callbacks=[timer]).train()
    return steady_rate(timer.times, warmup, shape["batch"])


def run_lmforge(model: torch.nn.Module, shape: dict, data: task.TokenizedSplit, steps: int,
                warmup: int, gpu: bool, out: Path) -> float:
    cfg = TrainConfig(max_steps=steps, batch_size=shape["batch"], lr=5e-5, eval_every=10**9,
                      precision="bf16" if gpu else "fp32", compile=gpu, max_grad_norm=1.0)
    fit(model, data, task.make_collate(0), task.make_loss(), None, cfg, out,
        show_progress=False)
    # metrics.jsonl logs samples/s over every 10-step window; steady state skips the warm-up
    rates = [json.loads(line)["samples_per_s"] for line in (out / "metrics.jsonl").open()
             if json.loads(line)["kind"] == "train" and json.loads(line)["step"] > warmup]
    return float(np.median(rates))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None)
    args = parser.parse_args()
    gpu = torch.cuda.is_available()
    shape = BASE if gpu else TINY
    steps = args.steps or (300 if gpu else 60)
    warmup = args.warmup or (50 if gpu else 10)
    data = fixed_data(shape["batch"] * steps, shape["seq"])
    device = torch.cuda.get_device_name(0) if gpu else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {device}; shape {shape}; {steps} steps, first {warmup} excluded")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        trainer = run_trainer(shape, data, steps, warmup, gpu, tmp / "trainer")
        ours_hf = run_lmforge(PretrainedClassifier(bert(shape)), shape, data, steps, warmup, gpu,
                              tmp / "lmforge-bert")
        torch.manual_seed(0)
        encoder = EncoderClassifier(TransformerConfig(
            vocab_size=VOCAB, n_classes=2, max_length=shape["seq"], d_model=shape["hidden"],
            n_layers=shape["layers"], n_heads=shape["heads"], d_ff=shape["ff"], dropout=0.1))
        ours_enc = run_lmforge(encoder, shape, data, steps, warmup, gpu, tmp / "lmforge-enc")
    print(f"{'loop':<34}{'samples/s':>12}{'vs Trainer':>12}")
    for name, rate in [("HF Trainer, BertForSeqCls", trainer),
                       ("lmforge loop, BertForSeqCls", ours_hf),
                       ("lmforge loop, lmforge encoder", ours_enc)]:
        print(f"{name:<34}{rate:>12.1f}{rate / trainer:>11.2f}x")


if __name__ == "__main__":
    main()
