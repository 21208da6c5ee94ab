"""Tiny corpora, configs and bundles for the generation tests, made in the test."""

from __future__ import annotations

import random
from pathlib import Path

import torch

from lmforge.bundle import save_bundle
from lmforge.config import CleanConfig, GenerateConfig
from lmforge.models import GPT, GPTConfig
from lmforge.tokenization import train_tokenizer

WORDS = "the cat dog sat ran on under a mat log big small red blue".split()


def corpus_lines(n: int = 300, seed: int = 0) -> list[str]:
    """Distinct lines, each two random words then a fixed phrase a model learns in seconds."""
    rng = random.Random(seed)
    return [
        f"{rng.choice(WORDS)} {rng.choice(WORDS)} counts one two three four five six {i}"
        for i in range(n)
    ]


def write_corpus(path: Path, n: int = 300) -> Path:
    path.write_text("\n".join(corpus_lines(n)) + "\n", encoding="utf-8")
    return path


def tiny_generation_config(data_path: Path, cache_dir: Path, **train) -> dict:
    """A GPT small enough to train in a few seconds on one CPU core."""
    return {
        "task": "generation",
        "data": {"path": str(data_path), "cache_dir": str(cache_dir)},
        "tokenizer": {"vocab_size": 300},
        "model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 64, "max_length": 32,
                  "dropout": 0.0},
        "train": {"max_steps": 120, "batch_size": 16, "lr": 3e-3, "eval_every": 40, **train},
    }


def random_bundle(directory: Path, context: int = 32, seed: int = 0) -> Path:
    """A generation bundle with untrained weights: enough for the command line's checks."""
    tokenizer = train_tokenizer(corpus_lines(50), "byte_bpe", 300)
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, max_length=context, d_model=32,
                          n_layers=1, n_heads=2, d_ff=64))
    meta = {
        "task": "generation",
        "arch": "gpt",
        "text_column": "text",
        "clean": CleanConfig().model_dump(),
        "max_length": context,
        "generate": GenerateConfig(max_new_tokens=8).model_dump(),
        "architecture": model.config.to_dict(),
    }
    save_bundle(directory, model, tokenizer, meta)
    return directory
