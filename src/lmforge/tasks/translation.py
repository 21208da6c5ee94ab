"""Translation: sentence pairs → lmforge's encoder–decoder Transformer, trained with label
smoothing on one byte-level BPE vocabulary shared by both sides; greedy or beam search
(lmforge.decoding); BLEU and chrF beside copying the source and TF-IDF retrieval
(lmforge.evaluation.translation); the Translator a bundle loads into; and the recipe.

A target is the start token, its tokens, and the end token (the tokenizer's end-of-text token
plays both parts); the decoder reads it shifted by one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model
from torch import nn

import lmforge.runs as runs
from lmforge.config import (
    CleanConfig,
    Config,
    DataConfig,
    TranslationConfig,
    describe_setting,
    fill_train_defaults,
    load_config,
    read_config_file,
)
from lmforge.data.clean import clean_text
from lmforge.data.pairs import (
    BUILTIN_HSK,
    Pairs,
    PreparedPairs,
    aligned_partner,
    clean_pairs,
    prepare_pairs,
    read_pairs,
)
from lmforge.data.records import Records
from lmforge.data.sources import TABLE_FORMATS, read_table, resolve_format
from lmforge.data.split import SplitRecord
from lmforge.decoding import Hypothesis, beam_search, greedy_search
from lmforge.errors import LmforgeError
from lmforge.evaluation.translation import (
    copy_source,
    render_translation_table,
    retrieval_translations,
    target_tokenize,
    translation_scores,
)
from lmforge.models import EncoderDecoder, PretrainedSeq2SeqLM, Seq2SeqConfig
from lmforge.models.onnx_translation import OnnxEncoderDecoder, onnx_files
from lmforge.tasks import translation_pretrained as pretrained_model
from lmforge.tasks.classification import pad_batch
from lmforge.tasks.recipe import (
    Evaluated,
    Log,
    Prepared,
    TrainingPlan,
    bundle_meta,
)
from lmforge.tokenization import PAD, TextTokenizer
from lmforge.training import distributed, resolve_device, seed_everything

Batch = dict[str, torch.Tensor]
IGNORE = -100  # target positions the loss skips (padding)
VAL_SENTENCES = 400  # validation translates at most this many sentences each evaluation
EXAMPLES = 5  # test sentences shown with reference and output in the report
WEIGHTS = "model.safetensors"  # the bundle's weights (pipeline's save_bundle writes them)
QUICKSTART_SOURCES = ["我每天早上喝一杯咖啡。", "他们明天去北京。", "这本书很有意思。"]


def with_pad_token(tokenizer: TextTokenizer) -> TextTokenizer:
    """The byte-level BPE tokenizer with a padding token of its own: its end-of-text token
    starts and ends every target, so it cannot be the padding the embedding ignores."""
    if tokenizer.backend.token_to_id(PAD) is None:
        tokenizer.backend.add_special_tokens([PAD])
    return TextTokenizer(tokenizer.backend)


def architecture(cfg: Config, tokenizer: TextTokenizer) -> Seq2SeqConfig:
    model = cfg.model
    return Seq2SeqConfig(
        vocab_size=tokenizer.vocab_size, max_length=model.max_length, d_model=model.d_model,
        n_layers=model.n_layers, n_heads=model.n_heads, d_ff=model.d_ff, dropout=model.dropout,
        pad_id=tokenizer.pad_id, bos_id=tokenizer.eos_id, eos_id=tokenizer.eos_id,
    )


def encode_sources(tokenizer: TextTokenizer, texts: list[str], max_length: int) -> list[np.ndarray]:
    """Each source's tokens, cut to max_length."""
    return [ids[:max_length] for ids in tokenizer.encode_plain(texts)]


def encode_targets(tokenizer: TextTokenizer, texts: list[str], max_length: int) -> list[np.ndarray]:
    """Each target as start token + tokens + end token, cut so the decoder's input (all but the
    last) fits max_length."""
    eos = np.array([tokenizer.eos_id], dtype=np.int64)
    return [np.concatenate([eos, ids[:max_length - 1], eos])
            for ids in tokenizer.encode_plain(texts)]


def count_truncated(
    tokenizer: TextTokenizer, pairs: Pairs, max_length: int, start: int | None = None
) -> int:
    """Pairs with a side cut by encode_pairs."""
    if start is not None:
        return pretrained_model.count_truncated(tokenizer, pairs.sources, pairs.targets,
                                                max_length)
    sources, targets = tokenizer.encode_plain(pairs.sources), tokenizer.encode_plain(pairs.targets)
    return sum(1 for s, t in zip(sources, targets, strict=True)
               if len(s) > max_length or len(t) > max_length - 1)


# Translation's schedule where the config gives none: a model trained from scratch on a few
# thousand pairs needs many epochs (bench/RESULTS.md, "Translation"); on a larger corpus
# early stopping on validation BLEU ends it sooner (6 evaluations without a better one).
TRANSLATION_TRAIN_DEFAULTS: dict[str, Any] = {
    "lr": 2e-3, "batch_size": 64, "epochs": 60, "eval_every": 250, "warmup_ratio": 0.05,
    "early_stopping_patience": 6,
}
TRANSLATION_VOCAB_SIZE = 2000  # one vocabulary for both sides of a few thousand pairs


@dataclass
class EncodedPairs(Sequence):
    """Token ids of each pair's source and target; item i is (source ids, target ids)."""

    sources: list[np.ndarray]
    targets: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.sources[i], self.targets[i]


def encode_pairs(
    tokenizer: TextTokenizer, pairs: Pairs, max_length: int, start: int | None = None
) -> EncodedPairs:
    """The pairs' ids for lmforge's encoder–decoder or, with the decoder's `start` token, for a
    pretrained seq2seq model (its own tokenizer's ids, translation_pretrained)."""
    if start is not None:
        return EncodedPairs(
            pretrained_model.encode_sources(tokenizer, pairs.sources, max_length),
            pretrained_model.encode_targets(tokenizer, pairs.targets, max_length, start))
    return EncodedPairs(encode_sources(tokenizer, pairs.sources, max_length),
                        encode_targets(tokenizer, pairs.targets, max_length))


def make_collate(pad_id: int) -> Callable[[list[tuple[np.ndarray, np.ndarray]]], Batch]:
    def collate(items: list[tuple[np.ndarray, np.ndarray]]) -> Batch:
        source = pad_batch([src for src, _ in items], pad_id)
        target_in = pad_batch([tgt[:-1] for _, tgt in items], pad_id)
        target_out = pad_batch([tgt[1:] for _, tgt in items], pad_id)
        labels = target_out["input_ids"].masked_fill(target_out["attention_mask"] == 0, IGNORE)
        return {"src_ids": source["input_ids"], "src_mask": source["attention_mask"],
                "tgt_ids": target_in["input_ids"], "labels": labels}

    return collate


def drop_source_tokens(src_mask: torch.Tensor, rate: float) -> torch.Tensor:
    """The source mask with each token hidden at `rate` (word dropout on the source, as for
    low-resource translation in Sennrich & Zhang 2019): the encoder and the cross-attention
    no longer see it. A source keeps all its tokens when none would be left."""
    kept = src_mask * (torch.rand(src_mask.shape, device=src_mask.device) >= rate)
    return torch.where(kept.any(dim=1, keepdim=True), kept, src_mask)


def make_loss(
    label_smoothing: float, source_dropout: float = 0.0
) -> Callable[[nn.Module, Batch], torch.Tensor]:
    """Label-smoothed cross-entropy of the next target tokens; in training, `source_dropout`
    of the source tokens hidden (drop_source_tokens)."""

    def loss_fn(model: nn.Module, batch: Batch) -> torch.Tensor:
        src_mask = batch["src_mask"]
        if source_dropout and model.training:
            src_mask = drop_source_tokens(src_mask, source_dropout)
        logits = model(batch["src_ids"], src_mask, batch["tgt_ids"])  # (B, T, vocab)
        return F.cross_entropy(logits.flatten(0, 1).float(), batch["labels"].flatten(),
                               ignore_index=IGNORE, label_smoothing=label_smoothing)

    return loss_fn


# --- the predictor ------------------------------------------------------------------------------


@dataclass
class Translation:
    text: str
    source_tokens: int
    output_tokens: int  # generated, the end token included
    finished: bool  # False: cut at max_new_tokens or model.max_length


def decoding_settings(base: dict[str, Any], **given: Any) -> TranslationConfig:
    """The bundle's decoding defaults with the values given (None: not given); a bad value
    raises LmforgeError naming it (the same line for the CLI, the API and the server)."""
    values = {key: value for key, value in given.items() if value is not None}
    try:
        return TranslationConfig(**{**base, **values})
    except ValidationError as error:
        raise LmforgeError(describe_setting(error)) from None


class Translator:
    """A loaded translation bundle: `translate(texts)` cleans each text as training did and
    returns one Translation per text, in order; beam_size, length_penalty, max_new_tokens and
    no_repeat_ngram default to the bundle's (the run's `translation` section)."""

    def __init__(self, model: nn.Module, tokenizer: TextTokenizer, meta: dict[str, Any]) -> None:
        self.model = model.eval()
        self.tokenizer, self.meta = tokenizer, meta
        self.max_length = meta.get("max_length") or model.config.max_length
        self.clean = CleanConfig(**meta["clean"])
        self.defaults = meta.get("translation", {})

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Tokens of each cleaned text as the model reads it (what the server meters)."""
        cleaned = [clean_text(text, self.clean) for text in texts]
        return [len(ids) for ids in self._encode(cleaned)]

    def translate(
        self, texts: list[str], beam_size: int | None = None, length_penalty: float | None = None,
        max_new_tokens: int | None = None, batch_size: int = 32,
        no_repeat_ngram: int | None = None,
    ) -> list[Translation]:
        settings = decoding_settings(self.defaults, beam_size=beam_size,
                                     length_penalty=length_penalty, max_new_tokens=max_new_tokens,
                                     no_repeat_ngram=no_repeat_ngram)
        cleaned = [clean_text(text, self.clean) for text in texts]
        ids = self._encode(cleaned)
        out = [Translation("", 0, 0, True)] * len(texts)  # an empty text translates to ""
        order = [i for i in np.argsort([len(x) for x in ids], kind="stable") if len(ids[i])]
        device = next(self.model.parameters()).device
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            batch = pad_batch([ids[i] for i in rows], self.tokenizer.pad_id)
            src, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
            for i, hypothesis in zip(rows, self._search(src, mask, settings), strict=True):
                out[i] = Translation(self._decode(hypothesis.tokens),
                                     len(ids[i]), len(hypothesis.tokens) + hypothesis.finished,
                                     hypothesis.finished)
        return out

    def _encode(self, cleaned: list[str]) -> list[np.ndarray]:
        return encode_sources(self.tokenizer, cleaned, self.max_length)

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens).strip()

    def _search(
        self, src: torch.Tensor, mask: torch.Tensor, settings: TranslationConfig
    ) -> list[Hypothesis]:
        if settings.beam_size == 1:
            return greedy_search(self.model, src, mask, settings.max_new_tokens,
                                 no_repeat_ngram=settings.no_repeat_ngram)
        return beam_search(self.model, src, mask, settings.max_new_tokens, settings.beam_size,
                           settings.length_penalty, no_repeat_ngram=settings.no_repeat_ngram)


class PretrainedTranslator(Translator):
    """A pretrained seq2seq model's Translator: its own tokenizer, its own generate()."""

    def _encode(self, cleaned: list[str]) -> list[np.ndarray]:
        return pretrained_model.encode_sources(self.tokenizer, cleaned, self.max_length)

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.hf.decode(tokens, skip_special_tokens=True).strip()

    def _search(
        self, src: torch.Tensor, mask: torch.Tensor, settings: TranslationConfig
    ) -> list[Hypothesis]:
        return pretrained_model.generate(self.model, src, mask,
                                         min(settings.max_new_tokens, self.max_length),
                                         settings.beam_size, settings.length_penalty,
                                         settings.no_repeat_ngram)


def make_translator(model: nn.Module, tokenizer: TextTokenizer, meta: dict[str, Any]) -> Translator:
    """The Translator of lmforge's encoder–decoder, or of a pretrained seq2seq model."""
    kind = PretrainedTranslator if isinstance(model, PretrainedSeq2SeqLM) else Translator
    return kind(model, tokenizer, meta)


def translate_texts(model: nn.Module, tokenizer: TextTokenizer, meta: dict[str, Any],
                    texts: list[str], **settings: Any) -> list[str]:
    """The texts a model in training (or a loaded one) translates them into."""
    was_training = model.training
    try:
        return [t.text for t in make_translator(model, tokenizer, meta).translate(texts,
                                                                                   **settings)]
    finally:
        model.train(was_training)


def make_val_metrics(
    run: Prepared, split: EncodedPairs, pairs: Pairs, loss_fn: Callable[[nn.Module, Batch], Any],
) -> Callable[[nn.Module], dict[str, float]]:
    """What the loop logs each evaluation: val loss, and BLEU and chrF of greedy translations
    of (up to VAL_SENTENCES) val sentences."""
    collate, meta = make_collate(run.tokenizer.pad_id), _meta(run.cfg)
    n = min(VAL_SENTENCES, len(pairs.sources))
    tokenize = target_tokenize(pairs.targets)

    @torch.no_grad()
    def evaluate(model: nn.Module) -> dict[str, float]:
        device = next(model.parameters()).device
        total, count = 0.0, 0
        for start in range(0, len(split), 64):
            batch = collate([split[i] for i in range(start, min(start + 64, len(split)))])
            batch = {key: value.to(device) for key, value in batch.items()}
            tokens = int((batch["labels"] != IGNORE).sum())
            total += float(loss_fn(model, batch)) * tokens
            count += tokens
        outputs = translate_texts(model, run.tokenizer, meta, pairs.sources[:n], beam_size=1)
        scores = translation_scores(outputs, pairs.targets[:n], tokenize, 0)
        return {"val_loss": total / max(count, 1), "val_bleu": scores["bleu"],
                "val_chrf": scores["chrf"]}

    return evaluate


def _meta(cfg: Config) -> dict[str, Any]:
    """What a Translator needs of a run's config."""
    return {"clean": cfg.data.clean.model_dump(), "max_length": cfg.model.max_length,
            "translation": cfg.translation.model_dump(
                include={"beam_size", "length_penalty", "max_new_tokens", "no_repeat_ngram"})}


# --- evaluation --------------------------------------------------------------------------------


def evaluate_pairs(
    translator: Translator, test: Pairs, train: Pairs | None, n_resamples: int, seed: int,
    baselines: bool = True,
) -> Evaluated:
    """BLEU and chrF of the translations of `test` beside copying the source and retrieval
    from `train` (when given), each with its bootstrap interval; per-sentence rows."""
    started = time.perf_counter()
    outputs = [t.text for t in translator.translate(test.sources)]
    seconds = time.perf_counter() - started
    tokenize = target_tokenize(test.targets)
    report: dict[str, Any] = {
        "n": len(test.sources),
        "tokenize": tokenize,
        "decoding": {key: translator.defaults.get(key)
                     for key in ("beam_size", "length_penalty", "max_new_tokens",
                                 "no_repeat_ngram")},
        "seconds": round(seconds, 2),
        "model": translation_scores(outputs, test.targets, tokenize, n_resamples, seed),
        "baselines": {},
    }
    if baselines:
        report["baselines"]["copy_source"] = translation_scores(
            copy_source(test.sources), test.targets, tokenize, n_resamples, seed)
        if train is not None and train.sources:
            retrieved = retrieval_translations(train.sources, train.targets, test.sources)
            report["baselines"]["retrieval"] = translation_scores(
                retrieved, test.targets, tokenize, n_resamples, seed)
    rows = [{"source": source, "reference": reference, "output": output}
            for source, reference, output in zip(test.sources, test.targets, outputs,
                                                 strict=True)]
    report["examples"] = rows[:EXAMPLES]
    return Evaluated(report, rows)


# --- the recipe: what the verbs call ----------------------------------------------------------


class TranslationTask:
    """Sentence pairs → lmforge's encoder–decoder, measured by BLEU and chrF beside copying the
    source and TF-IDF retrieval; a bundle loads into a Translator (`lmforge translate`)."""

    name = "translation"
    val_metrics = ("val_bleu", "val_chrf", "val_loss")  # what make_val_metrics reports
    runs_with = "translate"  # the verb that runs its bundles
    quickstart_run = "quickstart-translation"  # runs/<this>: where `lmforge quickstart` writes
    report_kind = "metrics"  # report.html: eval.json as a table

    def configure(self, cfg: Config) -> None:
        """lmforge's encoder–decoder (model.arch transformer) on byte-level BPE, which reads
        back exactly (spaces kept); its vocabulary size and schedule where none given."""
        model, tokenizer = cfg.model, cfg.tokenizer
        if model.arch == "pretrained":  # any AutoModelForSeq2SeqLM, with its own tokenizer
            pretrained_model.configure_pretrained(cfg)
            return
        if model.arch != "transformer":
            raise ValueError(f"model.arch '{model.arch}' does not translate; task translation "
                             "uses 'transformer' (lmforge's encoder–decoder) or 'pretrained' "
                             "(a seq2seq model: Marian, T5, mBART)")
        if tokenizer.pretrained:
            raise ValueError("tokenizer.pretrained is for pretrained models; task translation "
                             "trains its own byte_bpe tokenizer")
        if tokenizer.kind == "auto":
            tokenizer.kind = "byte_bpe"
        if "vocab_size" not in tokenizer.model_fields_set:
            tokenizer.vocab_size = TRANSLATION_VOCAB_SIZE
        if tokenizer.kind != "byte_bpe":
            raise ValueError(f"tokenizer.kind '{tokenizer.kind}' does not read back exactly "
                             "(spaces are lost); task translation uses byte_bpe")
        fill_train_defaults(cfg.train, TRANSLATION_TRAIN_DEFAULTS)

    def starter_config(self, data: str) -> Config:
        return load_config({"task": self.name,
                            "data": {"path": data, **detect_pair_columns(data)}})

    def quickstart_config(self, fast: bool) -> Config:
        """The built-in Chinese–English sentences with translation's defaults; fewer epochs
        when fast."""
        config: dict[str, Any] = {"task": self.name, "data": {"path": BUILTIN_HSK}}
        if fast:
            config["train"] = {"epochs": 6}
        return load_config(config)

    def prepare(self, cfg: Config, run_dir: Path, resume: bool, log: Log) -> Prepared:
        data = prepare_pairs(cfg.data, cfg.translation.max_length_ratio)
        report = data.report
        log(f"data: {report['rows_read']:,} pairs read; dropped {_dropped(report)}; "
            f"{report['rows_kept']:,} kept: {len(data.train.sources):,} train / "
            f"{len(data.val.sources):,} val / {len(data.test.sources):,} test")
        # one vocabulary for both sides, trained on the training split's pairs only (a
        # pretrained model's own tokenizer is loaded instead)
        tokenizer = runs.tokenizer_for_run(
            cfg, data.train.sources + data.train.targets, data.data_hash, run_dir, resume, log)
        # a pretrained decoder starts from its own start token; lmforge's from the end token
        start = pretrained_model.decoder_start_id(cfg) if cfg.model.arch == "pretrained" else None
        if start is None:
            tokenizer = with_pad_token(tokenizer)
        splits = {name: encode_pairs(tokenizer, getattr(data, name), cfg.model.max_length, start)
                  for name in ("train", "val", "test")}
        report = report | {"vocab_size": tokenizer.vocab_size, "truncated_to_max_length": {
            name: count_truncated(tokenizer, getattr(data, name), cfg.model.max_length, start)
            for name in splits}}
        texts = {name: getattr(data, name).sources for name in ("train", "val", "test")}
        return Prepared(cfg, data.data_hash, tokenizer, texts, report,
                        {"data": data, "splits": splits, "start": start})

    def build_model(
        self, run: Prepared, run_dir: Path, resume: bool, show_progress: bool, log: Log
    ) -> nn.Module:
        seed_everything(run.cfg.train.seed)
        if run.cfg.model.arch == "pretrained":
            model: nn.Module = pretrained_model.build_pretrained(run.cfg)
        else:
            model = EncoderDecoder(architecture(run.cfg, run.tokenizer))
        seed_everything(run.cfg.train.seed + distributed.rank())  # distinct dropout per rank
        return model

    def training(self, run: Prepared, model: nn.Module) -> TrainingPlan:
        cfg, splits, data = run.cfg, run.parts["splits"], run.parts["data"]
        loss = make_loss(cfg.translation.label_smoothing, cfg.translation.source_token_dropout)
        return TrainingPlan(
            examples=splits["train"],
            collate=make_collate(run.tokenizer.pad_id),
            loss=loss,
            val_metrics=make_val_metrics(run, splits["val"], data.val, make_loss(0.0))
            if len(splits["val"]) else None,
            metric_mode="min" if "loss" in cfg.train.early_stopping_metric else "max",
            lengths=np.array([len(s) + len(t) for s, t in zip(splits["train"].sources,
                                                               splits["train"].targets,
                                                               strict=True)]),
        )

    def test(self, run: Prepared, model: nn.Module) -> Evaluated | None:
        data: PreparedPairs = run.parts["data"]
        if not data.test.sources:
            return None
        translator = make_translator(model, run.tokenizer, self.bundle_meta(run, model, None))
        try:
            return evaluate_pairs(translator, data.test, data.train, run.cfg.eval.bootstrap,
                                  run.cfg.train.seed, run.cfg.eval.baselines)
        finally:
            model.train()

    def refold(self, run: Prepared, parts: dict[str, Any]) -> Prepared:
        """Folds of the train and val pairs (the tokenizer stays the run's)."""
        data: PreparedPairs = run.parts["data"]
        pool = Pairs(data.train.sources + data.val.sources, data.train.targets + data.val.targets,
                     data.train.row_ids + data.val.row_ids)
        new = {"test": data.test, **{name: pool.take(parts[name]) for name in parts}}
        data = replace(data, train=new["train"], val=new["val"], test=new["test"])
        splits = {name: encode_pairs(run.tokenizer, pairs, run.cfg.model.max_length,
                                     run.parts["start"])
                  for name, pairs in new.items()}
        return replace(run, split_texts={name: pairs.sources for name, pairs in new.items()},
                       parts={**run.parts, "data": data, "splits": splits})

    def summary(self, report: dict[str, Any]) -> dict[str, Any]:
        model = report["model"]
        return {"n": report["n"], "bleu": model["bleu"], "chrf": model["chrf"]}

    def bundle_meta(self, run: Prepared, model: nn.Module, run_dir: Path | None) -> dict:
        cfg = run.cfg
        return {**bundle_meta(run, model, run_dir), **_meta(cfg),
                "text_column": cfg.data.source_column, "target_column": cfg.data.target_column}

    def load(self, bundle_dir: Path, meta: dict[str, Any], device: str) -> Translator:
        return open_translation_bundle(Path(bundle_dir), meta, device)

    def check_bundle(self, bundle_dir: Path, meta: dict[str, Any]) -> None:
        """What `lmforge serve` checks before it starts (the model loads afterwards)."""
        check_translation_bundle(Path(bundle_dir), meta)

    def evaluate(
        self, translator: Translator, bundle_dir: Path, run_dir: Path | None, data: str | None
    ) -> dict[str, Any]:
        """On the run's test split (data None), or on the pairs of the file `data` (the
        sentences the run trained on left out)."""
        cfg = load_config(read_config_file(run_dir / "config.yaml")) if run_dir else None
        record = runs.read_split_record(run_dir)
        run_data = prepare_pairs(cfg.data, cfg.translation.max_length_ratio) if cfg else None
        check: dict[str, Any] = {}
        if data is not None:
            meta = translator.meta
            data_cfg = DataConfig(path=data, source_column=meta["text_column"],
                                  target_column=meta["target_column"],
                                  clean=CleanConfig(**meta["clean"]))
            records, raw = read_pairs(data, data_cfg)
            test = clean_pairs(records, raw, data_cfg, float("inf"))
            if not test.sources:
                raise LmforgeError(f"{data}: no sentence pairs to evaluate on")
            check = {"source": data, "split_record": record is not None}
            if record is not None:
                unseen, check = runs.leak_check(test.sources, record, data, run_dir)
                test = test.take(unseen)
        elif run_data is None:
            raise LmforgeError(f"{bundle_dir} has no run directory with a test split; "
                               "pass --data FILE with sentence pairs")
        elif not run_data.test.sources:
            raise LmforgeError(f"run {run_dir} has no test split; pass --data FILE")
        else:
            test, check = _run_test_split(cfg, run_dir, record, run_data)
        n_resamples, seed = (cfg.eval.bootstrap, cfg.train.seed) if cfg else (1000, 0)
        report = evaluate_pairs(translator, test, run_data.train if run_data else None,
                                n_resamples, seed).report
        report["data_check"] = check
        return report

    def predict(self, translator: Translator, texts: list[str]) -> tuple[list[dict], str]:
        raise LmforgeError("a translation model translates: use `lmforge translate`")

    def render(self, report: dict[str, Any], console: Console, title: str) -> None:
        render_translation_table(report, console, title)

    def quickstart_notes(self, translator: Translator, bundle_dir: Path) -> list[str]:
        outputs = translator.translate(QUICKSTART_SOURCES)
        return ["samples:", *(f"  {source} → {escape(output.text)}"  # printed as rich markup
                              for source, output in zip(QUICKSTART_SOURCES, outputs,
                                                        strict=True)),
                f"more with: echo 我们明天见。 | lmforge translate {bundle_dir} --input -"]


def check_translation_bundle(
    directory: Path, meta: dict[str, Any]
) -> tuple[Seq2SeqConfig | None, TextTokenizer]:
    """The model's config (None for a pretrained model) and the tokenizer of a translation
    bundle, its weights file checked (its header, not its tensors); a damaged lmforge.json,
    tokenizer or weights file raises LmforgeError naming it and what is wrong."""
    where = directory / "lmforge.json"
    try:
        if meta.get("arch") not in ("transformer", "pretrained"):
            raise ValueError("'arch' must be 'transformer' or 'pretrained' "
                             f"(got {meta.get('arch')!r})")
        pretrained = meta["arch"] == "pretrained"
        if pretrained and type(meta.get("max_length")) is not int:
            raise ValueError("'max_length' must be the tokens a source is cut to")
        architecture = meta.get("architecture")
        if not pretrained and not isinstance(architecture, dict):
            raise ValueError("'architecture' must be a JSON object")
        config = None if pretrained else Seq2SeqConfig(**architecture)
        CleanConfig(**meta.get("clean", {}))
        decoding_settings(meta.get("translation", {}))
        if not isinstance(meta.get("text_column"), str):
            raise ValueError("'text_column' must name the source column")
    except (TypeError, ValueError, LmforgeError) as error:  # pydantic's errors are ValueErrors
        raise LmforgeError(f"{where}: {' '.join(str(error).split())}") from None
    tokenizer = TextTokenizer.load(directory)
    if config is None:  # save_pretrained's files (or peft's), with the model's own tokenizer
        pretrained_model.check_pretrained_files(directory, meta)
        return None, tokenizer
    if tokenizer.vocab_size > config.vocab_size or tokenizer.pad_id != config.pad_id:
        raise LmforgeError(f"{directory / 'tokenizer.json'}: not the tokenizer the model was "
                           f"trained with ({tokenizer.vocab_size} tokens, padding "
                           f"{tokenizer.pad_id}; the model knows {config.vocab_size}, padding "
                           f"{config.pad_id})")
    if meta.get("runtime") == "onnx":  # `lmforge export`: the graphs open when it loads
        for path in onnx_files(directory, meta["onnx"]):
            if not path.is_file():
                raise LmforgeError(f"{path}: missing; the bundle's ONNX model belongs there")
        return config, tokenizer
    weights = directory / WEIGHTS
    try:
        with safe_open(str(weights), framework="pt"):
            pass
    except (OSError, SafetensorError) as error:
        raise LmforgeError(f"{weights}: not a readable safetensors file ({error})") from None
    return config, tokenizer


def open_translation_bundle(directory: Path, meta: dict[str, Any], device: str) -> Translator:
    """A translation bundle's Translator (check_translation_bundle's errors, and one naming
    the weights file when its tensors do not fit the architecture)."""
    config, tokenizer = check_translation_bundle(directory, meta)
    if config is None:  # a pretrained seq2seq model (or its adapter over its base)
        pretrained = pretrained_model.open_pretrained(directory, meta)
        return make_translator(pretrained.to(resolve_device(device)), tokenizer, meta)
    if meta.get("runtime") == "onnx":  # run by ONNX Runtime on the CPU, on torch's threads
        model = OnnxEncoderDecoder(*onnx_files(directory, meta["onnx"]), config)
        return Translator(model, tokenizer, meta)
    model = EncoderDecoder(config)
    try:
        load_model(model, str(directory / WEIGHTS))
    except (OSError, SafetensorError, RuntimeError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise LmforgeError(f"{directory / WEIGHTS}: its tensors do not fit the architecture in "
                           f"{directory / 'lmforge.json'} ({reason})") from None
    return Translator(model.to(resolve_device(device)), tokenizer, meta)


def _run_test_split(
    cfg: Config, run_dir: Path, record: SplitRecord | None, data: PreparedPairs
) -> tuple[Pairs, dict[str, Any]]:
    """The run's test pairs and the data check: with splits.json, the pairs whose sources the
    test split held, wherever they are in the data now; without it (older runs), split again."""
    if record is None:
        return data.test, runs.unrecorded_check(run_dir, cfg.data.path, data.data_hash)
    pool = Pairs(data.train.sources + data.val.sources + data.test.sources,
                 data.train.targets + data.val.targets + data.test.targets,
                 data.train.row_ids + data.val.row_ids + data.test.row_ids)
    found, missing = record.locate("test", pool.sources)
    check = runs.recorded_check(record, cfg.data.path, data.data_hash, missing, 0)
    runs.refuse_changed_test_split(check)
    return pool.take(found), check


def _dropped(report: dict[str, Any]) -> str:
    dropped = {reason: n for reason, n in report["dropped"].items() if n}
    return ", ".join(f"{n:,} {reason.replace('_', ' ')}" for reason, n in dropped.items()) or "none"


def detect_pair_columns(path: str) -> dict[str, str]:
    """`lmforge init`: the table's source and target columns: 'source'/'target' if it has them,
    else the first two columns (the config names them; edit it if they are the wrong way); for
    a plain-text file with one aligned beside it (corpus.zh, corpus.en), that file."""
    partner = aligned_partner(path)
    if partner is not None:
        return {"target_path": partner}
    fmt = resolve_format(path)
    if fmt not in TABLE_FORMATS:
        raise LmforgeError(f"{path}: translation reads a table (csv, tsv, jsonl, parquet) of "
                           "sentence pairs, or two aligned text files (data.path and "
                           "data.target_path)")
    columns = read_table(path, fmt, Records(source=path, format=fmt)).columns
    if {"source", "target"} <= set(columns):
        return {}
    if len(columns) < 2:
        raise LmforgeError(f"{path}: sentence pairs need two columns, found "
                           f"{', '.join(columns) or 'none'}")
    return {"source_column": columns[0], "target_column": columns[1]}


RECIPE = TranslationTask()
