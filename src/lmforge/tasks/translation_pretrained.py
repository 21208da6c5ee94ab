"""Translation with a pretrained seq2seq model (model.arch pretrained: any AutoModelForSeq2SeqLM,
Marian, T5, mBART): its own tokenizer on both sides (the target through `text_target`), its
own `generate` for greedy and beam search, its own files (save_pretrained, or peft's adapter)
in the bundle. translation.py's recipe and Translator call these where the model is pretrained;
the verbs and the server see the same Translator either way.

A target is the decoder's start token, then the tokenizer's ids of it (its end token last).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from lmforge.config import Config, fill_train_defaults
from lmforge.decoding import Hypothesis
from lmforge.errors import LmforgeError
from lmforge.models import PretrainedSeq2SeqLM, load_pretrained_seq2seq
from lmforge.models.adapters import check_adapter, load_adapter_model
from lmforge.models.pretrained import pretrained_config
from lmforge.tokenization import TextTokenizer

# A fine-tune's schedule where the config gives none: a pretrained model moves little from its
# weights (the rate of Hugging Face's translation examples); adapters keep train.lr's default.
PRETRAINED_TRAIN_DEFAULTS: dict[str, Any] = {"lr": 5e-5, "batch_size": 16}


def configure_pretrained(cfg: Config) -> None:
    """The pretrained model's own tokenizer, and a fine-tune's learning rate where none given."""
    tokenizer = cfg.tokenizer
    if tokenizer.pretrained:
        raise ValueError("tokenizer.pretrained: a pretrained translation model reads with its "
                         "own tokenizer (model.pretrained's); remove it")
    if tokenizer.kind == "auto":
        tokenizer.kind = "pretrained"
    if tokenizer.kind != "pretrained":
        raise ValueError(f"tokenizer.kind '{tokenizer.kind}': a pretrained translation model "
                         "reads with its own tokenizer; use pretrained (or auto)")
    if cfg.model.adapter is None:
        fill_train_defaults(cfg.train, PRETRAINED_TRAIN_DEFAULTS)


def build_pretrained(cfg: Config) -> PretrainedSeq2SeqLM:
    model = cfg.model
    return load_pretrained_seq2seq(model.pretrained, model.revision, model.trust_remote_code,
                                   model.gradient_checkpointing, model.adapter)


def decoder_start_id(cfg: Config) -> int:
    """The decoder's start token of the model named in cfg (read from its config files only)."""
    from transformers import GenerationConfig

    model = cfg.model
    config = pretrained_config(model.pretrained, model.revision, model.trust_remote_code,
                               "seq2seq model")
    start = getattr(config, "decoder_start_token_id", None)
    if start is None:
        try:
            start = GenerationConfig.from_pretrained(
                model.pretrained, revision=model.revision).decoder_start_token_id
        except OSError:  # no generation_config.json
            start = None
    if start is None:
        raise LmforgeError(f"pretrained model '{model.pretrained}' names no "
                           "decoder_start_token_id (in its config.json or "
                           "generation_config.json); its decoder needs one")
    return int(start)


def hf_tokenizer(tokenizer: TextTokenizer) -> Any:
    if tokenizer.hf is None:
        raise LmforgeError("a pretrained translation model needs its own (Hugging Face) "
                           "tokenizer")
    return tokenizer.hf


def encode_sources(tokenizer: TextTokenizer, texts: list[str], max_length: int) -> list[np.ndarray]:
    """Each source as the model reads it (its tokenizer's special tokens added), cut to
    max_length with its end token kept."""
    if not texts:
        return []
    ids = hf_tokenizer(tokenizer)(texts, truncation=True, max_length=max_length)["input_ids"]
    return [np.asarray(row, dtype=np.int64) for row in ids]


def encode_targets(
    tokenizer: TextTokenizer, texts: list[str], max_length: int, start_id: int
) -> list[np.ndarray]:
    """Each target as the decoder's start token + the target tokenizer's ids (its end token
    last), cut so that the decoder's input (all but the last) fits max_length."""
    if not texts:
        return []
    ids = hf_tokenizer(tokenizer)(text_target=texts, truncation=True,
                                  max_length=max_length)["input_ids"]
    return [np.asarray([start_id, *row], dtype=np.int64) for row in ids]


def count_truncated(
    tokenizer: TextTokenizer, sources: list[str], targets: list[str], max_length: int
) -> int:
    """Pairs with a side cut by encode_sources or encode_targets."""
    if not sources:
        return 0
    hf = hf_tokenizer(tokenizer)
    source_ids, target_ids = hf(sources)["input_ids"], hf(text_target=targets)["input_ids"]
    return sum(1 for s, t in zip(source_ids, target_ids, strict=True)
               if len(s) > max_length or len(t) > max_length)


@torch.no_grad()
def generate(
    model: PretrainedSeq2SeqLM, src: torch.Tensor, mask: torch.Tensor, max_new_tokens: int,
    beam_size: int, length_penalty: float, no_repeat_ngram: int = 0,
) -> list[Hypothesis]:
    """The model's own generate(): greedy (beam_size 1) or beam search, no n-gram of
    `no_repeat_ngram` tokens twice (0: off), with its scores as lmforge.decoding's
    (log-probabilities over length ** length_penalty for beams)."""
    hf = model.hf
    out = hf.generate(input_ids=src, attention_mask=mask, max_new_tokens=max_new_tokens,
                      num_beams=beam_size, length_penalty=length_penalty, do_sample=False,
                      no_repeat_ngram_size=no_repeat_ngram,
                      num_return_sequences=1, return_dict_in_generate=True, output_scores=True)
    sequences = out.sequences[:, 1:].tolist()  # the start token left out
    if beam_size > 1:
        scores = out.sequences_scores.tolist()
    else:
        steps = hf.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
        scores = steps.masked_fill(~torch.isfinite(steps), 0).sum(1).tolist()
    eos = _end_ids(hf)
    hypotheses = []
    for tokens, score in zip(sequences, scores, strict=True):
        end = next((i for i, token in enumerate(tokens) if token in eos), None)
        finished = end is not None
        hypotheses.append(Hypothesis(tokens[:end] if finished else tokens, float(score),
                                     finished))
    return hypotheses


def _end_ids(hf: nn.Module) -> set[int]:
    end = getattr(hf.generation_config, "eos_token_id", None)
    if end is None:
        end = getattr(hf.config, "eos_token_id", None)
    return set(end) if isinstance(end, list) else {end} if end is not None else set()


def check_pretrained_files(directory: Path, meta: dict[str, Any]) -> None:
    """A pretrained translation bundle's model files: peft's adapter over a base that is there,
    or save_pretrained's config.json and readable safetensors weights."""
    if "adapter" in meta:
        check_adapter(directory, meta)
        return
    if not (directory / "config.json").is_file():
        raise LmforgeError(f"{directory / 'config.json'}: missing; a pretrained model's bundle "
                           "holds save_pretrained's files")
    weights = sorted(directory.glob("*.safetensors"))
    if not weights:
        raise LmforgeError(f"{directory}: no weights (*.safetensors) in the bundle")
    for path in weights:
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except (OSError, SafetensorError) as error:
            raise LmforgeError(f"{path}: not a readable safetensors file ({error})") from None
    try:
        json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except ValueError as error:
        raise LmforgeError(f"{directory / 'config.json'}: not valid JSON ({error})") from None


def open_pretrained(directory: Path, meta: dict[str, Any]) -> PretrainedSeq2SeqLM:
    """The bundle's model on the CPU: its adapter over its base, or its own weights (no
    progress bar: `lmforge translate` keeps stderr for its own lines)."""
    from transformers import AutoModelForSeq2SeqLM
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        if "adapter" in meta:
            model = load_adapter_model(directory, meta)
            assert isinstance(model, PretrainedSeq2SeqLM)
            return model
        return PretrainedSeq2SeqLM(AutoModelForSeq2SeqLM.from_pretrained(directory))
    except (OSError, ValueError, RuntimeError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise LmforgeError(f"{directory}: cannot load the pretrained model ({reason})") from None
    finally:
        if shown:
            hf_logging.enable_progress_bar()
