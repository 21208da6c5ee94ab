"""task preference: a pretrained causal LM tuned on pairs of replies, one preferred, with Direct
Preference Optimization (DPO; Rafailov et al., 2023).

Each pair is two conversations rendered with the model's chat template: the prompt, then the
chosen reply, or the rejected one; only the replies' tokens are scored. DPO raises the chosen
reply's log-probability relative to the reference model's and lowers the rejected one's:
loss = -log σ(β · ((log π(chosen) - log π_ref(chosen)) - (log π(rejected) - log π_ref(rejected)))).
The reference is the model as it was before tuning. Its log-probabilities are computed once,
before the first step, so no second copy of the model is kept while training (with an adapter,
they come from the base with the adapter still fresh, as peft's "adapter disabled" would give).

The result is a generation bundle (meta task "generation", inputs "preference") that `lmforge
generate` and `lmforge serve` run as any other; `lmforge evaluate` scores it on the run's test
pairs: reward accuracy and margins, beside the reference model's own preference.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from torch import nn

import lmforge.render as render
import lmforge.runs as runs
from lmforge.chat import (
    ChatTemplate,
    EncodedConversation,
    chat_template,
    encode_conversation,
    fit_context,
)
from lmforge.config import Config, DataConfig, load_config
from lmforge.data.preferences import PreferencePair, prepare_pairs, read_pairs
from lmforge.errors import LmforgeError
from lmforge.evaluation.retrieval import means_with_intervals
from lmforge.tasks import generation
from lmforge.tasks.conversations import IGNORE, make_chat_collate
from lmforge.tasks.recipe import (
    Evaluated,
    Log,
    Prepared,
    TrainingPlan,
    metric_mode,
    open_lmforge_bundle,
)
from lmforge.tokenization import TextTokenizer

if TYPE_CHECKING:
    from lmforge.bundle import Generator

Batch = dict[str, torch.Tensor]
INPUTS = "preference"  # the bundle's meta["inputs"]: a generation model tuned on pairs


@dataclass
class EncodedPairs:
    """One split's pairs: the chosen and the rejected conversation of each, token ids with the
    reply's tokens marked."""

    chosen: list[EncodedConversation]
    rejected: list[EncodedConversation]
    too_long: int  # dropped: the prompt and a reply do not fit the context

    def __len__(self) -> int:
        return len(self.chosen)


def encode_pairs(tokenizer: TextTokenizer, template: ChatTemplate, texts: list[str],
                 context: int) -> EncodedPairs:
    out = EncodedPairs([], [], 0)
    for text in texts:
        pair = PreferencePair.load(text)
        sides = [encode_conversation(tokenizer, template, pair.conversation(reply))
                 for reply in (pair.chosen, pair.rejected)]
        fitted = [fit_context(side, context) for side in sides]
        if any(f is None or f is not s for f, s in zip(fitted, sides, strict=True)):
            out.too_long += 1  # a reply cut short would be judged on what it does not say
            continue
        out.chosen.append(sides[0])
        out.rejected.append(sides[1])
    return out


def make_pair_collate(
    pairs: EncodedPairs, pad_id: int, reference: np.ndarray | None
) -> Callable[[list[int]], Batch]:
    """A batch of B pairs: 2B rows (the chosen conversations, then the rejected ones) and the
    reference's log-probabilities of both replies, (B, 2)."""
    rows = make_chat_collate(pairs.chosen + pairs.rejected, pad_id)
    n = len(pairs)

    def collate(indices: list[int]) -> Batch:
        batch = rows([*indices, *(n + i for i in indices)])
        if reference is not None:
            batch["reference"] = torch.from_numpy(reference[indices]).float()
        return batch

    return collate


def reply_logps(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Each row's summed log-probability of its reply's tokens."""
    logits = model(batch["input_ids"]).float()
    targets = batch["targets"]
    scored = targets != IGNORE
    picked = torch.gather(F.log_softmax(logits, dim=-1), 2,
                          targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * scored).sum(dim=1)


def dpo_margins(model: nn.Module, batch: Batch, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(β-scaled reward margins of the pairs, the policy's own log-prob differences)."""
    logps = reply_logps(model, batch)
    half = logps.shape[0] // 2
    chosen, rejected = logps[:half], logps[half:]
    reference = batch["reference"].to(logps.device)
    margins = beta * ((chosen - reference[:, 0]) - (rejected - reference[:, 1]))
    return margins, chosen - rejected


def make_dpo_loss(beta: float) -> Callable[[nn.Module, Batch], torch.Tensor]:
    def loss(model: nn.Module, batch: Batch) -> torch.Tensor:
        margins, _ = dpo_margins(model, batch, beta)
        return -F.logsigmoid(margins).mean()

    return loss


@torch.no_grad()
def pair_logps(model: nn.Module, pairs: EncodedPairs, pad_id: int,
               batch_size: int = 16) -> np.ndarray:
    """(n, 2): the model's log-probability of each pair's chosen and rejected reply."""
    out = np.zeros((len(pairs), 2), dtype=np.float64)
    if not len(pairs):
        return out
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    collate = make_pair_collate(pairs, pad_id, None)
    for start in range(0, len(pairs), batch_size):
        indices = list(range(start, min(start + batch_size, len(pairs))))
        batch = collate(indices)
        logps = reply_logps(model, {k: v.to(device) for k, v in batch.items()}).double().cpu()
        out[indices, 0] = logps[: len(indices)].numpy()
        out[indices, 1] = logps[len(indices):].numpy()
    model.train(was_training)
    return out


def pair_scores(policy: np.ndarray, reference: np.ndarray, beta: float) -> dict[str, np.ndarray]:
    """Per pair: DPO's loss, whether the implicit reward prefers the chosen reply, the reward
    margin, and whether the policy itself gives the chosen reply the higher log-probability."""
    margins = beta * ((policy[:, 0] - reference[:, 0]) - (policy[:, 1] - reference[:, 1]))
    return {"dpo_loss": np.logaddexp(0.0, -margins), "reward_accuracy": (margins > 0) * 1.0,
            "reward_margin": margins, "prefers_chosen": (policy[:, 0] > policy[:, 1]) * 1.0}


def pairs_report(policy: np.ndarray, reference: np.ndarray, beta: float,
                 rounds: int) -> dict[str, Any]:
    """eval.json of a preference run: the tuned model's figures with 95% bootstrap intervals,
    and under baselines the reference model's own preference (what tuning started from)."""
    report = means_with_intervals(pair_scores(policy, reference, beta), rounds=rounds)
    prefers = (reference[:, 0] > reference[:, 1]) * 1.0
    report["baselines"] = {"reference": {
        **means_with_intervals({"prefers_chosen": prefers}, rounds=rounds),
        "dpo_loss": float(np.log(2.0)), "reward_accuracy": 0.0}}
    report["beta"] = beta
    return report


def make_val_metrics(pairs: EncodedPairs, reference: np.ndarray, pad_id: int,
                     beta: float) -> Callable[[nn.Module], dict[str, float]]:
    def evaluate(model: nn.Module) -> dict[str, float]:
        scores = pair_scores(pair_logps(model, pairs, pad_id), reference, beta)
        return {"val_loss": float(scores["dpo_loss"].mean()),
                "val_reward_accuracy": float(scores["reward_accuracy"].mean()),
                "val_reward_margin": float(scores["reward_margin"].mean())}

    return evaluate


class PreferenceTask:
    """Prompt/chosen/rejected JSONL → a pretrained causal LM tuned with DPO."""

    name = "preference"
    val_metrics = ("val_loss", "val_reward_accuracy", "val_reward_margin")
    runs_with = "generate"
    quickstart_run = "quickstart-preference"
    report_kind = "metrics"

    def starter_config(self, data: str) -> Config:
        # model.arch pretrained and model.pretrained are the user's to name (prepare says so)
        return Config(task=self.name, data=DataConfig(path=data, format="jsonl"))

    def quickstart_config(self, fast: bool) -> Config:
        raise LmforgeError("task preference has no built-in data: train it on your own "
                           "prompt/chosen/rejected JSONL with `lmforge train`")

    def prepare(self, cfg: Config, run_dir: Path, resume: bool, log: Log) -> Prepared:
        if cfg.model.arch != "pretrained" or not cfg.model.pretrained:
            raise LmforgeError("task preference tunes a pretrained causal LM: set model.arch "
                               "pretrained and model.pretrained (a folder or hub id)")
        data = prepare_pairs(cfg.data)
        log(f"{render.data_summary(data.report, 'pairs')}")
        texts = {"train": data.train.texts, "val": data.val.texts, "test": data.test.texts}
        tokenizer = runs.tokenizer_for_run(cfg, data.train.texts, data.data_hash, run_dir,
                                           resume, log)
        if tokenizer.pad_id is None:
            raise LmforgeError(f"{cfg.model.pretrained}'s tokenizer has no padding token")
        template = chat_template(tokenizer)
        encoded = {name: encode_pairs(tokenizer, template, split, cfg.model.max_length)
                   for name, split in texts.items()}
        too_long = {name: split.too_long for name, split in encoded.items()}
        if sum(too_long.values()):
            log(f"context of {cfg.model.max_length} tokens: {sum(too_long.values())} pairs "
                "dropped (the prompt and a reply do not fit)")
        if not len(encoded["train"]):
            raise LmforgeError(f"{cfg.data.path}: no training pair fits the context of "
                               f"{cfg.model.max_length} tokens (model.max_length)")
        report = data.report | {"too_long": too_long,
                                "pairs_used": {n: len(s) for n, s in encoded.items()}}
        parts = {"pairs": encoded, "chat_template": template.source}
        return Prepared(cfg, data.data_hash, tokenizer, texts, report, parts)

    def build_model(self, run: Prepared, run_dir: Path, resume: bool, show_progress: bool,
                    log: Log) -> nn.Module:
        return generation.RECIPE.build_model(run, run_dir, resume, show_progress, log)

    def training(self, run: Prepared, model: nn.Module) -> TrainingPlan:
        """The reference's log-probabilities, from the model before its first step."""
        pairs, pad_id, beta = run.parts["pairs"], run.tokenizer.pad_id, run.cfg.preference.beta
        reference = {name: pair_logps(model, split, pad_id) for name, split in pairs.items()}
        run.parts["reference"] = reference  # the test's baseline, from the same model
        train = pairs["train"]
        return TrainingPlan(
            examples=range(len(train)),
            collate=make_pair_collate(train, pad_id, reference["train"]),
            loss=make_dpo_loss(beta),
            val_metrics=make_val_metrics(pairs["val"], reference["val"], pad_id, beta)
            if len(pairs["val"]) else None,
            metric_mode=metric_mode(run.cfg.train.early_stopping_metric),
            lengths=np.asarray([max(len(c.ids), len(r.ids))
                                for c, r in zip(train.chosen, train.rejected, strict=True)]),
        )

    def test(self, run: Prepared, model: nn.Module) -> Evaluated | None:
        pairs = run.parts["pairs"]["test"]
        if not len(pairs):
            return Evaluated({"n": 0, "note": "no test split"}, scored_test=False)
        reference = run.parts.get("reference", {}).get("test")
        if reference is None:  # resumed, or trained elsewhere: the base model again
            reference = pair_logps(self._reference(run.cfg, run.tokenizer), pairs,
                                   run.tokenizer.pad_id)
        policy = pair_logps(model, pairs, run.tokenizer.pad_id)
        return Evaluated(pairs_report(policy, reference, run.cfg.preference.beta,
                                      run.cfg.eval.bootstrap))

    @staticmethod
    def _reference(cfg: Config, tokenizer: TextTokenizer) -> nn.Module:
        return generation.build_model(cfg.model, tokenizer)

    def refold(self, run: Prepared, parts: dict[str, Any]) -> Prepared:
        raise LmforgeError("cross-validation (--cv) is not available for task preference")

    def summary(self, report: dict[str, Any]) -> dict[str, Any]:
        return {key: report.get(key) for key in ("reward_accuracy", "reward_margin",
                                                 "prefers_chosen")}

    def bundle_meta(self, run: Prepared, model: nn.Module, run_dir: Path) -> dict[str, Any]:
        meta = generation.RECIPE.bundle_meta(run, model, run_dir)
        return {**meta, "task": generation.RECIPE.name, "inputs": INPUTS,
                "chat_template": run.parts["chat_template"], "chat_data": True,
                "preference": run.cfg.preference.model_dump()}

    def load(self, bundle_dir: Path, meta: dict[str, Any], device: str) -> Generator:
        return open_lmforge_bundle(bundle_dir, device)

    def evaluate(self, generator: Generator, bundle_dir: Path, run_dir: Path | None,
                 data: str | None) -> dict[str, Any]:
        """The run's test pairs (read again from its data, which must be unchanged), or every
        pair of `data`; the reference is the run's base model, loaded again."""
        if run_dir is None or not (run_dir / "config.yaml").is_file():
            raise LmforgeError(f"{bundle_dir}: a preference bundle is evaluated from its run "
                               "directory (its config names the reference model)")
        cfg = load_config(run_dir / "config.yaml")
        tokenizer = generator.tokenizer
        template = chat_template(tokenizer, generator.meta.get("chat_template"))
        if data is None:
            prepared = prepare_pairs(cfg.data)
            if prepared.data_hash != generator.meta.get("run", {}).get("data_hash"):
                raise LmforgeError(f"{cfg.data.path} changed since the run; evaluate with "
                                   "--data FILE")
            texts, check = prepared.test.texts, {"source": cfg.data.path, "split": "test"}
        else:
            texts, check = read_pairs(data).texts, {"source": data}
        pairs = encode_pairs(tokenizer, template, texts, generator.max_length)
        if not len(pairs):
            raise LmforgeError(f"no pair to score in {data or cfg.data.path}")
        reference = pair_logps(self._reference(cfg, tokenizer), pairs, tokenizer.pad_id)
        policy = pair_logps(generator.model, pairs, tokenizer.pad_id)
        report = pairs_report(policy, reference, cfg.preference.beta, cfg.eval.bootstrap)
        report["data_check"] = {**check, "too_long": pairs.too_long}
        return report

    def predict(self, generator: Generator, texts: list[str]) -> tuple[list[dict], str]:
        raise LmforgeError("a preference-tuned model generates: use `lmforge generate`")

    def render(self, report: dict[str, Any], console: Console, title: str) -> None:
        table = Table(title=f"{title} ({report['n']} pairs, β {report['beta']})")
        for column in ("model", "reward accuracy", "reward margin", "prefers chosen",
                       "DPO loss"):
            table.add_column(column, justify="left" if column == "model" else "right")
        reference = report["baselines"]["reference"]
        table.add_row("tuned", *(render.with_interval(report, key) for key in
                                 ("reward_accuracy", "reward_margin", "prefers_chosen",
                                  "dpo_loss")))
        table.add_row("reference", "-", "-", render.with_interval(reference, "prefers_chosen"),
                      f"{reference['dpo_loss']:.3f}")
        console.print(table)

    def quickstart_notes(self, generator: Generator, bundle_dir: Path) -> list[str]:
        return []


RECIPE = PreferenceTask()
