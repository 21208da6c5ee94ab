"""Adapters that give Hugging Face models the same call signature as lmforge's own models."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lmforge.errors import LmforgeError

if TYPE_CHECKING:
    from lmforge.config import AdapterConfig


class PretrainedClassifier(nn.Module):
    """AutoModelForSequenceClassification behind `forward(input_ids, attention_mask) -> logits`.
    `new_modules`: the modules the checkpoint lacked (a fresh head), which an adapter trains."""

    def __init__(self, hf_model: nn.Module, new_modules: list[str] | None = None) -> None:
        super().__init__()
        self.hf = hf_model
        self.new_modules = new_modules or []

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.hf(input_ids=input_ids, attention_mask=attention_mask).logits

    def save(self, directory: Path) -> None:
        self.hf.save_pretrained(directory, safe_serialization=True)


def load_pretrained_classifier(
    name: str,
    labels: list[str],
    revision: str | None = None,
    trust_remote_code: bool = False,
    adapter: AdapterConfig | None = None,
    four_bit: bool = False,
) -> PretrainedClassifier:
    """A hub id or local folder, with a fresh classification head sized to `labels`; with
    `adapter`, LoRA/QLoRA adapters over its frozen weights (models.adapters). `four_bit` (or a
    QLoRA adapter) loads the weights in 4-bit NF4."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    from lmforge.models.adapters import add_adapter, quantization_settings

    hf_logging.set_verbosity_error()  # "some weights are newly initialized" is expected here
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            name,
            revision=revision,
            trust_remote_code=trust_remote_code,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
            ignore_mismatched_sizes=True,
            output_loading_info=True,
            **quantization_settings(four_bit or _is_qlora(adapter)),
        )
    except (OSError, ValueError) as error:
        raise LmforgeError(
            f"cannot load pretrained model '{name}': {str(error).splitlines()[0]}"
        ) from None
    fresh = {key.rpartition(".")[0] for key in info["missing_keys"]}
    fresh |= {(key if isinstance(key, str) else key[0]).rpartition(".")[0]
              for key in info["mismatched_keys"]}  # (name, shapes) in transformers 4.x
    classifier = PretrainedClassifier(model, sorted(fresh))
    return add_adapter(classifier, adapter) if adapter is not None else classifier


class PretrainedCache:
    """A Hugging Face cache object and how many positions it holds, behind our KVCache's face."""

    def __init__(self) -> None:
        from transformers import DynamicCache

        self.past = DynamicCache()
        self.length = 0


class PretrainedCausalLM(nn.Module):
    """AutoModelForCausalLM behind the call signature of lmforge's GPT:
    `forward(input_ids, key_mask, cache, last_only) -> logits`, and `new_cache(batch, length)`."""

    def __init__(self, hf_model: nn.Module) -> None:
        super().__init__()
        self.hf = hf_model

    @property
    def gradient_checkpointing(self) -> bool:
        return bool(getattr(self.hf, "is_gradient_checkpointing", False))

    def new_cache(self, batch: int, length: int) -> PretrainedCache:
        return PretrainedCache()

    def forward(
        self,
        input_ids: torch.Tensor,
        key_mask: torch.Tensor | None = None,
        cache: PretrainedCache | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        past = cache.length if cache is not None else 0
        kwargs = {}
        if key_mask is not None:
            kwargs["attention_mask"] = key_mask.long()
            positions = (key_mask.long().cumsum(1) - 1).clamp(min=0)
            kwargs["position_ids"] = positions[:, past:]
        out = self.hf(
            input_ids=input_ids,
            past_key_values=cache.past if cache is not None else None,
            use_cache=cache is not None,
            logits_to_keep=1 if last_only else 0,
            **kwargs,
        )
        if cache is not None:
            cache.length += input_ids.shape[1]
        return out.logits

    def save(self, directory: Path) -> None:
        self.hf.save_pretrained(directory, safe_serialization=True)


def load_pretrained_causal_lm(
    name: str,
    revision: str | None = None,
    trust_remote_code: bool = False,
    gradient_checkpointing: bool = False,
    adapter: AdapterConfig | None = None,
    four_bit: bool = False,
) -> PretrainedCausalLM:
    """A hub id or local folder through AutoModelForCausalLM; with `adapter`, LoRA/QLoRA
    adapters over its frozen weights (models.adapters). `four_bit` (or a QLoRA adapter) loads
    the weights in 4-bit NF4."""
    from transformers import AutoModelForCausalLM

    from lmforge.models.adapters import add_adapter

    model = _load_generator(AutoModelForCausalLM, "causal LM", name, revision, trust_remote_code,
                            gradient_checkpointing, four_bit or _is_qlora(adapter))
    causal_lm = PretrainedCausalLM(model)
    return add_adapter(causal_lm, adapter) if adapter is not None else causal_lm


def _load_generator(
    auto_class: Any, what: str, name: str, revision: str | None, trust_remote_code: bool,
    gradient_checkpointing: bool, four_bit: bool,
) -> nn.Module:
    """`auto_class.from_pretrained` of a model that generates (a causal LM, a seq2seq model),
    in 4-bit NF4 if asked, with gradient checkpointing if asked; an error names `what`."""
    from lmforge.models.adapters import quantization_settings

    try:
        model = auto_class.from_pretrained(
            name, revision=revision, trust_remote_code=trust_remote_code,
            **quantization_settings(four_bit),
        )
    except (OSError, ValueError) as error:
        raise LmforgeError(
            f"cannot load pretrained {what} '{name}': {str(error).splitlines()[0]}"
        ) from None
    if gradient_checkpointing:  # renamed in transformers 5; the old name still in 4.x
        enable = getattr(model, "activation_checkpointing_enable", None)
        (enable or model.gradient_checkpointing_enable)()
        model.config.use_cache = False  # the cache is useless, and warned about, in training
    return model


class PretrainedSeq2SeqLM(nn.Module):
    """AutoModelForSeq2SeqLM (Marian, T5, mBART, ...) behind the call signature of lmforge's
    EncoderDecoder: `forward(src_ids, src_mask, tgt_ids) -> logits` (B, T, vocab), the target
    read from its decoder's start token; it decodes with its own `generate`."""

    def __init__(self, hf_model: nn.Module) -> None:
        super().__init__()
        self.hf = hf_model

    @property
    def start_id(self) -> int:
        """The token its decoder starts from (T5 and Marian: padding; mBART: the end token)."""
        start = decoder_start(self.hf)
        assert start is not None  # load_pretrained_seq2seq refuses a model without one
        return start

    def forward(
        self, src_ids: torch.Tensor, src_mask: torch.Tensor, tgt_ids: torch.Tensor
    ) -> torch.Tensor:
        return self.hf(input_ids=src_ids, attention_mask=src_mask,
                       decoder_input_ids=tgt_ids).logits

    def save(self, directory: Path) -> None:
        self.hf.save_pretrained(directory, safe_serialization=True)


def pretrained_config(
    name: str, revision: str | None, trust_remote_code: bool, what: str = "model"
) -> Any:
    """The config.json of a hub id or local folder (AutoConfig), without its weights; an error
    names `what` could not be loaded."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(name, revision=revision,
                                          trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise LmforgeError(f"cannot load pretrained {what} '{name}': "
                           f"{str(error).splitlines()[0]}") from None


def decoder_start(hf_model: nn.Module) -> int | None:
    """The decoder's start token, from its config.json or its generation_config.json."""
    for config in (hf_model.config, getattr(hf_model, "generation_config", None)):
        start = getattr(config, "decoder_start_token_id", None)
        if start is not None:
            return int(start)
    return None


def load_pretrained_seq2seq(
    name: str,
    revision: str | None = None,
    trust_remote_code: bool = False,
    gradient_checkpointing: bool = False,
    adapter: AdapterConfig | None = None,
    four_bit: bool = False,
) -> PretrainedSeq2SeqLM:
    """A hub id or local folder through AutoModelForSeq2SeqLM; with `adapter`, LoRA/QLoRA
    adapters over its frozen weights (models.adapters). `four_bit` (or a QLoRA adapter) loads
    the weights in 4-bit NF4."""
    from transformers import AutoModelForSeq2SeqLM

    from lmforge.models.adapters import add_adapter

    model = _load_generator(AutoModelForSeq2SeqLM, "seq2seq model", name, revision,
                            trust_remote_code, gradient_checkpointing,
                            four_bit or _is_qlora(adapter))
    if decoder_start(model) is None:
        raise LmforgeError(f"pretrained model '{name}' names no decoder_start_token_id (in its "
                           "config.json or generation_config.json); its decoder needs one")
    # weights the model never saves (Marian's sinusoidal positions, remade when it loads) stay
    # as they are: trained, the bundle would load a model other than the one evaluated
    unsaved = set(getattr(model, "_keys_to_ignore_on_save", None) or ())
    for weight_name, weight in model.named_parameters():
        if weight_name in unsaved:
            weight.requires_grad_(False)
    seq2seq = PretrainedSeq2SeqLM(model)
    return add_adapter(seq2seq, adapter) if adapter is not None else seq2seq


def _is_qlora(adapter: AdapterConfig | None) -> bool:
    return adapter is not None and adapter.kind == "qlora"


class PretrainedImageClassifier(PretrainedClassifier):
    """AutoModelForImageClassification (a ViT, a ResNet, ...) behind `forward(pixels) -> logits`;
    saved as the classifier is (save_pretrained)."""

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.hf(pixel_values=pixels).logits


def load_pretrained_image_classifier(
    name: str, labels: list[str], revision: str | None = None, trust_remote_code: bool = False
) -> PretrainedImageClassifier:
    """A hub id or local folder of an image model, with a fresh head sized to `labels`."""
    from transformers import AutoModelForImageClassification

    try:
        model = AutoModelForImageClassification.from_pretrained(
            name, revision=revision, trust_remote_code=trust_remote_code,
            num_labels=len(labels), id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
            ignore_mismatched_sizes=True,
        )
    except (OSError, ValueError) as error:
        raise LmforgeError(
            f"cannot load pretrained image model '{name}': {str(error).splitlines()[0]}"
        ) from None
    return PretrainedImageClassifier(model)
