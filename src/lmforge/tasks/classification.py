"""Text classification: the model for a config, batching, loss, probabilities, val metrics,
and the recipe the verbs run (data, model, training plan, test report beside the baselines,
bundle metadata, predictor)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from sklearn.metrics import f1_score
from torch import nn

import lmforge.render as render
import lmforge.runs as runs
from lmforge.config import (
    CleanConfig,
    Config,
    DataConfig,
    ModelConfig,
    fill_train_defaults,
    load_config,
    read_config_file,
)
from lmforge.data import (
    PreparedData,
    Split,
    detect_columns,
    prepare_classification_data,
    read_labelled,
)
from lmforge.data.conversations import conversation_kind
from lmforge.data.split import SplitRecord
from lmforge.errors import LmforgeError
from lmforge.evaluation import build_eval_report, render_table
from lmforge.evaluation.slices import render_slices, slice_report
from lmforge.models import EncoderClassifier, TransformerConfig, load_pretrained_classifier
from lmforge.models.classic import RNNClassifier, RNNConfig, TextCNNClassifier, TextCNNConfig
from lmforge.models.transformer import EncoderForMaskedLM
from lmforge.tasks.recipe import (
    Evaluated,
    Log,
    Prepared,
    TrainingPlan,
    bundle_meta,
    open_lmforge_bundle,
)
from lmforge.tokenization import TextTokenizer, TokenCache
from lmforge.training import distributed, fit, seed_everything
from lmforge.training.checkpoint import last_step, load_checkpoint

if TYPE_CHECKING:
    from lmforge.bundle import Predictor, TextClassifier

# Classification bundles that are no single network: tasks/classifiers.py checks and loads them.
OTHER_ARCHS = ("tfidf_logreg", "ensemble")
# The most confident wrong predictions on the test split that test_predictions.jsonl explains.
EXPLAINED_ERRORS = 5

Batch = dict[str, torch.Tensor]


@dataclass
class TokenizedSplit(Sequence):
    """Token ids per text and label indices (or a regression's targets); item i is (ids,
    label)."""

    ids: list[np.ndarray]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int | float]:
        return self.ids[i], self.labels[i].item()


def pad_batch(ids: list[np.ndarray], pad_id: int) -> Batch:
    """Pad to the longest sequence in the batch, not to max_length: short texts stay cheap."""
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, seq in enumerate(ids):
        input_ids[row, : len(seq)] = torch.from_numpy(seq.astype(np.int64))
        attention_mask[row, : len(seq)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def make_collate(
    pad_id: int, mask_id: int | None = None, token_dropout: float = 0.0,
    special_ids: list[int] | None = None, label_dtype: torch.dtype = torch.long,
) -> Callable[[list[tuple[np.ndarray, int]]], Batch]:
    """Batches for training (labels of `label_dtype`: class indices, or float targets). With
    token_dropout, that share of each text's tokens is replaced by [MASK]: the model cannot
    lean on any single token, which regularises small datasets."""
    special = torch.tensor(sorted(set(special_ids or [pad_id])), dtype=torch.long)

    def collate(items: list[tuple[np.ndarray, int]]) -> Batch:
        batch = pad_batch([ids for ids, _ in items], pad_id)
        batch["labels"] = torch.tensor([label for _, label in items], dtype=label_dtype)
        if token_dropout and mask_id is not None:
            ids = batch["input_ids"]
            drop = (torch.rand(ids.shape) < token_dropout) & ~torch.isin(ids, special)
            batch["input_ids"] = ids.masked_fill(drop, mask_id)
        return batch

    return collate


# The RNN's and the TextCNN's schedule where the config gives none: shallow networks whose
# embeddings start from scratch learn faster at a higher rate than the Transformer's 5e-4
# (bench/RESULTS.md, "Text encoders: the RNN's and the TextCNN's defaults").
CLASSIC_TEXT_TRAIN_DEFAULTS: dict[str, Any] = {"lr": 5e-3}


def build_model(cfg: ModelConfig, tokenizer: TextTokenizer, labels: list[str]) -> nn.Module:
    if cfg.arch == "pretrained":
        return load_pretrained_classifier(
            cfg.pretrained, labels, cfg.revision, cfg.trust_remote_code, cfg.adapter
        )
    if cfg.arch == "rnn":
        return RNNClassifier(RNNConfig(tokenizer.vocab_size, len(labels), cfg.d_model,
                                       cfg.n_layers, cfg.rnn_cell, cfg.dropout, tokenizer.pad_id,
                                       pooling="max_mean"))
    if cfg.arch == "textcnn":
        return TextCNNClassifier(TextCNNConfig(tokenizer.vocab_size, len(labels), cfg.d_model,
                                               list(cfg.kernel_sizes), cfg.dropout,
                                               tokenizer.pad_id))
    return EncoderClassifier(architecture(cfg, tokenizer, labels))


def architecture(
    cfg: ModelConfig, tokenizer: TextTokenizer, labels: list[str]
) -> TransformerConfig:
    return TransformerConfig(
        vocab_size=tokenizer.vocab_size,
        n_classes=len(labels),
        max_length=cfg.max_length,
        d_model=cfg.d_model,
        n_layers=cfg.n_layers,
        n_heads=cfg.n_heads,
        d_ff=cfg.d_ff,
        dropout=cfg.dropout,
        pooling=cfg.pooling,
        pad_id=tokenizer.pad_id,
    )


def balanced_class_weights(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    """n / (k * count): each class contributes equally to the loss (sklearn's 'balanced')."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    weights = len(labels) / (n_classes * np.maximum(counts, 1))
    return torch.tensor(weights, dtype=torch.float32)


def make_loss(weights: torch.Tensor | None = None) -> Callable[[nn.Module, Batch], torch.Tensor]:
    def loss_fn(model: nn.Module, batch: Batch) -> torch.Tensor:
        logits = model(batch["input_ids"], batch["attention_mask"])
        w = weights.to(logits.device) if weights is not None else None
        return F.cross_entropy(logits.float(), batch["labels"], weight=w)

    return loss_fn


@torch.no_grad()
def predict_logits(
    model: nn.Module, ids: list[np.ndarray], pad_id: int, batch_size: int = 64
) -> np.ndarray:
    """Logits (n, classes) in input order. Batches are formed from length-sorted texts, so
    padding is small; the order is deterministic, so the same texts give the same numbers."""
    if not ids:
        return np.zeros((0, 0), dtype=np.float32)
    was_training = model.training
    model.eval()
    # a model without torch parameters (an ONNX Runtime session) takes its inputs on the CPU
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    order = np.argsort([len(x) for x in ids], kind="stable")
    out: list[np.ndarray | None] = [None] * len(ids)
    for start in range(0, len(ids), batch_size):
        chunk = order[start : start + batch_size]
        batch = pad_batch([ids[i] for i in chunk], pad_id)
        logits = model(batch["input_ids"].to(device), batch["attention_mask"].to(device))
        for row, i in enumerate(chunk):
            out[i] = logits[row].float().cpu().numpy()
    model.train(was_training)
    return np.stack(out)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def make_val_metrics(split: TokenizedSplit, pad_id: int) -> Callable[[nn.Module], dict[str, float]]:
    """The evaluation the loop runs every eval_every steps: val loss, accuracy and macro-F1."""

    def evaluate(model: nn.Module) -> dict[str, float]:
        logits = predict_logits(model, split.ids, pad_id)
        loss = F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(split.labels).long())
        pred = logits.argmax(axis=1)
        return {
            "val_loss": float(loss),
            "accuracy": float((pred == split.labels).mean()),
            "f1_macro": float(f1_score(split.labels, pred, average="macro", zero_division=0)),
        }

    return evaluate


# --- the recipe: what the verbs call ----------------------------------------------------------


class ClassificationTask:
    """Labelled texts → lmforge's encoder or a pretrained encoder, measured beside majority and
    TF-IDF + logistic regression; a bundle loads into a Predictor."""

    name = "classification"
    val_metrics = ("f1_macro", "accuracy", "val_loss")  # what make_val_metrics reports
    runs_with = "predict"  # the verb that runs its bundles
    quickstart_run = "quickstart"  # runs/<this>: where `lmforge quickstart` writes
    report_kind = "classification"  # report.html's views (evaluation.html_report.SECTIONS)

    def configure(self, cfg: Config) -> None:
        """Refuse a model or tokenizer that cannot classify text; the RNN's and the TextCNN's
        own schedule where the config gives none."""
        model, tokenizer = cfg.model, cfg.tokenizer
        if model.arch == "gpt":
            raise ValueError("model.arch 'gpt' is a decoder for task generation; "
                             "classification uses 'transformer' or 'pretrained'")
        if model.arch in ("mlp", "cnn"):
            reads = "feature tables" if model.arch == "mlp" else "images"
            raise ValueError(f"model.arch '{model.arch}' reads {reads}, and this config's data "
                             f"is text (data.inputs '{cfg.data.inputs}')")
        if tokenizer.kind == "byte_bpe":
            raise ValueError("tokenizer.kind 'byte_bpe' is for task generation; "
                             "classification uses bpe, wordpiece or char")
        if model.arch == "auto" and cfg.data.split.val == 0:
            raise ValueError("model.arch 'auto' picks its model on the validation split; "
                             "set data.split.val above 0")
        if model.arch in ("rnn", "textcnn"):
            fill_train_defaults(cfg.train, CLASSIC_TEXT_TRAIN_DEFAULTS)

    def starter_config(self, data: str) -> Config:
        """Its columns detected, and model.arch auto: the best on validation of lmforge's
        encoder, TF-IDF + logistic regression and their fusion."""
        if conversation_kind(data) is not None:
            raise LmforgeError(f"{data} holds chat or instruction conversations, which task "
                               "generation trains on: pass --task generation")
        return load_config({"task": self.name, "data": {"path": data, **detect_columns(data)},
                            "model": {"arch": "auto"}})

    def quickstart_config(self, fast: bool) -> Config:
        """The built-in sentiment corpus; model.arch auto with lmforge's encoder at
        classification's defaults (config.TASK_MODEL_DEFAULTS, the ones `lmforge init`
        writes) on a schedule that fits the time budget."""
        steps = 400 if fast else 1500
        return load_config({
            "model": {"arch": "auto"},
            "train": {"max_steps": steps, "eval_every": steps // 5, "batch_size": 32},
        })

    def prepare(self, cfg: Config, run_dir: Path, resume: bool, log: Log) -> Prepared:
        data = prepare_classification_data(cfg.data, cfg.eval.slices)
        log(f"{render.data_summary(data.report)}; labels {data.label_names}")
        tokenizer = runs.tokenizer_for_run(cfg, data.train.texts, data.data_hash, run_dir,
                                           resume, log)
        encoded = distributed.on_main(lambda: _encode_splits(cfg, data, tokenizer, log))
        splits, truncated = encoded or _encode_splits(cfg, data, tokenizer, lambda _: None)
        report = dict(data.report)
        report["length_tokens"] = _quantiles(len(x) for s in splits.values() for x in s.ids)
        report["truncated_to_max_length"] = truncated
        texts = {"train": data.train.texts, "val": data.val.texts, "test": data.test.texts}
        own = {"data": data, "splits": splits, "run_dir": run_dir, "log": log}  # arch auto's too
        labels = {"train": data.train.labels, "val": data.val.labels, "test": data.test.labels}
        return Prepared(cfg, data.data_hash, tokenizer, texts, report, own, labels)

    def build_model(
        self, run: Prepared, run_dir: Path, resume: bool, show_progress: bool, log: Log
    ) -> nn.Module:
        cfg = run.cfg
        seed_everything(cfg.train.seed)
        model = build_model(cfg.model, run.tokenizer, run.parts["data"].label_names)
        seed_everything(cfg.train.seed + distributed.rank())  # distinct dropout per rank
        if cfg.classification.pretrain_steps and cfg.model.arch in ("transformer", "auto"):
            _pretrain(run, model, run_dir / "pretrain", resume, show_progress, log)
        return model

    def training(self, run: Prepared, model: nn.Module) -> TrainingPlan:
        cfg, splits, tokenizer = run.cfg, run.parts["splits"], run.tokenizer
        weights = None
        if cfg.classification.class_weights == "balanced":
            weights = balanced_class_weights(splits["train"].labels,
                                             len(run.parts["data"].label_names))
        return TrainingPlan(
            examples=splits["train"],
            collate=make_collate(tokenizer.pad_id, tokenizer.mask_id,
                                 cfg.classification.token_dropout, tokenizer.special_ids),
            loss=make_loss(weights),
            val_metrics=make_val_metrics(splits["val"], tokenizer.pad_id)
            if len(splits["val"]) else None,
            metric_mode="min" if "loss" in cfg.train.early_stopping_metric else "max",
            lengths=np.array([len(x) for x in splits["train"].ids]),
        )

    def test(self, run: Prepared, model: nn.Module) -> Evaluated | None:
        data = run.parts["data"]
        if run.cfg.model.arch == "auto":  # the candidates, fused; the best on val shipped
            from lmforge.tasks import auto  # it builds on bundle.py

            return auto.select(self, run, model, run.parts["run_dir"], run.parts["log"],
                               lambda shipped, split: _evaluate_split(shipped, split, data.train,
                                                                      run.cfg))
        if not data.test.texts:
            return None
        from lmforge.bundle import Predictor  # bundle.py builds on this module's functions

        predictor = Predictor(model, run.tokenizer, self.bundle_meta(run, model, None))
        return _evaluate_split(predictor, data.test, data.train, run.cfg)

    def refold(self, run: Prepared, parts: dict[str, Any]) -> Prepared:
        if run.cfg.model.arch == "auto":  # its selection and its refit both need a val split
            raise LmforgeError("--cv needs a named model.arch (transformer or pretrained): "
                               "model.arch auto chooses on the validation split itself")
        data, splits = run.parts["data"], run.parts["splits"]
        rows = Split(data.train.texts + data.val.texts, data.train.labels + data.val.labels,
                     {name: values + data.val.columns[name]
                      for name, values in data.train.columns.items()})
        encoded = TokenizedSplit(splits["train"].ids + splits["val"].ids,
                                 np.concatenate([splits["train"].labels, splits["val"].labels]))
        new_rows = {"test": data.test, **{name: rows.take(parts[name]) for name in parts}}
        new_splits = {"test": splits["test"], **{
            name: TokenizedSplit([encoded.ids[i] for i in parts[name]], encoded.labels[parts[name]])
            for name in parts}}
        data = replace(data, train=new_rows["train"], val=new_rows["val"], test=new_rows["test"])
        return replace(run, split_texts={name: split.texts for name, split in new_rows.items()},
                       labels={name: split.labels for name, split in new_rows.items()},
                       parts={**run.parts, "data": data, "splits": new_splits})

    def summary(self, report: dict[str, Any]) -> dict[str, Any]:
        return {key: report[key] for key in ("n", "accuracy", "f1_macro", "shipped")
                if key in report}

    def bundle_meta(self, run: Prepared, model: nn.Module, run_dir: Path | None) -> dict:
        meta = bundle_meta(run, model, run_dir)
        labels = {"labels": run.parts["data"].label_names,
                  "label_column": run.cfg.data.label_column}
        return {**meta, **labels}

    def load(self, bundle_dir: Path, meta: dict[str, Any], device: str) -> TextClassifier:
        if meta.get("arch") in OTHER_ARCHS:  # TF-IDF, an ensemble: no single network
            from lmforge.tasks.classifiers import load_bundle  # it builds on bundle.py

            return load_bundle(bundle_dir, meta, device)
        return open_lmforge_bundle(bundle_dir, device)

    def evaluate(
        self, predictor: Predictor, bundle_dir: Path, run_dir: Path | None, data: str | None
    ) -> dict[str, Any]:
        split, train, cfg, check = evaluation_split(predictor.meta, bundle_dir, run_dir, data)
        report = _evaluate_split(predictor, split, train, cfg).report
        report["data_check"] = check
        return report

    def predict(self, predictor: Predictor, texts: list[str]) -> tuple[list[dict], str]:
        predictions = predictor.predict_batch(texts)
        return predictions.rows, (f"{len(texts)} texts predicted; {predictions.n_truncated} "
                                  f"truncated to {predictor.max_length} tokens")

    def render(self, report: dict[str, Any], console: Console, title: str) -> None:
        render_table(report, console, title=title)
        render_slices(report, console)

    def quickstart_notes(self, predictor: Predictor, bundle_dir: Path) -> list[str]:
        return []


def evaluation_split(
    meta: dict[str, Any], bundle_dir: Path, run_dir: Path | None, data: str | None
) -> tuple[Split, Split | None, Config, dict[str, Any]]:
    """What `lmforge evaluate` scores a text bundle on: (the rows, the run's training rows for
    the baselines or None, the run's config, the data check). The run's own test split (data
    None), or the labelled file `data` less any text the run trained on."""
    cfg = load_config(read_config_file(run_dir / "config.yaml")) if run_dir else Config()
    record = runs.read_split_record(run_dir)
    train, check = None, {}
    if run_dir is not None:
        train, test, check = _run_splits(cfg, run_dir, record, data is None)
    if data is not None:
        data_cfg = DataConfig(text_column=meta["text_column"],
                              label_column=meta["label_column"],
                              clean=CleanConfig(**meta["clean"]))
        split, _ = read_labelled(data, data_cfg, cfg.eval.slices)
        check = {"source": data, "split_record": record is not None}
        if record is not None:
            unseen, check = runs.leak_check(split.texts, record, data, run_dir)
            split = split.take(unseen)
    elif run_dir is None:
        raise LmforgeError(f"{bundle_dir} has no run directory with a test split; "
                           "pass --data FILE with labelled texts")
    elif not test.texts:
        raise LmforgeError(f"run {run_dir} has no test split; pass --data FILE")
    else:
        split = test
    return split, train, cfg, check


def _quantiles(values: Iterable[int]) -> dict[str, float]:
    arr = np.fromiter(values, dtype=np.int64)
    if arr.size == 0:
        return {}
    q = np.quantile(arr, [0.5, 0.9, 0.99])
    return {"min": int(arr.min()), "p50": float(q[0]), "p90": float(q[1]), "p99": float(q[2]),
            "max": int(arr.max())}


def _encode_splits(
    cfg: Config, data: PreparedData, tokenizer: TextTokenizer, log: Log
) -> tuple[dict[str, TokenizedSplit], dict[str, int]]:
    ids, truncated = encode_split_ids(cfg, data, tokenizer, log)
    index = {label: i for i, label in enumerate(data.label_names)}
    out = {}
    for name, split in (("train", data.train), ("val", data.val), ("test", data.test)):
        labels = np.array([index[label] for label in split.labels], dtype=np.int64)
        out[name] = TokenizedSplit(ids[name], labels)
    return out, truncated


def encode_split_ids(
    cfg: Config, data: PreparedData, tokenizer: TextTokenizer, log: Log
) -> tuple[dict[str, list[np.ndarray]], dict[str, int]]:
    """Each split's token ids and how many texts were cut to max_length, from the shared
    tokenization cache when the same data was tokenized the same way before."""
    cache = TokenCache(cfg.data.cache_dir)
    key = cache.key(data.data_hash, cfg.data.clean, cfg.data.split, tokenizer.fingerprint(),
                    cfg.model.max_length, data.label_names)
    splits = {"train": data.train, "val": data.val, "test": data.test}
    hit = cache.load(key)
    if hit is not None:
        ids, truncated = hit
        log(f"tokenization: cache hit, not tokenizing again ({cache.root / key}.npz)")
    else:
        ids, truncated = {}, {}
        for name, split in splits.items():
            encoded = tokenizer.encode(split.texts, cfg.model.max_length)
            ids[name], truncated[name] = encoded.ids, encoded.n_truncated
        cache.save(key, ids, truncated)
    return ids, truncated


def _pretrain(
    run: Prepared, model: nn.Module, pretrain_dir: Path, resume: bool, show_progress: bool,
    log: Log,
) -> None:
    """Masked-LM pre-training of `model`'s encoder on the training texts (never val or test).
    It is a run of its own under run_dir/pretrain, with checkpoints, so a resume finishes it
    or skips it when it is complete."""
    from lmforge.tasks.pretraining import make_mlm_collate, mlm_loss  # it builds on pad_batch

    cfg, own, tokenizer = run.cfg.train, run.cfg.classification, run.tokenizer
    if tokenizer.mask_id is None:
        raise LmforgeError("classification.pretrain_steps needs a tokenizer with a [MASK] token")
    mlm = EncoderForMaskedLM(model.encoder, model.config)
    pretrain_cfg = cfg.model_copy(update={
        "max_steps": own.pretrain_steps, "lr": own.pretrain_lr or cfg.lr,
        "eval_every": max(1, own.pretrain_steps // 5), "early_stopping_patience": None,
    })
    done = last_step(pretrain_dir) if resume else None
    if done is not None and done >= own.pretrain_steps:
        load_checkpoint(pretrain_dir / "checkpoints" / "last", mlm, with_state=False)
        log(f"pre-training: complete in {pretrain_dir}, not repeated")
        return
    log(f"pre-training: {own.pretrain_steps} masked-LM steps on the training texts")
    if distributed.is_main():
        pretrain_dir.mkdir(parents=True, exist_ok=True)
    train_ids = run.parts["splits"]["train"]
    collate = make_mlm_collate(tokenizer.pad_id, tokenizer.mask_id, tokenizer.vocab_size,
                               [tokenizer.pad_id, tokenizer.mask_id, *tokenizer.special_ids])
    fit(mlm, train_ids, collate, mlm_loss, None, pretrain_cfg, pretrain_dir,
        resume=done is not None, show_progress=show_progress,
        lengths=np.array([len(x) for x in train_ids.ids]))


def _evaluate_split(
    predictor: Predictor, split: Split, train: Split | None, cfg: Config
) -> Evaluated:
    """Metrics on `split` beside the baselines (fitted on `train`), and per-text predictions."""
    predictions = predictor.predict_batch(split.texts)
    probs = np.array(
        [[row["probs"][label] for label in predictor.labels] for row in predictions.rows]
    )
    use_baselines = cfg.eval.baselines and train is not None
    report = build_eval_report(
        gold=split.labels,
        pred=[row["label"] for row in predictions.rows],
        probs=probs,
        labels=predictor.labels,
        train_texts=train.texts if train else [],
        train_labels=train.labels if train else [],
        test_texts=split.texts,
        config=cfg.eval.model_copy(update={"baselines": use_baselines}),
        seed=cfg.train.seed,
    )
    from lmforge.tasks.classifiers import member_leaderboard  # it builds on bundle.py

    if split.columns:
        report |= slice_report(split.labels, [row["label"] for row in predictions.rows],
                               predictor.labels, split.columns, cfg.eval.bootstrap,
                               cfg.train.seed)
    board = member_leaderboard(predictor, split.labels, split.texts, cfg.eval.bootstrap,
                               cfg.train.seed)
    if board is not None:  # an ensemble: each member beside it
        report["leaderboard"] = board
    rows = [
        {"text": row["text"], "gold": gold, "predicted": row["label"], "probs": row["probs"]}
        for row, gold in zip(predictions.rows, split.labels, strict=True)
    ]
    _explain_worst_errors(predictor, rows)
    return Evaluated(report, rows)


def _explain_worst_errors(predictor: Predictor, rows: list[dict[str, Any]]) -> None:
    """The most confident wrong predictions gain their attributions (the HTML report shows
    them): EXPLAINED_ERRORS of them, as each costs a few dozen passes."""
    wrong = [row for row in rows if row["gold"] != row["predicted"]]
    wrong = sorted(wrong, key=lambda row: -row["probs"][row["predicted"]])[:EXPLAINED_ERRORS]
    for row, found in zip(wrong, predictor.explain([row["text"] for row in wrong]), strict=True):
        row["attributions"] = found


def _run_splits(
    cfg: Config, run_dir: Path, record: SplitRecord | None, need_test: bool
) -> tuple[Split, Split, dict[str, Any]]:
    """(train, test, data check) of a run as at training time. With splits.json: the rows of
    the run's data whose texts each split held, in split order, and no text of train or val
    in test; refused (with need_test) when test texts are missing. Without it (older runs):
    the data split again."""
    source = cfg.data.path
    if record is None:
        prepared = prepare_classification_data(cfg.data, cfg.eval.slices)
        return (prepared.train, prepared.test,
                runs.unrecorded_check(run_dir, source, prepared.data_hash))
    rows, report = read_labelled(source, cfg.data, cfg.eval.slices)
    test_rows, missing = record.locate("test", rows.texts)
    test = rows.take(test_rows)
    unseen = record.unseen(test.texts)
    check = runs.recorded_check(record, source, report["data_hash"], missing,
                           len(test.texts) - len(unseen))
    if need_test:
        runs.refuse_changed_test_split(check)
    return rows.take(record.locate("train", rows.texts)[0]), test.take(unseen), check


RECIPE = ClassificationTask()
