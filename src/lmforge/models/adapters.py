"""LoRA and QLoRA adapters (peft) over a pretrained model's frozen weights: adding them for
training, naming the base an adapter was trained over (a hash of its weight files), loading a
bundle's adapter over that base (one copy of a base shared by every adapter over it), merging.

An adapter bundle holds peft's own files (adapter_config.json, adapter_model.safetensors: the
adapters, and a classifier's fresh head) and, in lmforge.json, "adapter" with the base's
identity; the base's weights stay where they were.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lmforge.errors import LmforgeError
from lmforge.models.pretrained import (
    PretrainedCausalLM,
    PretrainedClassifier,
    PretrainedSeq2SeqLM,
    load_pretrained_causal_lm,
    load_pretrained_classifier,
    load_pretrained_seq2seq,
)

if TYPE_CHECKING:
    from lmforge.config import AdapterConfig

PretrainedModel = PretrainedClassifier | PretrainedCausalLM | PretrainedSeq2SeqLM
# peft's task type of each wrapper (a classifier's is SEQ_CLS)
TASK_TYPES = {PretrainedCausalLM: "CAUSAL_LM", PretrainedSeq2SeqLM: "SEQ_2_SEQ_LM"}
# The files that hold a base's weights; a bundle's own adapter file is never one of them.
WEIGHT_PATTERNS = ("*.safetensors", "*.bin")
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin")
HASH_CHUNK = 1 << 24


def quantization_settings(four_bit: bool) -> dict[str, Any]:
    """from_pretrained's keywords for a QLoRA base: 4-bit NF4 weights with bf16 compute on the
    GPU (bitsandbytes); nothing otherwise."""
    if not four_bit:
        return {}
    if not torch.cuda.is_available():
        raise LmforgeError("model.adapter.kind 'qlora' loads the base in 4-bit NF4 with "
                           "bitsandbytes, which runs on a CUDA GPU, and this machine has none; "
                           "use model.adapter.kind lora")
    try:
        import bitsandbytes  # noqa: F401  (transformers needs it importable)
    except ImportError:
        raise LmforgeError("model.adapter.kind 'qlora' needs bitsandbytes: "
                           "pip install bitsandbytes") from None
    from transformers import BitsAndBytesConfig

    quantization = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    return {"quantization_config": quantization, "dtype": torch.bfloat16,
            "device_map": {"": torch.cuda.current_device()}}


def add_adapter(model: PretrainedModel, adapter: AdapterConfig) -> PretrainedModel:
    """`model` with LoRA adapters on its target modules; only they (and a classifier's fresh
    head) train, every other weight is frozen."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    hf, classifier = model.hf, isinstance(model, PretrainedClassifier)
    checkpointing = bool(getattr(hf, "is_gradient_checkpointing", False))
    if adapter.kind == "qlora":
        hf = prepare_model_for_kbit_training(hf, use_gradient_checkpointing=checkpointing)
    elif checkpointing:  # the frozen embeddings' output must carry gradients into the blocks
        hf.enable_input_require_grads()
    targets = "all-linear" if adapter.target_modules == "auto" else list(adapter.target_modules)
    config = LoraConfig(
        r=adapter.r, lora_alpha=adapter.alpha, lora_dropout=adapter.dropout,
        target_modules=targets, task_type="SEQ_CLS" if classifier else TASK_TYPES[type(model)],
        modules_to_save=list(model.new_modules) or None if classifier else None,
    )
    try:
        model.hf = get_peft_model(hf, config)
    except ValueError as error:  # target modules that the architecture lacks
        raise LmforgeError(f"model.adapter.target_modules: {str(error).splitlines()[0]}") from None
    return model


def has_adapter(model: nn.Module) -> bool:
    from peft import PeftModel

    return isinstance(getattr(model, "hf", None), PeftModel)


# --- the base an adapter was trained over -----------------------------------------------------


def base_folder(name: str, revision: str | None) -> Path:
    """The folder holding a base's files: a local folder as given, a hub id's cached snapshot."""
    local = Path(name).expanduser()
    if local.is_dir():
        return local.resolve()
    from huggingface_hub import snapshot_download

    patterns = [*WEIGHT_PATTERNS, "*.json"]
    try:
        return Path(snapshot_download(name, revision=revision, allow_patterns=patterns,
                                      local_files_only=True))
    except Exception:  # not cached yet: fetched like from_pretrained would
        try:
            return Path(snapshot_download(name, revision=revision, allow_patterns=patterns))
        except Exception as error:
            raise LmforgeError(f"cannot find the base model '{name}': "
                               f"{str(error).splitlines()[0]}") from None


def weights_hash(folder: Path) -> str:
    """sha256 over the base's weight files (their names and bytes, in name order). Reading a
    7B base takes seconds, so a hash is kept while the files' sizes and times stay the same."""
    files = sorted(path for pattern in WEIGHT_PATTERNS for path in folder.glob(pattern)
                   if path.name not in ADAPTER_FILES)
    if not files:
        raise LmforgeError(f"{folder}: no weight files ({', '.join(WEIGHT_PATTERNS)})")
    stamps = tuple((path, path.stat().st_size, path.stat().st_mtime_ns) for path in files)
    return _files_hash(stamps)


@functools.lru_cache(maxsize=32)
def _files_hash(stamps: tuple[tuple[Path, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for path, _, _ in stamps:
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as handle:
            while chunk := handle.read(HASH_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def base_identity(name: str, revision: str | None) -> dict[str, Any]:
    """What a bundle records of its base: the local folder's absolute path or the hub id, the
    revision, and the hash of its weight files."""
    folder = base_folder(name, revision)
    shown = str(folder) if Path(name).expanduser().is_dir() else name
    return {"name": shown, "revision": revision, "sha256": weights_hash(folder)}


def adapter_meta(adapter: AdapterConfig, name: str, revision: str | None) -> dict[str, Any]:
    """lmforge.json's "adapter": its settings and its base."""
    return {**adapter.model_dump(mode="json"), "base": base_identity(name, revision)}


# --- loading a bundle's adapter over its base ------------------------------------------------


class SharedBases:
    """The base models loaded so far, one copy of each in memory: every adapter loaded over a
    base gets its own module tree whose frozen weights are the base's own tensors (so peft can
    put an adapter into it without touching the others)."""

    def __init__(self) -> None:
        self._models: dict[tuple, nn.Module] = {}

    def model(self, key: tuple, build: Callable[[], nn.Module]) -> nn.Module:
        if key not in self._models:
            self._models[key] = build()
        base = self._models[key]
        tensors = itertools.chain(base.parameters(), base.buffers())
        return copy.deepcopy(base, memo={id(tensor): tensor for tensor in tensors})


def check_adapter(directory: Path, meta: dict[str, Any]) -> None:
    """Raise LmforgeError unless an adapter bundle has peft's files and names a base that is
    there (a local folder; a hub id is looked up when the bundle loads). Reads no weights."""
    adapter = meta.get("adapter")
    base = adapter.get("base") if isinstance(adapter, dict) else None
    if not isinstance(base, dict) or not all(isinstance(base.get(k), str)
                                             for k in ("name", "sha256")):
        raise LmforgeError(f"{directory / 'lmforge.json'}: 'adapter' must name its base "
                           "({'base': {'name', 'revision', 'sha256'}})")
    if not (directory / "adapter_config.json").is_file():
        raise LmforgeError(f"{directory / 'adapter_config.json'}: missing; an adapter bundle "
                           "holds peft's adapter_config.json and adapter_model.safetensors")
    name = base["name"]
    if Path(name).is_absolute() and not Path(name).is_dir():
        raise LmforgeError(f"{directory}: its adapter's base {name} is not there (lmforge.json "
                           "adapter.base.name); put the base model back at that path")


def load_adapter_model(
    directory: Path, meta: dict[str, Any], bases: SharedBases | None = None,
    quantized: bool = True,
) -> PretrainedModel:
    """The bundle's adapter over its base, for inference. The base must be the one it was
    trained over (the same weight files); with `bases`, a base already loaded is shared.
    `quantized` False loads a QLoRA adapter's base in full precision (to merge into it)."""
    from peft import PeftModel
    from transformers.utils import logging as hf_logging

    check_adapter(directory, meta)
    adapter, bases = meta["adapter"], bases or SharedBases()
    base = adapter["base"]
    name, revision = base["name"], base.get("revision")
    found = weights_hash(base_folder(name, revision))
    if found != base["sha256"]:
        raise LmforgeError(
            f"{directory}: its adapter was trained over the base {name} whose weights hash "
            f"to {base['sha256'][:16]}, but the base found at {name} hashes to {found[:16]}: "
            "another model; load it over the base it was trained on"
        )
    qlora = quantized and adapter.get("kind") == "qlora" and torch.cuda.is_available()
    hf_logging.set_verbosity_error()
    if meta["task"] == "generation":
        key: tuple = ("generation", found, qlora)

        def build() -> nn.Module:
            return load_pretrained_causal_lm(name, revision, four_bit=qlora).hf
    elif meta["task"] == "translation":
        key = ("translation", found, qlora)

        def build() -> nn.Module:
            return load_pretrained_seq2seq(name, revision, four_bit=qlora).hf
    else:
        labels = meta["labels"]
        key = ("classification", found, qlora, tuple(labels))

        def build() -> nn.Module:
            return load_pretrained_classifier(name, labels, revision, four_bit=qlora).hf
    try:
        peft_model = PeftModel.from_pretrained(bases.model(key, build), directory)
    except (OSError, ValueError, RuntimeError) as error:
        raise LmforgeError(f"{directory}: cannot load its adapter "
                           f"({str(error).splitlines()[0]})") from None
    wrappers = {"generation": PretrainedCausalLM, "translation": PretrainedSeq2SeqLM}
    return wrappers.get(meta["task"], PretrainedClassifier)(peft_model.eval())


def merged(model: PretrainedModel) -> PretrainedModel:
    """The adapter folded into the base's weights: a plain Hugging Face model again."""
    wrapper = type(model)
    return wrapper(model.hf.merge_and_unload())
