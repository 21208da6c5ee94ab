"""The bundle: everything needed to use a trained model, and the Predictor (classification)
and Generator (generation) that use it.

    model/
      lmforge.json        task, labels, cleaning, max length, architecture, metrics, source run;
                          for generation also the sampling defaults ("generate")
      model.safetensors   weights (a pretrained model's bundle also has config.json: the
                          save_pretrained layout, so `transformers` loads it as it is)
      tokenizer.json      (or the pretrained tokenizer's files)

Loading a bundle and predicting applies exactly the cleaning and tokenization of training.
"""

from __future__ import annotations

import json
import re
import reprlib
import shutil
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError
from safetensors.torch import load_model, save_model
from torch import nn

from lmforge import __version__
from lmforge.config import CleanConfig, GenerateConfig
from lmforge.data import clean_text
from lmforge.data.documents import clean_document
from lmforge.errors import LmforgeError
from lmforge.models import (
    GPT,
    EncoderClassifier,
    GPTConfig,
    PretrainedCausalLM,
    PretrainedClassifier,
    TransformerConfig,
)
from lmforge.tasks.classification import predict_logits, softmax
from lmforge.tasks.generation import Sampling, decode_tokens
from lmforge.tokenization import Encoded, TextTokenizer
from lmforge.training import resolve_device

META_FILE = "lmforge.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass
class Predictions:
    rows: list[dict[str, Any]]  # {"text", "label", "score", "probs": {label: p}}
    n_truncated: int


class Predictor:
    """A loaded classification bundle: `predict(texts)` cleans, tokenizes, runs and labels."""

    def __init__(self, model: nn.Module, tokenizer: TextTokenizer, meta: dict[str, Any]) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.meta = meta
        self.labels: list[str] = meta["labels"]
        self.max_length: int = meta["max_length"]
        self.clean = CleanConfig(**meta["clean"])

    def encode(self, texts: list[str], max_length: int | None = None) -> Encoded:
        """Clean and tokenize exactly as training did (cut to max_length, default the model's)."""
        cleaned = [clean_text(text, self.clean) for text in texts]
        return self.tokenizer.encode(cleaned, max_length or self.max_length)

    def logits(self, texts: list[str], batch_size: int = 64) -> tuple[np.ndarray, int]:
        """(n, classes) logits in `labels` order, and how many texts were truncated."""
        encoded = self.encode(texts)
        logits = predict_logits(self.model, encoded.ids, self.tokenizer.pad_id, batch_size)
        return logits, encoded.n_truncated

    def probabilities(self, texts: list[str], batch_size: int = 64) -> tuple[np.ndarray, int]:
        """(n, classes) probabilities in `labels` order, and how many texts were truncated."""
        logits, n_truncated = self.logits(texts, batch_size)
        probs = softmax(logits) if len(texts) else np.zeros((0, len(self.labels)))
        return probs, n_truncated

    def predict_batch(self, texts: list[str], batch_size: int = 64) -> Predictions:
        probs, n_truncated = self.probabilities(texts, batch_size)
        rows = []
        for text, p in zip(texts, probs, strict=True):
            best = int(p.argmax())
            rows.append(
                {
                    "text": text,
                    "label": self.labels[best],
                    "score": float(p[best]),
                    "probs": {label: float(v) for label, v in zip(self.labels, p, strict=True)},
                }
            )
        return Predictions(rows, n_truncated)

    def predict(self, texts: list[str], batch_size: int = 64) -> list[dict[str, Any]]:
        return self.predict_batch(list(texts), batch_size).rows


def save_bundle(
    directory: Path, model: nn.Module, tokenizer: TextTokenizer, meta: dict[str, Any]
) -> None:
    """Write the bundle under a temporary name, then rename it into place."""
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if isinstance(model, (PretrainedClassifier, PretrainedCausalLM)):
        model.save(tmp)
    else:
        save_model(model, str(tmp / WEIGHTS_FILE))
    tokenizer.save(tmp)
    meta = {"lmforge_version": __version__, **meta}
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False), encoding="utf-8")
    shutil.rmtree(directory, ignore_errors=True)
    tmp.rename(directory)


def read_meta(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / META_FILE
    if not path.is_file():
        raise LmforgeError(
            f"{directory} is not an lmforge bundle (no {META_FILE}); pass a run's model/ folder"
        )
    return json.loads(path.read_text(encoding="utf-8"))


def load(directory: str | Path, device: str = "auto") -> Predictor | Generator:
    """Load a bundle: a Predictor for a classifier (`lmforge.load(path).predict([...])`), a
    Generator for a generation model (`lmforge.load(path).generate([...])`)."""
    directory = Path(directory)
    meta = read_meta(directory)
    if meta.get("task") == "generation":
        return load_generator(directory, meta, device)
    if meta.get("task") != "classification":
        raise LmforgeError(f"{directory} holds a '{meta.get('task')}' model, not a classifier")
    tokenizer = TextTokenizer.load(directory)
    if meta.get("runtime") == "onnx":  # written by `lmforge export` / `compress --quantize`
        from lmforge.models.onnx_runtime import OnnxClassifier

        return Predictor(OnnxClassifier(directory / meta["onnx"]["file"]), tokenizer, meta)
    if meta["arch"] == "pretrained":
        from transformers import AutoModelForSequenceClassification

        model: nn.Module = PretrainedClassifier(
            AutoModelForSequenceClassification.from_pretrained(directory)
        )
    else:
        model = EncoderClassifier(TransformerConfig(**meta["architecture"]))
        load_model(model, str(directory / WEIGHTS_FILE))
    return Predictor(model.to(resolve_device(device)), tokenizer, meta)


def to_device(model: nn.Module, device: str) -> nn.Module:
    return model.to(torch.device(device))


# --- generation --------------------------------------------------------------------------------


@dataclass
class Completion:
    """One prompt's continuation."""

    text: str
    finish_reason: str  # "stop": end of text or a stop string; "length": max_new_tokens/context
    prompt_tokens: int
    completion_tokens: int


@dataclass
class StreamEvent:
    """A piece of one prompt's continuation, as soon as it is known to be final text."""

    index: int  # which prompt
    text: str  # new text since this prompt's previous event ("" is possible on its last)
    finish_reason: str | None  # None until this prompt's last event, then as in Completion
    prompt_tokens: int
    completion_tokens: int  # tokens generated for this prompt so far


class _Continuation:
    """One prompt's generated tokens as text. Text is released only when final: not while it
    ends in what may be an incomplete character, nor while its end could be the start of a stop
    string; the text is cut where a stop string begins.

    A byte-level token can end mid-character: the text then ends in U+FFFD until the next
    tokens complete it. An incomplete UTF-8 sequence is at most 3 bytes, so at most the last 3
    U+FFFD are held back (one with a byte-level BPE, one per byte with a byte fallback); any
    before them can no longer change, and are sent. The stop check of a token looks only where a
    new match can be: its work is bounded by the stop strings' length, not by the text's."""

    PENDING = 3  # trailing U+FFFD that may still become a character

    def __init__(self, tokenizer: TextTokenizer, stop: list[str]) -> None:
        self.tokenizer, self.stop = tokenizer, [s for s in stop if s]
        self.ids: list[int] = []  # the text's tokens (not the end-of-text token)
        self.generated = 0  # tokens generated, the end-of-text token included
        self.text = ""  # everything decoded so far
        self.released = 0  # characters of `text` handed out
        self.finish_reason: str | None = None

    def push(self, token: int, eos_id: int | None) -> str:
        self.generated += 1
        if token == eos_id:
            return self.finish("stop")
        settled = self._settled()  # the text before it, which this token cannot change
        self.ids.append(token)
        self.text = self.tokenizer.decode(self.ids)
        # a new match ends after `settled`: only the stretch that may hold one is searched
        found = [i for s in self.stop
                 if (i := self.text.find(s, max(self.released, settled - len(s) + 1))) >= 0]
        if found:
            self.text = self.text[: min(found)]
            self.finish_reason = "stop"
            return self._release(len(self.text))
        safe = self._settled()
        return self._release(safe - self._stop_start(safe))

    def finish(self, reason: str) -> str:
        self.finish_reason = reason
        self.text = self.text[: self._settled()]  # a character cut off by the end
        return self._release(len(self.text))

    def _settled(self) -> int:
        """The length of the text without a trailing incomplete character."""
        end = len(self.text)
        floor = max(self.released, end - self.PENDING)
        while end > floor and self.text[end - 1] == "\ufffd":
            end -= 1
        return end

    def _stop_start(self, end: int) -> int:
        """The length of the longest unreleased stretch ending at `end` that begins a stop
        string (held back: the next tokens may complete it)."""
        longest = 0
        for s in self.stop:
            start = max(self.released, end - len(s) + 1)
            at = self.text.find(s[0], start, end)
            while 0 <= at and end - at > longest:
                if s.startswith(self.text[at:end]):
                    longest = end - at
                    break
                at = self.text.find(s[0], at + 1, end)
        return longest

    def _release(self, end: int) -> str:
        piece = self.text[self.released : end] if end > self.released else ""
        self.released = max(self.released, end)
        return piece


class GenerationJob:
    """Prompts ready to decode and the text decoded so far: what `Generator.prepare` returns.
    A decoding loop (Generator.stream, or the server's shared batch) feeds it each step's tokens
    with `take` and gets the StreamEvents they make; `end` closes the rows still open."""

    def __init__(
        self,
        generator: Generator,
        prompts: list[list[int]],
        settings: GenerateConfig,
        rngs: list[torch.Generator],
    ) -> None:
        self.prompts, self.rngs = prompts, rngs  # a random generator per prompt
        self.max_new_tokens = settings.max_new_tokens
        self.sampling = Sampling(
            settings.temperature, settings.top_k, settings.top_p, settings.repetition_penalty
        )
        stop = settings.stop
        if generator.clean.normalize:  # the model writes NFKC text: "，" comes out as ","
            stop = [unicodedata.normalize("NFKC", s) for s in stop]
        self.eos_id = generator.tokenizer.eos_id
        self.rows = [_Continuation(generator.tokenizer, stop) for _ in prompts]

    @property
    def done(self) -> bool:
        return all(row.finish_reason for row in self.rows)

    def take(self, tokens: list[int]) -> list[StreamEvent]:
        """The events of one step: a token per prompt (ignored for prompts already done)."""
        events = []
        for i, (row, token) in enumerate(zip(self.rows, tokens, strict=True)):
            if row.finish_reason is None:
                piece = row.push(token, self.eos_id)
                if piece or row.finish_reason:
                    events.append(self._event(i, piece))
        return events

    def end(self) -> list[StreamEvent]:
        """The last events of the prompts still open: max_new_tokens generated or the context
        full."""
        return [self._event(i, row.finish("length"))
                for i, row in enumerate(self.rows) if row.finish_reason is None]

    def _event(self, i: int, piece: str) -> StreamEvent:
        row = self.rows[i]
        return StreamEvent(i, piece, row.finish_reason, len(self.prompts[i]), row.generated)


def _describe_setting(error: ValidationError) -> str:
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"])
    message = re.sub(r"^\w+ should", "must", first["msg"]).replace(" after validation", "")
    return f"{key} {message} (got {reprlib.repr(first.get('input'))})"


class Generator:
    """A loaded generation bundle. `generate(prompts)` returns one Completion per prompt;
    `stream(prompts)` yields StreamEvents as the text is generated (what `lmforge generate
    --stream` and the server's streaming responses use). Both take the same arguments and give
    the same text; several prompts are generated as one batch.

    Arguments left as None take the bundle's defaults (the run's `generate` config section).
    temperature 0 is greedy decoding. Every prompt draws its tokens from its own random
    generator, seeded with `seed`: a prompt's text depends only on the prompt, the seed and the
    settings (on the same machine), never on the prompts generated beside it or its place among
    them (short of a near-tie that float rounding in a batch of another shape tips). Prompts are
    cleaned and encoded as training documents were: each starts a new document."""

    def __init__(self, model: nn.Module, tokenizer: TextTokenizer, meta: dict[str, Any]) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.meta = meta
        self.max_length: int = meta["max_length"]  # the context
        self.clean = CleanConfig(**meta["clean"])
        self.defaults = GenerateConfig(**meta.get("generate", {}))

    def settings(self, **overrides: Any) -> GenerateConfig:
        """The bundle's defaults with the given (not None) values, validated."""
        values = self.defaults.model_dump() | {k: v for k, v in overrides.items() if v is not None}
        try:
            return GenerateConfig(**values)
        except ValidationError as error:
            raise LmforgeError(_describe_setting(error)) from None

    def encode_prompts(
        self, prompts: list[str], max_new_tokens: int, truncate: bool = False
    ) -> list[list[int]]:
        """Token ids of each prompt. A prompt that leaves no room in the context for a new token
        is an error, or with `truncate` loses its first tokens (keeping room for
        max_new_tokens, up to half the context)."""
        if isinstance(prompts, str) or not prompts:
            raise LmforgeError("give a list of one or more prompts")
        name = (lambda i: f"prompt {i + 1}") if len(prompts) > 1 else (lambda i: "the prompt")
        cleaned = []
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str):
                raise LmforgeError(f"{name(i)} is a {type(prompt).__name__}, not text")
            try:
                prompt.encode("utf-8")
            except UnicodeEncodeError as error:  # a lone surrogate, say
                raise LmforgeError(
                    f"{name(i)} is not valid text: {error.reason} at character {error.start}"
                ) from None
            cleaned.append(clean_document(prompt, self.clean))
            if not cleaned[-1]:
                raise LmforgeError(f"{name(i)} is empty")
        encoded = self.tokenizer.encode_documents(cleaned)
        keep = self.max_length - min(max_new_tokens, self.max_length // 2)
        out = []
        for i, ids in enumerate(encoded):
            ids = ids.tolist()
            if len(ids) >= self.max_length:
                if not truncate:
                    raise LmforgeError(
                        f"{name(i)} is {len(ids)} tokens, which leaves no room in the model's "
                        f"context of {self.max_length}; shorten it, or pass --truncate "
                        "(truncate=True) to keep its last tokens"
                    )
                ids = ids[-keep:]
            out.append(ids)
        return out

    def prepare(
        self,
        prompts: list[str] | str,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        repetition_penalty: float | None = None,
        stop: list[str] | None = None,
        seed: int | None = None,
        truncate: bool = False,
    ) -> GenerationJob:
        """The prompts encoded and the settings checked, ready to decode. Bad arguments raise
        LmforgeError."""
        settings = self.settings(
            max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
            repetition_penalty=repetition_penalty, stop=stop, seed=seed,
        )
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        encoded = self.encode_prompts(prompts, settings.max_new_tokens, truncate)
        rngs = [torch.Generator() for _ in encoded]  # on the CPU: one small draw each per step
        for rng in rngs:
            if settings.seed is None:
                rng.seed()
            else:
                rng.manual_seed(settings.seed)
        return GenerationJob(self, encoded, settings, rngs)

    def stream(self, prompts: list[str] | str, *args: Any, **kwargs: Any) -> Iterator[StreamEvent]:
        """Yield StreamEvents (index, new text, finish reason, token counts) as tokens are
        generated; each prompt's last event has its finish_reason. Takes the arguments of generate;
        bad ones raise LmforgeError here, before the first event."""
        return self._events(self.prepare(prompts, *args, **kwargs))

    def _events(self, job: GenerationJob) -> Iterator[StreamEvent]:
        tokens = decode_tokens(
            self.model, job.prompts, job.max_new_tokens, self.max_length, job.sampling, job.rngs
        )
        try:
            for step in tokens:
                yield from job.take(step.tolist())
                if job.done:
                    return
        finally:
            tokens.close()
        yield from job.end()  # max_new_tokens generated, or the context is full

    def generate(
        self,
        prompts: list[str] | str,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        repetition_penalty: float | None = None,
        stop: list[str] | None = None,
        seed: int | None = None,
        truncate: bool = False,
    ) -> list[Completion]:
        """One Completion per prompt (a single string is one prompt), in prompt order."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        texts, last = [""] * len(prompts), [None] * len(prompts)
        for event in self.stream(prompts, max_new_tokens, temperature, top_k, top_p,
                                 repetition_penalty, stop, seed, truncate):
            texts[event.index] += event.text
            last[event.index] = event
        return [Completion(text, e.finish_reason, e.prompt_tokens, e.completion_tokens)
                for text, e in zip(texts, last, strict=True)]


def load_generator(directory: Path, meta: dict[str, Any], device: str = "auto") -> Generator:
    tokenizer = TextTokenizer.load(directory)
    if meta["arch"] == "pretrained":
        from transformers import AutoModelForCausalLM

        model: nn.Module = PretrainedCausalLM(AutoModelForCausalLM.from_pretrained(directory))
    else:
        model = GPT(GPTConfig(**meta["architecture"]))
        load_model(model, str(directory / WEIGHTS_FILE))
    return Generator(model.to(resolve_device(device)), tokenizer, meta)
