"""Chat and instruction fine-tuning, generation's other data: each conversation rendered with the
model's chat template (lmforge.chat) is one example, and the loss covers only the tokens of its
assistant replies, every reply of a multi-turn conversation. A conversation longer than the
context is cut after its last reply that fits, or dropped when none does (data_report.json
counts both). Evaluation is the loss and perplexity of the assistant tokens, beside a unigram
model of the training replies' tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import lmforge.render as render
import lmforge.runs as runs
from lmforge.chat import (
    DEFAULT_CHAT_TEMPLATE,
    ChatTemplate,
    EncodedConversation,
    chat_template,
    encode_conversation,
    fit_context,
)
from lmforge.config import Config, load_config, read_config_file
from lmforge.data.conversations import (
    load_conversation,
    prepare_conversations,
    read_eval_conversations,
)
from lmforge.errors import LmforgeError
from lmforge.evaluation.language_model import perplexity
from lmforge.tasks.recipe import Log, Prepared, TrainingPlan, metric_mode
from lmforge.tokenization import TextTokenizer

Batch = dict[str, torch.Tensor]
IGNORE = -100  # cross_entropy's ignore_index: a token the loss does not predict


@dataclass
class ChatExamples:
    """One split's conversations as token ids with their trained (assistant) tokens marked."""

    examples: list[EncodedConversation]
    truncated: int  # cut after an earlier reply to fit the context
    too_long: int  # dropped: not even the first reply fits
    lengths: list[int]  # every conversation's full length in tokens, before any cut
    unrenderable: int = 0  # dropped: the chat template refused it (a role it does not take)
    reason: str = ""  # the template's first refusal, in its words

    def report(self) -> dict[str, Any]:
        return {"conversations": len(self.examples), "truncated": self.truncated,
                "too_long": self.too_long, "unrenderable": self.unrenderable,
                "assistant_tokens": int(sum(int(e.trained[1:].sum()) for e in self.examples))}


def encode_split(
    tokenizer: TextTokenizer, template: ChatTemplate, conversations: list[str], context: int
) -> ChatExamples:
    """Each conversation (canonical JSON) encoded and fitted to `context` tokens."""
    out = ChatExamples([], 0, 0, [])
    for text in conversations:
        try:
            encoded = encode_conversation(tokenizer, template, load_conversation(text))
        except LmforgeError as error:
            out.unrenderable += 1
            out.reason = out.reason or str(error)
            continue
        out.lengths.append(len(encoded.ids))
        fitted = fit_context(encoded, context)
        if fitted is None or not fitted.trained[1:].any():
            out.too_long += 1
            continue
        out.truncated += fitted is not encoded
        out.examples.append(fitted)
    return out


def token_quantiles(lengths: list[int], context: int) -> dict[str, Any]:
    """Quantiles of conversation length in tokens, and how many exceed the context."""
    if not lengths:
        return {"over_context": 0}
    values = np.asarray(lengths)
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {"min": int(values.min()), "p50": float(p50), "p90": float(p90), "p99": float(p99),
            "max": int(values.max()), "over_context": int((values > context).sum())}


def make_chat_collate(
    examples: list[EncodedConversation], pad_id: int
) -> Callable[[list[int]], Batch]:
    """Examples padded on the right to the longest in the batch; a target is IGNORE unless it
    is an assistant token (padding never is). Causal attention keeps the padding, always after
    a row's own tokens, from changing them."""

    def collate(indices: list[int]) -> Batch:
        rows = [examples[i] for i in indices]
        width = max(len(row.ids) for row in rows) - 1
        inputs = torch.full((len(rows), width), pad_id, dtype=torch.long)
        targets = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        for r, row in enumerate(rows):
            ids = torch.from_numpy(row.ids.astype(np.int64))
            n = len(ids) - 1
            inputs[r, :n] = ids[:-1]
            targets[r, :n] = torch.where(torch.from_numpy(row.trained[1:]), ids[1:], IGNORE)
        return {"input_ids": inputs, "targets": targets}

    return collate


def chat_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Mean cross-entropy of the assistant tokens of the batch."""
    logits = model(batch["input_ids"])  # (B, T, vocab)
    return F.cross_entropy(logits.flatten(0, 1).float(), batch["targets"].flatten(),
                           ignore_index=IGNORE)


@torch.no_grad()
def assistant_nll(
    model: nn.Module, examples: list[EncodedConversation], pad_id: int, batch_size: int = 16
) -> tuple[float, int]:
    """(summed negative log-likelihood, tokens scored) of the assistant tokens."""
    if not examples:
        return 0.0, 0
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    collate = make_chat_collate(examples, pad_id)
    order = np.argsort([len(e.ids) for e in examples], kind="stable")
    total, count = 0.0, 0
    for start in range(0, len(order), batch_size):
        batch = collate([int(i) for i in order[start : start + batch_size]])
        logits = model(batch["input_ids"].to(device))
        targets = batch["targets"].to(device)
        nll = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(),
                              ignore_index=IGNORE, reduction="sum")
        total, count = total + float(nll), count + int((targets != IGNORE).sum())
    model.train(was_training)
    return total, count


def make_val_metrics(
    examples: list[EncodedConversation], pad_id: int
) -> Callable[[nn.Module], dict[str, float]]:
    def evaluate(model: nn.Module) -> dict[str, float]:
        total, count = assistant_nll(model, examples, pad_id)
        loss = total / max(count, 1)
        return {"val_loss": loss, "val_perplexity": float(np.exp(min(loss, 50.0)))}

    return evaluate


def assistant_counts(examples: list[EncodedConversation], vocab_size: int) -> np.ndarray:
    """How often each token id is an assistant token (the unigram baseline's training)."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for e in examples:
        counts += np.bincount(e.ids[1:][e.trained[1:]], minlength=vocab_size)[:vocab_size]
    return counts


def chat_report(
    model: nn.Module, splits: dict[str, list[EncodedConversation]], pad_id: int,
    train_counts: np.ndarray | None,
) -> dict[str, Any]:
    """eval.json of a chat run, in generation's shape (render_lm_table prints it): val and test
    loss and test perplexity of the assistant tokens, and a unigram model of the training
    replies' tokens on the same test tokens."""
    scored = {name: assistant_nll(model, examples, pad_id) for name, examples in splits.items()}
    loss = {name: total / count for name, (total, count) in scored.items() if count}
    test_total, test_count = scored.get("test", (0.0, 0))
    report: dict[str, Any] = {
        "n_tokens": test_count, "scored": "assistant tokens",
        "val_loss": loss.get("val"), "test_loss": loss.get("test"),
        "perplexity": perplexity(test_total, test_count), "baselines": {},
    }
    if train_counts is not None and test_count:
        log_probs = np.log(train_counts + 1.0) - np.log(train_counts.sum() + len(train_counts))
        tokens = np.concatenate([e.ids[1:][e.trained[1:]] for e in splits["test"]])
        total = float(-log_probs[tokens].sum())
        report["baselines"]["unigram"] = {"test_loss": total / len(tokens),
                                          "perplexity": perplexity(total, len(tokens))}
    return report


def prepare_chat(cfg: Config, run_dir: Path, resume: bool, log: Log, kind: str) -> Prepared:
    """Conversations read, cleaned and split; the tokenizer (a trained one learns from the
    training conversations rendered with lmforge's template); every split encoded."""
    data = prepare_conversations(cfg.data, kind)
    log(f"{render.data_summary(data.report, 'conversations')} ({kind} data)")
    plain = ChatTemplate(DEFAULT_CHAT_TEMPLATE, {})
    rendered = [plain.render(load_conversation(text)) for text in data.train.texts]
    tokenizer = runs.tokenizer_for_run(cfg, rendered, data.data_hash, run_dir, resume, log)
    if tokenizer.eos_id is None:
        raise LmforgeError("generation needs a tokenizer with an end-of-text token")
    template = chat_template(tokenizer)
    if tokenizer.hf is not None and not getattr(tokenizer.hf, "chat_template", None):
        tokenizer.hf.chat_template = template.source  # saved with it: transformers renders alike
    context = cfg.model.max_length
    texts = {"train": data.train.texts, "val": data.val.texts, "test": data.test.texts}
    encoded = {name: encode_split(tokenizer, template, split, context)
               for name, split in texts.items()}
    if not encoded["train"].examples and encoded["train"].unrenderable:
        raise LmforgeError(f"{cfg.data.path}: no training conversation could be rendered: "
                           f"{encoded['train'].reason}")
    if not encoded["train"].examples:
        raise LmforgeError(f"{cfg.data.path}: no training conversation has an assistant reply "
                           f"within the context of {context} tokens (model.max_length); raise "
                           "it or shorten the conversations")
    lengths = [n for split in encoded.values() for n in split.lengths]
    report = data.report | {
        "fit_to_context": {name: split.report() for name, split in encoded.items()},
        "length_tokens": token_quantiles(lengths, context),
        "vocab_size": tokenizer.vocab_size,
    }
    dropped = sum(split.too_long for split in encoded.values())
    cut = sum(split.truncated for split in encoded.values())
    if dropped or cut:
        log(f"context of {context} tokens: {cut} conversations cut after an earlier reply, "
            f"{dropped} dropped (no reply fits)")
    refused = sum(split.unrenderable for split in encoded.values())
    if refused:
        first = next(split.reason for split in encoded.values() if split.reason)
        log(f"{refused} conversations dropped: the chat template refused them ({first})")
    parts = {"chat": {name: split.examples for name, split in encoded.items()},
             "chat_template": template.source}
    return Prepared(cfg, data.data_hash, tokenizer, texts, report, parts)


def chat_training(run: Prepared) -> TrainingPlan:
    """What the training loop needs for a chat run: the training conversations, bucketed by
    length, and the assistant tokens' loss."""
    chat, cfg, pad_id = run.parts["chat"], run.cfg, run.tokenizer.pad_id
    train = chat["train"]
    return TrainingPlan(
        examples=range(len(train)),
        collate=make_chat_collate(train, pad_id),
        loss=chat_loss,
        val_metrics=make_val_metrics(chat["val"], pad_id) if chat["val"] else None,
        metric_mode=metric_mode(cfg.train.early_stopping_metric),
        lengths=np.asarray([len(e.ids) for e in train]),
    )


def chat_test(run: Prepared, model: nn.Module) -> dict[str, Any]:
    chat, tokenizer = run.parts["chat"], run.tokenizer
    counts = assistant_counts(chat["train"], tokenizer.vocab_size) if run.cfg.eval.baselines \
        else None
    return chat_report(model, {"val": chat["val"], "test": chat["test"]}, tokenizer.pad_id,
                       counts)


def chat_evaluate(
    generator: Any, run_dir: Path | None, data: str | None
) -> dict[str, Any]:
    """`lmforge evaluate` of a chat model: the assistant tokens' loss and perplexity on the run's
    own val and test conversations (wherever they are in its data now), or on the conversations
    of `data`, never on one the model trained on (report["data_check"])."""
    tokenizer, template, context = generator.tokenizer, generator.chat_template, \
        generator.max_length
    record = runs.read_split_record(run_dir)
    splits: dict[str, list[str]] = {}
    check: dict[str, Any] = {}
    train: list[str] = []
    if run_dir is not None:
        cfg = load_config(read_config_file(run_dir / "config.yaml"))
        every = read_eval_conversations(cfg.data.path, cfg.data.clean)
        if record is None:
            raise LmforgeError(f"run {run_dir} has no splits.json; evaluate with --data FILE")
        located = {name: record.locate(name, every) for name in ("train", "val", "test")}
        train = [every[i] for i in located["train"][0]]
        if data is None:
            splits = {name: [every[i] for i in located[name][0]] for name in ("val", "test")}
            check = {"source": cfg.data.path, "split_record": True,
                     "test_texts": len(record.keys["test"]),
                     "test_texts_missing": located["test"][1]}
            if located["test"][1]:
                raise LmforgeError(f"{cfg.data.path}: {located['test'][1]} of the run's "
                                   f"{len(record.keys['test'])} test conversations are missing; "
                                   "evaluate with --data FILE")
    if data is not None:
        texts = read_eval_conversations(data, generator.clean)
        check = {"source": data, "split_record": record is not None}
        if record is not None:
            unseen, check = runs.leak_check(texts, record, data, run_dir)
            texts = [texts[i] for i in unseen]
        splits = {"test": texts}
    elif run_dir is None:
        raise LmforgeError("this chat bundle has no run directory; pass --data FILE with "
                           "conversations")
    encoded = {name: encode_split(tokenizer, template, texts, context).examples
               for name, texts in splits.items()}
    counts = None
    if train:
        counts = assistant_counts(encode_split(tokenizer, template, train, context).examples,
                                  tokenizer.vocab_size)
    report = chat_report(generator.model, encoded, tokenizer.pad_id, counts)
    report["data_check"] = check
    return report
