"""Text generation (a causal LM): the model for a config, training windows, the loss, the
validation metrics the training loop logs, and the recipe the verbs run. Decoding is in
lmforge.decoding; test perplexity beside the unigram baseline in
lmforge.evaluation.language_model.

The corpus is one flat array of token ids per split (documents separated by the end-of-text
token, memory-mapped from the token cache); every example is a window of `context` + 1 tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

import lmforge.render as render
import lmforge.runs as runs
from lmforge.chat import chat_template
from lmforge.config import (
    CleanConfig,
    Config,
    DataConfig,
    ModelConfig,
    load_config,
    read_config_file,
)
from lmforge.data import detect_text_column
from lmforge.data.conversations import conversation_kind
from lmforge.data.documents import PreparedDocuments, prepare_documents, read_eval_documents
from lmforge.data.split import SplitRecord
from lmforge.data.stream import streams
from lmforge.errors import LmforgeError
from lmforge.evaluation.language_model import lm_report, render_lm_table, token_counts, token_nll
from lmforge.models import GPT, GPTConfig, load_pretrained_causal_lm
from lmforge.tasks.conversations import chat_evaluate, chat_test, chat_training, prepare_chat
from lmforge.tasks.recipe import (
    Evaluated,
    Log,
    Prepared,
    TrainingPlan,
    bundle_meta,
    open_lmforge_bundle,
)
from lmforge.tasks.streamed_corpus import prepare_streamed, streamed_run_tokens
from lmforge.tokenization import TextTokenizer, TokenCache, TokenFiles, document_stream
from lmforge.training import distributed, seed_everything

if TYPE_CHECKING:
    from lmforge.bundle import Generator

Batch = dict[str, torch.Tensor]


def architecture(cfg: ModelConfig, tokenizer: TextTokenizer) -> GPTConfig:
    return GPTConfig(
        vocab_size=tokenizer.vocab_size,
        max_length=cfg.max_length,
        d_model=cfg.d_model,
        n_layers=cfg.n_layers,
        n_heads=cfg.n_heads,
        d_ff=cfg.d_ff,
        dropout=cfg.dropout,
    )


def build_model(cfg: ModelConfig, tokenizer: TextTokenizer) -> nn.Module:
    if cfg.arch == "pretrained":
        return load_pretrained_causal_lm(
            cfg.pretrained, cfg.revision, cfg.trust_remote_code, cfg.gradient_checkpointing,
            cfg.adapter,
        )
    model = GPT(architecture(cfg, tokenizer))
    model.gradient_checkpointing = cfg.gradient_checkpointing
    return model


# --- training ---------------------------------------------------------------------------------


@dataclass
class TokenWindows(Sequence):
    """The training examples: item i is the start of the i-th stretch of `context` tokens, so an
    epoch covers the corpus once. The collate function moves each window by a random offset
    (torch's RNG, which checkpoints restore), so every epoch sees different windows."""

    tokens: np.ndarray
    context: int

    def __len__(self) -> int:
        return max(1, (len(self.tokens) - 1) // self.context)

    def __getitem__(self, i: int) -> int:
        return i * self.context


def make_collate(tokens: np.ndarray, context: int) -> Callable[[list[int]], Batch]:
    last_start = len(tokens) - context - 1

    def collate(starts: list[int]) -> Batch:
        shifts = torch.randint(0, context, (len(starts),))
        moved = np.minimum(np.asarray(starts) + shifts.numpy(), last_start)
        rows = [np.asarray(tokens[s : s + context + 1], dtype=np.int64) for s in moved]
        window = torch.from_numpy(np.stack(rows))  # (B, context + 1)
        return {"input_ids": window[:, :-1], "targets": window[:, 1:]}

    return collate


def lm_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Mean cross-entropy of predicting every next token."""
    logits = model(batch["input_ids"])  # (B, T, vocab)
    return F.cross_entropy(logits.flatten(0, 1).float(), batch["targets"].flatten())


# --- validation -------------------------------------------------------------------------------


def make_val_metrics(
    tokens: np.ndarray, context: int, max_tokens: int | None
) -> Callable[[nn.Module], dict[str, float]]:
    """The evaluation the loop runs every eval_every steps: val loss and perplexity."""

    def evaluate(model: nn.Module) -> dict[str, float]:
        total, count = token_nll(model, tokens, context, max_tokens=max_tokens)
        loss = total / max(count, 1)
        return {"val_loss": loss, "val_perplexity": math.exp(min(loss, 50.0))}

    return evaluate


# --- the recipe: what the verbs call ----------------------------------------------------------

QUICKSTART_PROMPTS = ["这本书", "物流很快，", "质量"]


class GenerationTask:
    """Plain text (or a table's text column) → lmforge's GPT or a pretrained causal LM,
    measured by perplexity beside a smoothed unigram model; a bundle loads into a Generator."""

    name = "generation"
    val_metrics = ("val_loss", "val_perplexity")  # what make_val_metrics reports
    runs_with = "generate"  # the verb that runs its bundles
    quickstart_run = "quickstart-generation"  # runs/<this>: where `lmforge quickstart` writes
    report_kind = "generation"  # report.html's views (evaluation.html_report.SECTIONS)

    def configure(self, cfg: Config) -> None:
        """lmforge's GPT unless a pretrained model is named, and a tokenizer that reads back
        exactly (byte-level BPE keeps spaces)."""
        model, tokenizer = cfg.model, cfg.tokenizer
        if "arch" not in model.model_fields_set:
            model.arch = "gpt"
        if model.arch == "auto":
            raise ValueError("model.arch 'auto' is for task classification; task generation "
                             "uses 'gpt' or 'pretrained'")
        if model.arch == "transformer":
            raise ValueError("model.arch 'transformer' is an encoder and cannot generate; "
                             "task generation uses 'gpt' or 'pretrained'")
        if model.arch not in ("gpt", "pretrained"):
            raise ValueError(f"model.arch '{model.arch}' cannot generate; task generation uses "
                             "'gpt' or 'pretrained'")
        if tokenizer.kind == "auto" and model.arch == "gpt" and not tokenizer.pretrained:
            tokenizer.kind = "byte_bpe"
        if tokenizer.kind in ("bpe", "wordpiece", "char"):
            raise ValueError(f"tokenizer.kind '{tokenizer.kind}' drops spaces, so generated text "
                             "would not read back; use byte_bpe (the default for generation)")

    def starter_config(self, data: str) -> Config:
        if conversation_kind(data) is not None:  # chat or instruction rows: no text column
            return Config(task=self.name, data=DataConfig(path=data, format="jsonl"))
        return Config(task=self.name, data=DataConfig(path=data, **detect_text_column(data)))

    def quickstart_config(self, fast: bool) -> Config:
        """A small GPT on the built-in review corpus, sized for the quickstart's time budget."""
        steps = 300 if fast else 1200
        return load_config({
            "task": self.name,
            "tokenizer": {"vocab_size": 4000},
            "model": {"d_model": 128, "n_layers": 4, "n_heads": 4, "d_ff": 512,
                      "max_length": 64, "dropout": 0.0},
            "train": {"max_steps": steps, "eval_every": steps // 5, "batch_size": 32,
                      "lr": 2e-3},
            "eval": {"val_tokens": 50_000},
        })

    def prepare(self, cfg: Config, run_dir: Path, resume: bool, log: Log) -> Prepared:
        """Documents, tokenizer and token files; rank 0 writes, other ranks read them. A chat
        or instruction JSONL file is read as conversations instead (tasks.conversations)."""
        kind = conversation_kind(cfg.data.path, cfg.data.format)
        if kind is not None:
            return prepare_chat(cfg, run_dir, resume, log, kind)
        if streams(cfg.data):  # bigger than memory, or asked to: one pass, straight to tokens
            return prepare_streamed(cfg, run_dir, resume, log)
        data = prepare_documents(cfg.data)
        log(f"{render.data_summary(data.report, 'documents')} (split by {data.split_by})")
        tokenizer = runs.tokenizer_for_run(cfg, data.train.texts, data.data_hash, run_dir,
                                           resume, log)
        tokens = distributed.on_main(lambda: _token_files(cfg, data, tokenizer, log))
        distributed.barrier()
        tokens = tokens or _token_files(cfg, data, tokenizer, lambda _: None)
        window = cfg.model.max_length + 1
        if len(tokens["train"]) < window:
            raise LmforgeError(
                f"{cfg.data.path}: the training split holds {len(tokens['train'])} tokens, "
                f"fewer than one context window of {window} (model.max_length + 1); add text "
                "or lower model.max_length"
            )
        report = data.report | {
            "tokens": {name: len(ids) for name, ids in tokens.items()},
            "token_dtype": tokens["train"].dtype.name,
            "vocab_size": tokenizer.vocab_size,
        }
        texts = {"train": data.train.texts, "val": data.val.texts, "test": data.test.texts}
        return Prepared(cfg, data.data_hash, tokenizer, texts, report, {"tokens": tokens})

    def build_model(
        self, run: Prepared, run_dir: Path, resume: bool, show_progress: bool, log: Log
    ) -> nn.Module:
        seed_everything(run.cfg.train.seed)
        model = build_model(run.cfg.model, run.tokenizer)
        seed_everything(run.cfg.train.seed + distributed.rank())  # distinct dropout per rank
        return model

    def training(self, run: Prepared, model: nn.Module) -> TrainingPlan:
        cfg, context = run.cfg, run.cfg.model.max_length
        if "chat" in run.parts:
            return chat_training(run)
        train_ids, val_ids = run.parts["tokens"]["train"], run.parts["tokens"]["val"]
        metric = cfg.train.early_stopping_metric
        return TrainingPlan(
            examples=TokenWindows(train_ids, context),
            collate=make_collate(train_ids, context),
            loss=lm_loss,
            val_metrics=make_val_metrics(val_ids, context, cfg.eval.val_tokens)
            if len(val_ids) > 1 else None,
            metric_mode="min" if "loss" in metric or "perplexity" in metric else "max",
        )

    def test(self, run: Prepared, model: nn.Module) -> Evaluated | None:
        if "chat" in run.parts:
            report = chat_test(run, model)
            return Evaluated(report, scored_test=report["test_loss"] is not None)
        tokens, cfg = run.parts["tokens"], run.cfg
        counts = None
        if cfg.eval.baselines:
            counts = token_counts(tokens["train"], run.tokenizer.vocab_size)
        report = lm_report(model, tokens, counts, cfg.model.max_length)
        return Evaluated(report, scored_test=report["test_loss"] is not None)

    def refold(self, run: Prepared, parts: dict[str, Any]) -> Prepared:
        """Folds of whole documents (or of the position split's pieces), tokenized again."""
        if "chat" in run.parts:
            raise LmforgeError("cross-validation (--cv) takes plain text; chat and instruction "
                               "data train without it")
        if run.parts.get("streamed"):
            raise LmforgeError("cross-validation (--cv) folds documents held in memory; a "
                               "corpus read as a stream (data.stream) trains without it")
        documents = run.split_texts["train"] + run.split_texts["val"]
        texts = {"test": run.split_texts["test"],
                 **{name: [documents[i] for i in parts[name]] for name in parts}}
        tokens = {"test": run.parts["tokens"]["test"],
                  **{name: _token_ids(run.tokenizer, texts[name]) for name in parts}}
        return replace(run, split_texts=texts, parts={**run.parts, "tokens": tokens})

    def summary(self, report: dict[str, Any]) -> dict[str, Any]:
        return {key: report[key] for key in ("n_tokens", "test_loss", "perplexity")}

    def bundle_meta(self, run: Prepared, model: nn.Module, run_dir: Path) -> dict[str, Any]:
        template = run.parts.get("chat_template") or chat_template(run.tokenizer).source
        return {**bundle_meta(run, model, run_dir), "generate": run.cfg.generate.model_dump(),
                "chat_template": template, "chat_data": "chat" in run.parts}

    def load(self, bundle_dir: Path, meta: dict[str, Any], device: str) -> Generator:
        return open_lmforge_bundle(bundle_dir, device)

    def evaluate(
        self, generator: Generator, bundle_dir: Path, run_dir: Path | None, data: str | None
    ) -> dict[str, Any]:
        """Loss and perplexity on the run's val/test splits, or on the documents of `data`."""
        if generator.meta.get("chat_data"):  # conversations: their assistant tokens
            return chat_evaluate(generator, run_dir, data)
        meta, tokenizer = generator.meta, generator.tokenizer
        record = runs.read_split_record(run_dir)
        run_tokens, counts, check = None, None, {}
        if run_dir is not None:
            cfg = load_config(read_config_file(run_dir / "config.yaml"))
            run_tokens, check = _run_tokens(cfg, run_dir, record, tokenizer, data is None)
            if cfg.eval.baselines:
                counts = token_counts(run_tokens["train"], tokenizer.vocab_size)
        if data is not None:
            data_cfg = DataConfig(text_column=meta["text_column"],
                                  clean=CleanConfig(**meta["clean"]))
            documents, _ = read_eval_documents(data, data_cfg)
            check = {"source": data, "split_record": record is not None}
            if record is not None:
                unseen, check = runs.leak_check(documents, record, data, run_dir)
                documents = [documents[i] for i in unseen]
            tokens = {"test": _token_ids(tokenizer, documents)}
        elif run_tokens is None:
            raise LmforgeError(f"{bundle_dir} has no run directory with a test split; "
                               "pass --data FILE with texts")
        else:
            tokens = {"val": run_tokens["val"], "test": run_tokens["test"]}
            if len(tokens["test"]) <= 1:
                raise LmforgeError(f"run {run_dir} has no test split; pass --data FILE")
        report = lm_report(generator.model, tokens, counts, generator.max_length)
        report["data_check"] = check
        return report

    def predict(self, generator: Generator, texts: list[str]) -> tuple[list[dict], str]:
        raise LmforgeError("a generation model continues prompts: use `lmforge generate`")

    def render(self, report: dict[str, Any], console: Console, title: str) -> None:
        render_lm_table(report, console, title)

    def quickstart_notes(self, generator: Generator, bundle_dir: Path) -> list[str]:
        completions = generator.generate(QUICKSTART_PROMPTS, seed=0, max_new_tokens=60)
        return [
            "samples (temperature 0.8, top-k 50, seed 0):",
            *(f"  [bold]{prompt}[/]{completion.text}"
              for prompt, completion in zip(QUICKSTART_PROMPTS, completions, strict=True)),
            f"more with: lmforge generate {bundle_dir} --prompt \"...\"",
        ]


def _token_files(
    cfg: Config, data: PreparedDocuments, tokenizer: TextTokenizer, log: Log
) -> dict[str, np.ndarray]:
    files = TokenFiles(cfg.data.cache_dir)
    key = TokenCache.key("generation", data.data_hash, cfg.data.format, cfg.data.text_column,
                         cfg.data.clean, cfg.data.split, tokenizer.fingerprint())
    tokens = files.load(key)
    if tokens is not None:
        log(f"tokenization: cache hit, not tokenizing again ({files.root / key})")
        return tokens
    splits = {"train": data.train.texts, "val": data.val.texts, "test": data.test.texts}
    return files.save(key, splits, tokenizer)


def _token_ids(tokenizer: TextTokenizer, documents: list[str]) -> np.ndarray:
    """The token stream of `documents`, as the token files hold it."""
    pieces = list(document_stream(tokenizer, documents))
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)


def _run_tokens(
    cfg: Config, run_dir: Path, record: SplitRecord | None, tokenizer: TextTokenizer,
    need_test: bool,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Token ids of a run's splits as at training time, and the data check: with splits.json,
    the documents each split held, wherever they are in the data now; without it (older runs),
    the data split again."""
    if streams(cfg.data):
        return streamed_run_tokens(cfg, tokenizer, record.data_hash if record else None)
    data = prepare_documents(cfg.data)
    if record is None:
        return (_token_files(cfg, data, tokenizer, lambda _: None),
                runs.unrecorded_check(run_dir, cfg.data.path, data.data_hash))
    documents = {"train": data.train.texts, "val": data.val.texts, "test": data.test.texts}
    tokens, missing = None, 0
    if data.data_hash == record.data_hash:
        tokens = _token_files(cfg, data, tokenizer, lambda _: None)
    else:  # edited since: the documents each split held, wherever they are now
        every, _ = read_eval_documents(cfg.data.path, cfg.data)
        for name in documents:
            found, lost = record.locate(name, every)
            documents[name] = [every[i] for i in found]
            missing = lost if name == "test" else missing
    test = documents["test"]
    unseen = record.unseen(test)
    check = runs.recorded_check(record, cfg.data.path, data.data_hash, missing,
                           len(test) - len(unseen))
    if need_test:
        runs.refuse_changed_test_split(check)
    if tokens is None:
        tokens = {name: _token_ids(tokenizer, docs) for name, docs in documents.items()}
    if len(unseen) < len(test):
        tokens["test"] = _token_ids(tokenizer, [test[i] for i in unseen])
    return tokens, check


RECIPE = GenerationTask()
