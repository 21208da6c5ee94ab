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
import reprlib
import shutil
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_model
from torch import nn

import lmforge.attributions as attributions
from lmforge.chat import ROLES, Messages, chat_template
from lmforge.config import CleanConfig, GenerateConfig, describe_setting, generate_settings
from lmforge.data import clean_text
from lmforge.data.documents import clean_document
from lmforge.decoding import Completion, GenerationJob, StreamEvent, decode_tokens
from lmforge.errors import LmforgeError
from lmforge.files import restore_dir, staged_dir, write_json_atomic
from lmforge.models import (
    GPT,
    EncoderClassifier,
    GPTConfig,
    PretrainedCausalLM,
    PretrainedClassifier,
    PretrainedSeq2SeqLM,
    TransformerConfig,
)
from lmforge.models.adapters import SharedBases, check_adapter, load_adapter_model
from lmforge.models.classic import RNNClassifier, RNNConfig, TextCNNClassifier, TextCNNConfig
from lmforge.tasks.classification import OTHER_ARCHS, predict_logits, softmax
from lmforge.tokenization import Encoded, TextTokenizer
from lmforge.training import resolve_device
from lmforge.version import __version__

META_FILE = "lmforge.json"
WEIGHTS_FILE = "model.safetensors"
# The tasks a bundle can be loaded for, each with the arch name, config and module of the model
# lmforge builds itself (the other arch is "pretrained": a Hugging Face model's own files).
OWN_MODELS: dict[str, tuple[str, type, type[nn.Module]]] = {
    "classification": ("transformer", TransformerConfig, EncoderClassifier),
    "generation": ("gpt", GPTConfig, GPT),
    "regression": ("transformer", TransformerConfig, EncoderClassifier),  # one output: a value
}
TEXT_HEADS = ("classification", "regression")  # the tasks of an encoder with a head over text
# Classification's other networks of lmforge's own over tokens: arch -> config, module.
TEXT_ENCODERS: dict[str, tuple[type, type[nn.Module]]] = {
    "rnn": (RNNConfig, RNNClassifier),
    "textcnn": (TextCNNConfig, TextCNNClassifier),
}


def _own_model(meta: dict[str, Any]) -> tuple[str, type, type[nn.Module]]:
    """The arch name, config and module of the bundle's own model (by its task and arch)."""
    if meta["task"] in TEXT_HEADS and meta.get("arch") in TEXT_ENCODERS:
        return (meta["arch"], *TEXT_ENCODERS[meta["arch"]])
    return OWN_MODELS[meta["task"]]


@dataclass
class Predictions:
    rows: list[dict[str, Any]]  # {"text", "label", "score", "probs": {label: p}}
    n_truncated: int


class TextClassifier:
    """What every classification bundle loads into: its labels, max length and lmforge.json,
    `encode` (the tokens it reads, which serving bills) and `probabilities`; predict_batch and
    predict label from those. Predictor is the one network; tasks/classifiers.py has the
    others (TF-IDF + logistic regression, an ensemble of bundles)."""

    def __init__(self, meta: dict[str, Any]) -> None:
        self.meta = meta
        self.labels: list[str] = meta["labels"]
        self.max_length: int = meta["max_length"]
        self.clean = CleanConfig(**meta["clean"])

    def encode(self, texts: list[str], max_length: int | None = None) -> Encoded:
        raise NotImplementedError

    def probabilities(self, texts: list[str], batch_size: int = 64) -> tuple[np.ndarray, int]:
        """(n, classes) probabilities in `labels` order, and how many texts were truncated."""
        raise NotImplementedError

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

    def predict(
        self, texts: list[str], batch_size: int = 64, explain: bool = False
    ) -> list[dict[str, Any]]:
        """One row per text; with `explain`, each row also has its `attributions`."""
        texts = list(texts)
        rows = self.predict_batch(texts, batch_size).rows
        if explain:
            for row, found in zip(rows, self.explain(texts), strict=True):
                row["attributions"] = found
        return rows

    def explain(self, texts: list[str]) -> list[list[dict[str, Any]]]:
        """Each text's attributions to its predicted label ({"token", "score"} in text order,
        attributions.py): here by occlusion of the cleaned text's spans, which any classifier
        allows."""
        out = []
        for text in texts:
            cleaned = clean_text(text, self.clean)
            spans, scores = attributions.occlude_spans(lambda t: self.probabilities(t)[0],
                                                       cleaned)
            out.append(attributions.attribution_rows(cleaned, spans, scores))
        return out


class Predictor(TextClassifier):
    """A loaded classification bundle: `predict(texts)` cleans, tokenizes, runs and labels."""

    def __init__(self, model: nn.Module, tokenizer: TextTokenizer, meta: dict[str, Any]) -> None:
        super().__init__(meta)
        self.model = model.eval()
        self.tokenizer = tokenizer

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

    def explain(self, texts: list[str]) -> list[list[dict[str, Any]]]:
        """Integrated gradients over the token embeddings, or occlusion of each token for a
        model without gradients (ONNX); the tokens read, as spans of the cleaned text."""
        embeddings, pad_id = attributions.embedding_layer(self.model), self.tokenizer.pad_id
        out = []
        for text in texts:
            cleaned = clean_text(text, self.clean)
            ids, spans, own = self.tokenizer.encode_spans(cleaned, self.max_length)
            if embeddings is None:
                scores = attributions.occlude_tokens(self.model, ids, own, pad_id)
            else:
                target = int(predict_logits(self.model, [ids], pad_id)[0].argmax())
                scores = attributions.integrated_gradients(
                    self.model, embeddings, ids, own, pad_id, target)[own]
            kept = [span for span, keep in zip(spans, own, strict=True) if keep]
            out.append(attributions.attribution_rows(cleaned, kept, scores))
        return out


def save_bundle(
    directory: Path, model: nn.Module, tokenizer: TextTokenizer, meta: dict[str, Any]
) -> None:
    """Write the bundle as `<directory>.tmp`, then swap it in (files.staged_dir): a crash at
    any instant leaves the old bundle or the new one."""
    with staged_dir(directory) as tmp:
        if isinstance(model, (PretrainedClassifier, PretrainedCausalLM, PretrainedSeq2SeqLM)):
            model.save(tmp)
        else:
            save_model(model, str(tmp / WEIGHTS_FILE))
        tokenizer.save(tmp)
        write_json_atomic(tmp / META_FILE, {"lmforge_version": __version__, **meta})


def copy_bundle(source: Path, directory: Path) -> None:
    """A copy of the bundle `source` at `directory`, swapped in as save_bundle does."""
    with staged_dir(directory) as tmp:
        shutil.copytree(source, tmp, dirs_exist_ok=True)


@dataclass(frozen=True)
class BundleLocation:
    bundle_dir: Path
    run_dir: Path | None  # the run the bundle came from, if its folder (config.yaml) is still there


def locate_bundle(target: str | Path) -> BundleLocation:
    """The bundle a command was given: `target` is a bundle, or a run directory standing for its
    model/. A bundle whose save was killed between its renames is put back first."""
    target = Path(target).expanduser()
    restore_dir(target)
    restore_dir(target / "model")
    if (target / META_FILE).is_file():
        run = read_meta(target).get("run")
        run_dir = Path(run["dir"]) if isinstance(run, dict) and run.get("dir") else None
        found = run_dir is not None and (run_dir / "config.yaml").is_file()
        return BundleLocation(target, run_dir if found else None)
    if (target / "model" / META_FILE).is_file():
        return BundleLocation(target / "model", target)
    if not target.exists():
        raise LmforgeError(f"not found: {target}")
    raise LmforgeError(
        f"{target} is neither a run directory nor a bundle (not an lmforge bundle: no "
        f"{META_FILE} in it or in its model/ folder)"
    )


def read_meta(directory: str | Path) -> dict[str, Any]:
    """A bundle's lmforge.json: a JSON object naming its task (what loading that task needs
    besides is checked by check_meta)."""
    path = Path(directory) / META_FILE
    if not path.is_file():
        raise LmforgeError(
            f"{directory} is not an lmforge bundle (no {META_FILE}); pass a run's model/ folder"
        )
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise LmforgeError(f"{path}: cannot be read ({error.strerror})") from None
    except ValueError as error:  # not JSON, or not UTF-8
        raise LmforgeError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(meta, dict):
        raise LmforgeError(f"{path}: must be a JSON object (got a {type(meta).__name__})")
    if not isinstance(meta.get("task"), str):
        raise LmforgeError(f"{path}: 'task' must name a task (got {_shown(meta.get('task'))})")
    return meta


def check_meta(directory: str | Path, meta: dict[str, Any]) -> None:
    """Raise LmforgeError naming lmforge.json if it lacks what loading its (classification or
    generation) model needs: a damaged or hand-edited file fails here, not deep in a load."""
    problem = _meta_problem(meta) or _settings_problem(meta) or _architecture_problem(meta)
    if problem:
        raise LmforgeError(f"{Path(directory) / META_FILE}: {problem}")


def _shown(value: Any) -> str:
    return reprlib.repr(value)  # a long list or string is cut short


def _meta_problem(meta: dict[str, Any]) -> str | None:
    task, arch, length = meta["task"], meta.get("arch"), meta.get("max_length")
    own_arch = OWN_MODELS[task][0]
    others = {"classification": (*TEXT_ENCODERS, *OTHER_ARCHS),
              "regression": tuple(TEXT_ENCODERS)}.get(task, ())
    archs = (own_arch, "pretrained", *others)
    if arch not in archs:
        return f"'arch' must be {' or '.join(map(repr, archs))} for {task} (got {_shown(arch)})"
    if type(length) is not int or length < 1:
        return f"'max_length' must be a positive integer (got {_shown(length)})"
    columns = ["text_column", "label_column"] if task in TEXT_HEADS else ["text_column"]
    for key in columns:
        if not isinstance(meta.get(key), str):
            return f"'{key}' must be a column name (got {_shown(meta.get(key))})"
    labels = meta.get("labels")
    if task == "classification" and not (
        isinstance(labels, list) and labels and all(isinstance(label, str) for label in labels)
    ):
        return f"'labels' must be a non-empty list of label names (got {_shown(labels)})"
    scale = meta.get("target_scale")
    if task == "regression" and not (
        isinstance(scale, dict) and all(type(scale.get(k)) in (int, float) for k in ("mean", "std"))
        and scale["std"] > 0
    ):
        return ("'target_scale' must be {\"mean\": number, \"std\": number > 0} (got "
                f"{_shown(scale)})")
    runtime, onnx = meta.get("runtime"), meta.get("onnx")
    if runtime not in (None, "onnx"):
        return f"'runtime' must be 'onnx' or absent (got {_shown(runtime)})"
    if runtime == "onnx" and not (isinstance(onnx, dict) and isinstance(onnx.get("file"), str)):
        return f"'onnx' must be an object naming the model's file (got {_shown(onnx)})"
    return None


def _settings_problem(meta: dict[str, Any]) -> str | None:
    """The cleaning settings and the sampling defaults (generation), as the config checks them."""
    for key, settings_class in (("clean", CleanConfig), ("generate", GenerateConfig)):
        value = meta.get(key, {} if key == "generate" else None)
        if not isinstance(value, dict):
            return f"'{key}' must be a JSON object (got {_shown(value)})"
        try:
            settings_class(**value)
        except ValidationError as error:
            return f"{key}.{describe_setting(error)}"  # clean.min_chars must be ...
    return None


def _architecture_problem(meta: dict[str, Any]) -> str | None:
    """The config of lmforge's own model: its fields, of the right kinds, and for a classifier
    as many outputs as labels."""
    own_arch, config_class, _ = _own_model(meta)
    if meta["arch"] != own_arch:
        return None
    architecture = meta.get("architecture")
    if not isinstance(architecture, dict):
        return f"'architecture' must be a JSON object (got {_shown(architecture)})"
    kinds = {"int": int, "float": (int, float), "str": str}
    for field in fields(config_class):
        name = field.type if isinstance(field.type, str) else field.type.__name__
        value = architecture.get(field.name)
        if field.name in architecture and not isinstance(value, kinds.get(name, object)):
            return f"'architecture.{field.name}' must be a {name} (got {_shown(value)})"
    try:
        config = config_class(**architecture)
    except (TypeError, ValueError) as error:  # a field missing or unknown
        return f"'architecture' does not describe a {own_arch} model ({error})"
    n_labels = len(meta.get("labels", []))
    if meta["task"] == "classification" and config.n_classes != n_labels:
        return (f"'labels' names {n_labels} classes but the model has {config.n_classes} "
                "outputs ('architecture.n_classes')")
    if meta["task"] == "regression" and config.n_classes != 1:
        return (f"a regression model has one output, not {config.n_classes} "
                "('architecture.n_classes')")
    return None


def _one_line(error: BaseException) -> str:
    return textwrap.shorten(str(error), 300, placeholder=" ...")


def _check_weights_file(path: Path) -> None:
    """Raise LmforgeError naming `path` unless it is a whole safetensors file. Reads only the
    header (whose length safetensors caps, so a damaged one claiming terabytes allocates
    nothing) and checks that the tensors it lists exactly fill the file."""
    if not path.is_file():
        raise LmforgeError(f"{path}: missing; the bundle's weights belong there")
    try:
        with safe_open(str(path), framework="pt"):
            pass
    except SafetensorError as error:
        raise LmforgeError(f"{path}: not a valid safetensors file ({error})") from None


def _load_tokenizer(directory: Path, meta: dict[str, Any]) -> TextTokenizer:
    """The bundle's tokenizer. Ids past the model's vocabulary mean a tokenizer from elsewhere:
    the model would fail on them, or worse, read them as other tokens."""
    tokenizer = TextTokenizer.load(directory)
    if meta["arch"] == "pretrained":
        return tokenizer
    known = meta["architecture"]["vocab_size"]
    if tokenizer.vocab_size > known:
        raise LmforgeError(
            f"{directory / 'tokenizer.json'}: {tokenizer.vocab_size} tokens where the model "
            f"knows {known}: not the one the model was trained with"
        )
    return tokenizer


def _open_bundle(directory: Path) -> tuple[dict[str, Any], TextTokenizer, nn.Module | None]:
    """Everything of a bundle but its model: lmforge.json checked, the tokenizer loaded, the
    weights' files checked. An ONNX bundle's model (a Runtime session) is made here too."""
    restore_dir(directory)  # a save killed between its renames left the bundle as <name>.prev
    meta = read_meta(directory)
    if meta["task"] not in OWN_MODELS:
        raise LmforgeError(
            f"{directory} holds a '{meta['task']}' model; lmforge loads "
            f"{' and '.join(OWN_MODELS)} bundles"
        )
    check_meta(directory, meta)
    tokenizer = _load_tokenizer(directory, meta)
    if meta.get("runtime") == "onnx" and meta["task"] == "generation":  # GPT with its KV cache
        from lmforge.models.onnx_generation import OnnxGPT

        return meta, tokenizer, OnnxGPT(directory / meta["onnx"]["file"], meta["architecture"])
    if meta.get("runtime") == "onnx":  # written by `lmforge export` / `compress --quantize`
        from lmforge.models.onnx_runtime import OnnxClassifier

        return meta, tokenizer, OnnxClassifier(directory / meta["onnx"]["file"])
    if meta["arch"] == "pretrained":  # save_pretrained's files, perhaps sharded
        weights = sorted(directory.glob("*.safetensors"))
    else:
        weights = [directory / WEIGHTS_FILE]
    for path in weights:
        _check_weights_file(path)
    if "adapter" in meta:  # peft's files, and a base that is where lmforge.json says
        check_adapter(directory, meta)
    return meta, tokenizer, None


def check_bundle(directory: str | Path) -> dict[str, Any]:
    """Check a bundle's files without building its model, and return its lmforge.json: what
    `lmforge serve` does before it starts (the models load afterwards). A damaged lmforge.json,
    tokenizer or weights file raises LmforgeError naming it."""
    directory = Path(directory)
    restore_dir(directory)
    meta = read_meta(directory)
    from lmforge.tasks import INPUT_RECIPES, TASKS  # the recipes build on this module

    recipe = INPUT_RECIPES.get((meta["task"], meta.get("inputs"))) or TASKS.get(meta["task"])
    own_check = getattr(recipe, "check_bundle", None)
    if own_check is not None:  # a recipe that checks its own bundles' files
        own_check(directory, meta)
        return meta
    if meta.get("arch") in OTHER_ARCHS:
        from lmforge.tasks.classifiers import check_bundle_files  # they build on this module

        return check_bundle_files(directory)
    return _open_bundle(directory)[0]


def load(directory: str | Path, device: str = "auto") -> Any:
    """Load a bundle into its task's predictor: a Predictor for a classifier
    (`lmforge.load(path).predict([...])`), a Generator for a generation model
    (`lmforge.load(path).generate([...])`). A damaged bundle raises LmforgeError naming the
    file and what is wrong with it."""
    from lmforge.tasks import TASKS, recipe_of  # the recipes build on this module

    directory = Path(directory)
    restore_dir(directory)  # a save killed between its renames left the bundle as <name>.prev
    meta = read_meta(directory)
    if meta["task"] not in TASKS:
        raise LmforgeError(f"{directory} holds a '{meta['task']}' model; lmforge loads "
                           f"{', '.join(TASKS)} bundles")
    try:
        recipe = recipe_of(meta)
    except LmforgeError as error:
        raise LmforgeError(f"{directory}: {error}") from None
    return recipe.load(directory, meta, device)


def open_model_bundle(
    directory: Path, device: str = "auto", bases: SharedBases | None = None
) -> Predictor | Generator:
    """A classification or generation bundle's Predictor or Generator (their recipes' load).
    An adapter bundle's base is shared with the other adapters loaded through `bases`."""
    meta, tokenizer, model = open_network(directory, device, bases)
    if meta["task"] == "generation":
        return Generator(model, tokenizer, meta)
    return Predictor(model, tokenizer, meta)


def open_network(
    directory: Path, device: str = "auto", bases: SharedBases | None = None
) -> tuple[dict[str, Any], TextTokenizer, nn.Module]:
    """A bundle of one network over tokens, checked: its lmforge.json, tokenizer and model
    (ONNX Runtime's session for an exported bundle, else the weights on `device`)."""
    meta, tokenizer, onnx_model = _open_bundle(directory)
    if onnx_model is not None:
        return meta, tokenizer, onnx_model
    return meta, tokenizer, _build_model(directory, meta, bases).to(resolve_device(device))


def _build_model(
    directory: Path, meta: dict[str, Any], bases: SharedBases | None = None
) -> nn.Module:
    """The bundle's model with its weights, on the CPU."""
    if "adapter" in meta:  # peft's files over the base named in lmforge.json
        return load_adapter_model(directory, meta, bases)
    if meta["arch"] == "pretrained":
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

        if meta["task"] == "generation":
            return PretrainedCausalLM(_from_pretrained(AutoModelForCausalLM, directory))
        return PretrainedClassifier(_from_pretrained(AutoModelForSequenceClassification, directory))
    _, config_class, model_class = _own_model(meta)
    try:
        model = model_class(config_class(**meta["architecture"]))
    except (ValueError, RuntimeError) as error:  # sizes that make no model: heads, dimensions
        raise LmforgeError(f"{directory / META_FILE}: 'architecture' does not describe a "
                           f"model ({_one_line(error)})") from None
    try:
        load_model(model, str(directory / WEIGHTS_FILE))
    except RuntimeError as error:  # a tensor missing, unexpected, or of another shape
        raise LmforgeError(
            f"{directory / WEIGHTS_FILE}: its tensors do not fit the architecture in "
            f"{directory / META_FILE} ({_one_line(error)})"
        ) from None
    return model


def _from_pretrained(auto_class: Any, directory: Path) -> nn.Module:
    try:
        return auto_class.from_pretrained(directory)
    except (OSError, ValueError, RuntimeError) as error:  # config.json missing or damaged, ...
        raise LmforgeError(
            f"{directory}: cannot load the pretrained model ({_one_line(error)})"
        ) from None


def to_device(model: nn.Module, device: str) -> nn.Module:
    return model.to(torch.device(device))


# --- generation --------------------------------------------------------------------------------


class Generator:
    """A loaded generation bundle. `generate(prompts)` returns one Completion per prompt;
    `stream(prompts)` yields StreamEvents as the text is generated (what `lmforge generate
    --stream` and the server's streaming responses use). Both take the same arguments and give
    the same text; several prompts are generated as one batch.

    How to generate is one GenerateConfig, `settings` (config.generate_settings makes one of the
    values given), and/or its fields as keywords (`generate(prompts, temperature=0, seed=3)`):
    the keywords replace the fields that `settings` sets, which replace the bundle's defaults
    (the run's `generate` config section); None is not given. `truncate` is not a sampling
    setting (nor a bundle default): it says what to do with a prompt too long for the context.
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
        # the template the model trained with (lmforge.json), else its tokenizer's, else lmforge's
        self.chat_template = chat_template(tokenizer, meta.get("chat_template"))
        # a reply ends at the token that closes a turn: a pretrained tokenizer's own end token
        # (a chat model's <|im_end|>, say), which may differ from its end of text
        hf_end = getattr(tokenizer.hf, "eos_token_id", None) if tokenizer.hf is not None else None
        self.reply_end_id = hf_end if hf_end is not None else tokenizer.eos_id

    def render_chat(self, messages: Messages) -> str:
        """A conversation as the prompt of its assistant's next reply: each message's content
        cleaned as training data was, rendered with the bundle's chat template."""
        cleaned = [{"role": m["role"], "content": clean_document(m["content"], self.clean)}
                   for m in messages]
        return self.chat_template.render(cleaned, add_generation_prompt=True)

    def settings(self, given: GenerateConfig | None = None, **overrides: Any) -> GenerateConfig:
        """The bundle's defaults, replaced by the fields `given` sets, then by the (not None)
        overrides; validated (LmforgeError naming a bad value)."""
        given_values = given.model_dump(include=given.model_fields_set) if given else {}
        return generate_settings(generate_settings(self.defaults, **given_values), **overrides)

    def encode_prompts(
        self, prompts: list[str], max_new_tokens: int, truncate: bool = False,
        chat: bool = False,
    ) -> list[list[int]]:
        """Token ids of each prompt. A prompt that leaves no room in the context for a new token
        is an error, or with `truncate` loses its first tokens (keeping room for
        max_new_tokens, up to half the context). With `chat` each prompt is a conversation
        (a list of {"role", "content"}), rendered by render_chat."""
        if isinstance(prompts, str) or not prompts:
            raise LmforgeError("give a list of one or more prompts")
        name = (lambda i: f"prompt {i + 1}") if len(prompts) > 1 else (lambda i: "the prompt")
        if chat:
            rendered = [self.render_chat(_messages(m, name(i))) for i, m in enumerate(prompts)]
            encoded = self.tokenizer.encode_plain(rendered, add_special_tokens=False)
            return self._fit_prompts(encoded, max_new_tokens, truncate, name)
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
        return self._fit_prompts(encoded, max_new_tokens, truncate, name)

    def _fit_prompts(
        self, encoded: list[np.ndarray], max_new_tokens: int, truncate: bool, name: Any
    ) -> list[list[int]]:
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
        settings: GenerateConfig | None = None,
        truncate: bool = False,
        chat: bool = False,
        **overrides: Any,
    ) -> GenerationJob:
        """The prompts (with `chat`, conversations) encoded and the settings checked, ready to
        decode. Bad arguments raise LmforgeError."""
        settings = self.settings(settings, **overrides)
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        encoded = self.encode_prompts(prompts, settings.max_new_tokens, truncate, chat)
        rngs = [torch.Generator() for _ in encoded]  # on the CPU: one small draw each per step
        for rng in rngs:
            if settings.seed is None:
                rng.seed()
            else:
                rng.manual_seed(settings.seed)
        job = GenerationJob(self.tokenizer, encoded, settings, rngs, self.clean.normalize)
        if chat:
            job.eos_id = self.reply_end_id
        return job

    def stream(
        self,
        prompts: list[str] | str,
        settings: GenerateConfig | None = None,
        truncate: bool = False,
        chat: bool = False,
        **overrides: Any,
    ) -> Iterator[StreamEvent]:
        """Yield StreamEvents (index, new text, finish reason, token counts) as tokens are
        generated; each prompt's last event has its finish_reason. Takes the arguments of generate;
        bad ones raise LmforgeError here, before the first event."""
        return self._events(self.prepare(prompts, settings, truncate, chat, **overrides))

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
        settings: GenerateConfig | None = None,
        truncate: bool = False,
        chat: bool = False,
        **overrides: Any,
    ) -> list[Completion]:
        """One Completion per prompt (a single string is one prompt), in prompt order. With
        `chat` each prompt is a conversation, a list of {"role", "content"} (system, user,
        assistant), and its completion the assistant's reply, rendered with the bundle's chat
        template as training rendered its conversations."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        texts, last = [""] * len(prompts), [None] * len(prompts)
        for event in self.stream(prompts, settings, truncate, chat, **overrides):
            texts[event.index] += event.text
            last[event.index] = event
        return [Completion(text, e.finish_reason, e.prompt_tokens, e.completion_tokens)
                for text, e in zip(texts, last, strict=True)]


def _messages(conversation: Any, name: str) -> Messages:
    """A conversation as {"role", "content"} messages with known roles and text, or
    LmforgeError naming the first that is not."""
    if not isinstance(conversation, list) or not conversation:
        raise LmforgeError(f"{name} must be a non-empty list of {{role, content}} messages")
    out = []
    for i, message in enumerate(conversation, start=1):
        role = message.get("role") if isinstance(message, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if role not in ROLES:
            raise LmforgeError(f"{name}: message {i} has role {_shown(role)}; use one of "
                               f"{', '.join(ROLES)}")
        if not isinstance(content, str):
            raise LmforgeError(f"{name}: message {i} has no text content")
        try:
            content.encode("utf-8")
        except UnicodeEncodeError as error:  # a lone surrogate, say
            raise LmforgeError(f"{name}: message {i} is not valid text: {error.reason} at "
                               f"character {error.start}") from None
        out.append({"role": role, "content": content})
    return out
