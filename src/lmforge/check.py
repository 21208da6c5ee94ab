"""`lmforge check CONFIG`: a run's pre-flight, training nothing. The data read, cleaned, split
and tokenized as training would (its recipe's prepare), with what would be dropped; two chat
samples with their trained spans marked; token lengths against the context; the model's
parameters, counted on a skeleton that holds no weights (PyTorch's meta device); and an
estimate of one GPU's peak memory in training, with the largest batch that fits a budget.

The estimate is the sum of what training keeps on the GPU: the weights (a QLoRA base's linear
layers at 4 bits), a gradient per trainable weight, AdamW's two moments per trainable weight,
and the activations the backward pass needs, per token and layer of a Transformer, with and
without gradient checkpointing (which keeps only each layer's input and recomputes one layer
at a time), plus the logits and their loss.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from rich.text import Text
from torch import nn

from lmforge.config import Config, load_config
from lmforge.errors import LmforgeError
from lmforge.models import GPT, EncoderClassifier
from lmforge.tasks import inputs_of, recipe_for
from lmforge.tasks.recipe import Prepared
from lmforge.tokenization import TextTokenizer
from lmforge.training import sharding
from lmforge.training.loop import parameter_counts

GIB = 1 << 30
UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
         "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}
ADAM_MOMENTS = 2  # exp_avg and exp_avg_sq, each the size of its weight
ADAM_STEP_BYTES = 4  # AdamW's step count: one float32 per weight tensor
QLORA_BYTES = 0.5 * (1 + 0.127 / 4)  # NF4: 4 bits, plus double-quantized absmax per 64 weights
N_SAMPLES = 2


def parse_size(text: str) -> int:
    """'24GiB', '80 GB', '512MiB' as bytes; LmforgeError for anything else."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in UNITS:
        raise LmforgeError(f"--gpu-memory {text!r}: give a size such as 24GiB, 80GB or 512MiB")
    return int(float(match.group(1)) * UNITS[unit])


@dataclass
class Shape:
    """What a Transformer's activations depend on (per token and layer)."""

    hidden: int
    layers: int
    ff: int  # the MLP's inner width
    kv: int  # the width of keys (and of values)
    vocab: int  # 0 for a classifier: its logits are negligible
    gated: bool  # a gated MLP (gate and up projections: Llama, Qwen, ...)


@dataclass
class MemoryEstimate:
    """Bytes per GPU. `activations` scale with the batch (given per batch of batch_size)."""

    weights: int
    gradients: int
    optimizer: int
    activations: int | None
    activations_checkpointed: int | None
    batch_size: int
    sequence: int
    activation_bytes: int  # per element: 2 under bf16/fp16 autocast, 4 in fp32
    casts: int = 0  # autocast's 16-bit copies of float32 weights, kept for the backward pass

    @property
    def states(self) -> int:
        """Weights (and their autocast copies), gradients and optimizer state: what does not
        grow with the batch."""
        return self.weights + self.casts + self.gradients + self.optimizer

    def peak(self, checkpointed: bool, batch_size: int | None = None) -> int | None:
        acts = self.activations_checkpointed if checkpointed else self.activations
        if acts is None:
            return None
        return self.states + acts * (batch_size or self.batch_size) // self.batch_size

    def largest_batch(self, budget: int, checkpointed: bool) -> int | None:
        """The largest batch whose estimated peak fits `budget` bytes (0: not even one)."""
        acts = self.activations_checkpointed if checkpointed else self.activations
        if acts is None:
            return None
        per_example = acts / self.batch_size
        return max(0, int((budget - self.states) // per_example)) if per_example else None


def tensor_bytes(params: list[nn.Parameter]) -> int:
    return sum(p.numel() * p.element_size() for p in params)


def estimate_memory(
    model: nn.Module, shape: Shape | None, batch_size: int, sequence: int, precision: str,
    four_bit: bool = False,
) -> MemoryEstimate:
    """Peak training memory of `model` (a skeleton will do: only shapes and dtypes are read) for
    batches of `batch_size` sequences of `sequence` tokens under `precision` (fp32, bf16, fp16;
    auto is taken as bf16, what a GPU that trains runs)."""
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    weights = tensor_bytes(params)
    quantized: dict[int, nn.Parameter] = {}
    if four_bit:  # the frozen base's linear layers at 4 bits; peft's preparation for 4-bit
        # training makes every other weight float32
        quantized = {id(p): p for p in _quantized_weights(model)}
        rest = sum(p.numel() for p in params if id(p) not in quantized)
        weights = int(sum(p.numel() for p in quantized.values()) * QLORA_BYTES) + 4 * rest
    gradients = tensor_bytes(trainable)
    optimizer = ADAM_MOMENTS * gradients + ADAM_STEP_BYTES * len(trainable)
    width = 4 if precision == "fp32" else 2
    full = checkpointed = None
    stream = 4 if four_bit else _main_width(params)
    casts = 0
    if shape is not None:
        tokens = batch_size * sequence
        layer_bytes = tokens * layer_bytes_per_token(shape, width, stream)
        # the logits in their dtype, their float32 copy for the loss (log-softmax saved), and
        # the float32 gradient the backward pass starts from; the final norm's input and output
        logits = tokens * shape.vocab * (width + 4 + 4)
        head = tokens * shape.hidden * (2 * width if width == stream else stream + width)
        full = shape.layers * layer_bytes + logits + head
        # checkpointed: each layer's input (the residual stream), one layer recomputed
        checkpointed = shape.layers * tokens * shape.hidden * stream + layer_bytes + logits \
            + head
        if width < stream:
            linear = {id(m.weight): m.weight for m in model.modules()
                      if isinstance(m, nn.Linear)}
            if shape.vocab and not any(w.shape[0] == shape.vocab for w in linear.values()):
                # an output head tied to the embedding as F.linear (lmforge's GPT)
                linear |= {id(m.weight): m.weight for m in model.modules()
                           if isinstance(m, nn.Embedding) and m.num_embeddings == shape.vocab}
            casts = sum(w.numel() for key, w in linear.items() if key not in quantized) * width
    return MemoryEstimate(weights, gradients, optimizer, full, checkpointed, batch_size,
                          sequence, width, casts)


def _main_width(params: list[nn.Parameter]) -> int:
    """Bytes per element of the dtype most weights have: the residual stream's (LoRA's float32
    adapters over a bf16 base leave it bf16)."""
    counts: dict[int, int] = {}
    for p in params:
        if p.is_floating_point():
            counts[p.element_size()] = counts.get(p.element_size(), 0) + p.numel()
    return max(counts, key=counts.__getitem__) if counts else 4


def layer_bytes_per_token(shape: Shape, width: int, stream: int) -> int:
    """Bytes one Transformer layer keeps per token for the backward pass. Counted from what
    autograd saves (bench/bench_check.py measures it): the norms' inputs (and an RMSNorm's
    normalized value), the attention's queries, keys, values and output, and the MLP's inner
    activations (a gated MLP's gate, its activation, the up projection and their product).
    `width`: bytes of the compute dtype; `stream`: of the weights and the residual stream
    (float32 weights under bf16 autocast keep the norms and rotary embeddings in float32)."""
    h, kv, ff = shape.hidden, shape.kv, shape.ff
    if width == stream:
        elements = 8 * h + 2 * kv + 4 * ff if shape.gated else 6 * h + 2 * kv + 2 * ff
        return elements * width
    if shape.gated:
        return 4 * stream * h + stream * (h + kv) + width * (4 * h + 2 * kv + 4 * ff)
    return 2 * stream * h + width * (4 * h + 2 * kv + 2 * ff)


def _quantized_weights(model: nn.Module) -> list[nn.Parameter]:
    """The weights bitsandbytes stores at 4 bits: every linear layer's but the output head's."""
    out = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and not module.weight.requires_grad \
                and not name.endswith(("lm_head", "score", "classifier")) and "lora_" not in name:
            out.append(module.weight)
    return out


def shape_of(model: nn.Module, cfg: Config, vocab_size: int) -> Shape | None:
    """The Transformer shape of a pretrained model (its config) or of lmforge's own GPT and
    encoder classifier (the config's model section); None for other models (MLP, CNN, RNN,
    an encoder–decoder, ...), whose activations are not estimated."""
    generating = cfg.task == "generation"
    hf = getattr(model, "hf", None)
    config = getattr(hf, "config", None)
    if config is not None:
        hidden = getattr(config, "hidden_size", None)
        layers = getattr(config, "num_hidden_layers", None)
        if not hidden or not layers:
            return None
        heads = getattr(config, "num_attention_heads", 1) or 1
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        ff = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) \
            or 4 * hidden
        gated = any(name.endswith("gate_proj") for name, _ in model.named_modules())
        return Shape(hidden, layers, ff, hidden // heads * kv_heads,
                     getattr(config, "vocab_size", vocab_size) if generating else 0, gated)
    if isinstance(model, (GPT, EncoderClassifier)):
        m = cfg.model
        return Shape(m.d_model, m.n_layers, m.d_ff, m.d_model,
                     vocab_size if generating else 0, False)
    return None


def skeleton(cfg: Config, run: Prepared, recipe: Any, run_dir: Path) -> nn.Module | None:
    """The model training would build, on the meta device: shapes and dtypes, no weights and
    no memory. A pretrained model is made from its config alone (its weights are not read)."""
    if cfg.model.arch == "pretrained":
        if inputs_of(cfg) != "text":
            raise SkeletonError(f"a pretrained model of {inputs_of(cfg)} inputs is not counted")
        return _pretrained_skeleton(cfg, run)
    # pre-training before the fine-tune (classification.pretrain_steps) is training: left out
    untrained = cfg.model_copy(update={"classification": cfg.classification.model_copy(
        update={"pretrain_steps": 0})})
    try:
        with torch.device("meta"):
            model = recipe.build_model(replace(run, cfg=untrained), run_dir, False, False,
                                       lambda _: None)
    except (NotImplementedError, RuntimeError) as error:  # a model that needs real tensors
        raise SkeletonError(" ".join(str(error).split())[:200]) from None
    return model if isinstance(model, nn.Module) else None


class SkeletonError(Exception):
    """The task's model cannot be built without weights (on the meta device)."""


def _pretrained_skeleton(cfg: Config, run: Prepared) -> nn.Module:
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSeq2SeqLM,
        AutoModelForSequenceClassification,
    )

    from lmforge.models.pretrained import (
        PretrainedCausalLM,
        PretrainedClassifier,
        PretrainedSeq2SeqLM,
        pretrained_config,
    )

    m = cfg.model
    config = pretrained_config(m.pretrained, m.revision, m.trust_remote_code)
    generating, translating = cfg.task == "generation", cfg.task == "translation"
    if not generating and not translating:
        labels = (run.labels or {}).get("train") or ["0", "1"]
        config.num_labels = len(set(labels))
    auto = AutoModelForCausalLM if generating else AutoModelForSeq2SeqLM if translating \
        else AutoModelForSequenceClassification
    with torch.device("meta"):
        hf = auto.from_config(config, trust_remote_code=m.trust_remote_code)
    if m.gradient_checkpointing and hasattr(hf, "gradient_checkpointing_enable"):
        hf.gradient_checkpointing_enable()
    model: nn.Module = PretrainedCausalLM(hf) if generating else PretrainedSeq2SeqLM(hf) \
        if translating else PretrainedClassifier(hf)
    adapter = getattr(m, "adapter", None)
    if adapter is not None:
        from lmforge.models.adapters import add_adapter

        # a skeleton's base is counted at 4 bits by estimate_memory, not quantized here
        model = add_adapter(model, adapter.model_copy(update={"kind": "lora"}))
    return model


def token_lengths(run: Prepared, context: int) -> dict[str, Any] | None:
    """Quantiles of the training texts' lengths in tokens, and how many exceed the context."""
    if "chat" in run.parts:  # whole conversations, every split, as prepare measured them
        return run.data_report["length_tokens"]
    texts = run.split_texts.get("train") or []
    if not isinstance(run.tokenizer, TextTokenizer) or not texts or not isinstance(texts[0], str):
        return None  # no text tokenized (a feature table, images, interactions)
    from lmforge.tasks.conversations import token_quantiles

    lengths = [len(ids) for ids in run.tokenizer.encode_plain(texts[:20_000])]
    return token_quantiles(lengths, context)


def chat_samples(run: Prepared, n: int = N_SAMPLES) -> list[list[dict[str, Any]]]:
    """The first `n` training conversations as rendered for training, in pieces of text that
    the loss trains on ("trained": true) or not."""
    samples = []
    for example in run.parts["chat"]["train"][:n]:
        pieces: list[dict[str, Any]] = []
        ids, trained = example.ids.tolist(), example.trained.tolist()
        start = 0
        for i in range(1, len(ids) + 1):
            if i == len(ids) or trained[i] != trained[start]:
                text = run.tokenizer.backend.decode(ids[start:i], skip_special_tokens=False)
                pieces.append({"text": text, "trained": bool(trained[start])})
                start = i
        samples.append(pieces)
    return samples


def check(config: Any, overrides: list[str] | None = None, gpu_memory: str | None = None,
          gpus: int = 1) -> dict[str, Any]:
    """The pre-flight report of a config (see the module's docstring), its memory per GPU for
    a run on `gpus` GPUs (train.strategy). A bad config or bad data raises the LmforgeError
    training would."""
    if gpus < 1:
        raise LmforgeError(f"--gpus {gpus}: give 1 or more")
    cfg = load_config(config, overrides)
    recipe = recipe_for(cfg.task, inputs_of(cfg))
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="lmforge-check-") as tmp:
        run = recipe.prepare(cfg, Path(tmp), False, notes.append)
        report: dict[str, Any] = {"task": cfg.task, "notes": notes, "data": run.data_report}
        if "chat" in run.parts:
            report["samples"] = chat_samples(run)
        report["length_tokens"] = token_lengths(run, cfg.model.max_length)
        try:
            model = skeleton(cfg, run, recipe, Path(tmp))
        except SkeletonError as error:
            notes.append(f"parameters and memory: not estimated (the model cannot be built "
                         f"without its weights: {error})")
            model = None
    report["parameters"] = parameter_counts(model) if model is not None else None
    if model is None:
        report["memory"] = None
        return report
    precision = cfg.train.precision if cfg.train.precision != "auto" else "bf16"
    adapter = getattr(cfg.model, "adapter", None)
    vocab = run.tokenizer.vocab_size if isinstance(run.tokenizer, TextTokenizer) else 0
    estimate = estimate_memory(model, shape_of(model, cfg, vocab), cfg.train.batch_size,
                               cfg.model.max_length, precision,
                               four_bit=adapter is not None and adapter.kind == "qlora")
    if adapter is not None and adapter.kind == "qlora" and not torch.cuda.is_available():
        notes.append("model.adapter.kind qlora loads the base in 4-bit on a CUDA GPU: this "
                     "machine has none, so training here would stop; the estimate is for a GPU")
    if cfg.model.arch not in ("gpt", "pretrained"):  # only these checkpoint (gradient_
        estimate.activations_checkpointed = None     # checkpointing is theirs alone)
    budget = parse_size(gpu_memory) if gpu_memory else _visible_gpu()
    strategy = run_strategy(cfg, model, gpus, budget)
    estimate = per_gpu(estimate, strategy, gpus, model)
    memory: dict[str, Any] = {
        "strategy": strategy, "gpus": gpus,
        "precision": precision, "adapter": adapter.kind if adapter is not None else None,
        "gradient_checkpointing": cfg.model.gradient_checkpointing, **asdict(estimate),
        "peak": estimate.peak(False), "peak_checkpointed": estimate.peak(True),
        "budget": budget,
    }
    if budget is not None:
        memory["largest_batch"] = estimate.largest_batch(budget, False)
        memory["largest_batch_checkpointed"] = estimate.largest_batch(budget, True)
    report["memory"] = memory
    return report


def run_strategy(cfg: Config, model: nn.Module, gpus: int, budget: int | None) -> str | None:
    """The strategy training would choose (training.sharding.choose): None on one GPU; with
    train.strategy auto, ddp when a whole copy fits the budget's share, else fsdp."""
    if gpus == 1:
        return None
    if cfg.train.strategy != "auto":
        return cfg.train.strategy
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    needed = sharding.TRAINING_BYTES_PER_PARAMETER * trainable + 4 * frozen
    return "ddp" if budget is None or needed <= sharding.FITS_SHARE * budget else "fsdp"


def per_gpu(estimate: MemoryEstimate, strategy: str | None, gpus: int, model: nn.Module
            ) -> MemoryEstimate:
    """One GPU's share under `strategy`: DDP keeps a whole copy and a second copy of the
    gradients (its communication buckets); FSDP shards weights, gradients and optimizer state
    over the GPUs, and gathers two blocks' whole weights at a time (one computing, one
    prefetched)."""
    if strategy == "ddp":
        return replace(estimate, gradients=2 * estimate.gradients)
    if strategy != "fsdp":
        return estimate
    blocks = [sum(p.numel() * p.element_size() for p in block.parameters())
              for module in model.modules() if isinstance(module, nn.ModuleList)
              for block in module]
    gathered = 2 * max(blocks, default=0)
    return replace(estimate, weights=-(-estimate.weights // gpus) + gathered,
                   casts=-(-estimate.casts // gpus), gradients=-(-estimate.gradients // gpus),
                   optimizer=-(-estimate.optimizer // gpus))


def _visible_gpu() -> int | None:
    if torch.cuda.is_available():
        return int(torch.cuda.get_device_properties(0).total_memory)
    return None


def _gib(value: int | None) -> str:
    if value is None:
        return "-"
    for unit, size in (("GiB", GIB), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= size:
            return f"{value / size:,.2f} {unit}"
    return f"{value:,} B"


def render_check(report: dict[str, Any], console: Console) -> None:
    """The pre-flight report on a terminal."""
    for note in report["notes"]:  # the data's counts and what was dropped, as training logs
        console.print(note, markup=False)
    for i, pieces in enumerate(report.get("samples", []), start=1):
        console.print(f"sample {i} (the loss trains on the [bold green]highlighted[/] text):")
        text = Text()
        for piece in pieces:
            text.append(piece["text"], style="bold green" if piece["trained"] else "dim")
        console.print(text)
    lengths = report["length_tokens"]
    if lengths:
        quantiles = ", ".join(f"{k} {lengths[k]:,.0f}" for k in ("min", "p50", "p90", "p99",
                                                                  "max") if k in lengths)
        console.print(f"length in tokens: {quantiles}; {lengths['over_context']:,} longer than "
                      "the context (model.max_length)", markup=False)
    params = report["parameters"]
    if params is None:
        console.print("parameters: none trained by gradient (no GPU memory estimate)")
        return
    console.print(f"parameters: {params['total']:,} total, {params['trainable']:,} trainable "
                  f"({100 * params['trainable'] / max(params['total'], 1):.2f}%)")
    _memory_table(report["memory"], console)


def _memory_table(memory: dict[str, Any], console: Console) -> None:
    adapter = memory["adapter"] or "full fine-tune"
    if memory["strategy"] is not None:
        adapter += f", {memory['strategy']} over {memory['gpus']} GPUs"
    batch = f"batch {memory['batch_size']}"
    if memory["activations"] is not None:
        batch += f" x {memory['sequence']} tokens"
    table = Table(title=f"Peak GPU memory per GPU (estimate): {memory['precision']}, {adapter}, "
                        f"{batch}")
    table.add_column("part")
    table.add_column("without checkpointing", justify="right")
    table.add_column("with checkpointing", justify="right")
    for name in ("weights", "casts", "gradients", "optimizer"):
        if name != "casts" or memory[name]:
            shown = "autocast copies" if name == "casts" else name
            table.add_row(shown, _gib(memory[name]), _gib(memory[name]))
    table.add_row("activations", _gib(memory["activations"]),
                  _gib(memory["activations_checkpointed"]))
    table.add_row("peak", _gib(memory["peak"]), _gib(memory["peak_checkpointed"]))
    if memory["budget"] is not None:
        table.add_row(f"largest batch in {_gib(memory['budget'])}",
                      _batch(memory["largest_batch"]), _batch(memory["largest_batch_checkpointed"]))
    console.print(table)
    chosen = "with" if memory["gradient_checkpointing"] else "without"
    console.print(f"this config trains {chosen} gradient checkpointing "
                  "(model.gradient_checkpointing)")
    if memory["activations"] is None:
        console.print("activations are estimated for Transformer models only (lmforge's GPT "
                      "and encoder classifier, pretrained Hugging Face models)")


def _batch(value: int | None) -> str:
    if value is None:
        return "-"
    return f"{value:,}" if value else "none fits"

