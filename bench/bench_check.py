"""`lmforge check`'s activation estimate beside what the forward pass really saves for the
backward pass, measured on the CPU: every tensor autograd keeps (torch.autograd.graph's
saved_tensors_hooks, each storage counted once) for one batch through a model of Qwen2.5-0.5B's
width (4 of its 24 layers: per-layer figures are the same) and through lmforge's GPT at
GPT-2 124M's width, in fp32 and under bf16 autocast.

The estimate's transient terms (the logits, their float32 copy for the loss, the gradient the
backward pass starts from) are no saved tensors and are left out of the comparison.
A GPU's peak adds the allocator's rounding and the backward pass's temporaries, which this
does not see: it checks the per-layer and logits arithmetic, not a GPU's peak.

    OMP_NUM_THREADS=2 .venv/bin/python bench/bench_check.py
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
import transformers

from lmforge.check import Shape, estimate_memory
from lmforge.models import GPT, GPTConfig
from lmforge.models.pretrained import PretrainedCausalLM

BATCH, SEQUENCE = 2, 512


def saved_bytes(model: torch.nn.Module, ids: torch.Tensor, autocast: bool) -> int:
    """Bytes of the tensors autograd saves in one forward pass and its loss (weights aside)."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    context = (torch.autocast("cpu", dtype=torch.bfloat16) if autocast
               else contextlib.nullcontext())
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), context:
        logits = model(ids)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), ids.flatten())
    del loss, logits
    return sum(seen.values())


def compare(name: str, model: torch.nn.Module, shape: Shape) -> None:
    ids = torch.randint(0, shape.vocab, (BATCH, SEQUENCE))
    for precision, autocast in (("fp32", False), ("bf16", True)):
        measured = saved_bytes(model, ids, autocast)
        estimate = estimate_memory(model, shape, BATCH, SEQUENCE, precision)
        # what of the estimate is saved for the backward pass: not the logits themselves nor
        # their float32 copy (transient) nor the gradient, but the autocast weight copies
        transient = BATCH * SEQUENCE * shape.vocab * (estimate.activation_bytes + 4)
        predicted = estimate.activations - transient + estimate.casts
        print(f"{name:32s} {precision}: saved {measured / 2**20:8.1f} MiB, estimated "
              f"{predicted / 2**20:8.1f} MiB, ratio {predicted / measured:.3f}")


def main() -> None:
    torch.manual_seed(0)
    qwen = transformers.Qwen2Config(  # Qwen2.5-0.5B's widths, 4 of its layers
        vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=4,
        num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=SEQUENCE,
        tie_word_embeddings=True, attn_implementation="sdpa",
    )
    model = PretrainedCausalLM(transformers.Qwen2ForCausalLM(qwen)).train()
    compare("Qwen2.5-0.5B width, 4 layers", model,
            Shape(896, 4, 4864, 896 // 14 * 2, 151936, gated=True))
    del model
    gpt = GPT(GPTConfig(vocab_size=50257, max_length=SEQUENCE, d_model=768, n_layers=4,
                        n_heads=12, d_ff=3072, dropout=0.0)).train()
    compare("lmforge GPT, GPT-2 124M width", gpt, Shape(768, 4, 3072, 768, 50257, gated=False))



def lora_bench_estimate() -> None:
    """What `lmforge check` estimates for bench/bench_lora.py's run (Qwen2.5-0.5B's shape, a bf16
    base, LoRA r 16 on every projection, bf16, batch 8 x 1024 tokens), to set beside the peak
    that script measures on a GPU."""
    from lmforge.config import AdapterConfig
    from lmforge.models.adapters import add_adapter

    config = transformers.Qwen2Config(
        vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
        num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
        tie_word_embeddings=True,
    )
    with torch.device("meta"):
        hf = transformers.Qwen2ForCausalLM(config).to(torch.bfloat16)
    model = add_adapter(PretrainedCausalLM(hf), AdapterConfig(kind="lora", r=16, alpha=32))
    estimate = estimate_memory(model, Shape(896, 24, 4864, 128, 151936, gated=True), 8, 1024,
                               "bf16")
    states = (estimate.gradients + estimate.optimizer) / 2**30
    for checkpointing in (False, True):
        acts = estimate.activations_checkpointed if checkpointing else estimate.activations
        print(f"bench_lora's run, gradient checkpointing {checkpointing}: estimated peak "
              f"{estimate.peak(checkpointing) / 2**30:.2f} GiB (weights "
              f"{estimate.weights / 2**30:.2f}, gradients + AdamW {states:.3f}, activations "
              f"{acts / 2**30:.2f})")

if __name__ == "__main__":
    main()
    lora_bench_estimate()
