"""Tiny pretrained causal LMs and chat data for the chat and `lmforge check` tests, made in the
test: a 2-layer LlamaForCausalLM with a byte-level BPE tokenizer trained here and given a
ChatML-style Jinja chat template (or none)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def tiny_llama(folder: Path, template: str | None = CHATML, vocab_size: int = 300) -> Path:
    """A random 2-layer Llama and its tokenizer, saved as transformers saves them; the
    tokenizer's end-of-text is <|im_end|> (as Qwen's chat models' is)."""
    words = [f"add {a} and {b} is {a + b}" for a in range(10) for b in range(10)]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(words + ["system user assistant be brief"], trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    ))
    hf = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    if template is not None:
        hf.chat_template = template
    hf.save_pretrained(folder)
    config = transformers.LlamaConfig(
        vocab_size=len(hf), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
        eos_token_id=hf.eos_token_id, pad_token_id=hf.pad_token_id, bos_token_id=None,
        tie_word_embeddings=False,
    )
    transformers.logging.set_verbosity_error()
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def sums(n: int, seed: int = 0) -> list[list[dict[str, str]]]:
    """Distinct two-turn conversations: a sum asked and answered, then another."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        a, b, c = rng.randint(0, 9), rng.randint(0, 9), rng.randint(0, 9)
        out.append([
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": f"add {a} and {b} ({i})"},
            {"role": "assistant", "content": f"{a + b}"},
            {"role": "user", "content": f"add {c} and {a}"},
            {"role": "assistant", "content": f"{c + a}"},
        ])
    return out


def write_jsonl(path: Path, rows: list, extra_lines: list[str] = ()) -> Path:
    lines = [json.dumps(row, ensure_ascii=False) for row in rows] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def chat_config(data: Path, model: Path, cache: Path, **train) -> dict:
    return {
        "task": "generation",
        "data": {"path": str(data), "cache_dir": str(cache)},
        "model": {"arch": "pretrained", "pretrained": str(model), "max_length": 64},
        "train": {"max_steps": 4, "batch_size": 8, "lr": 3e-3, "eval_every": 4,
                  "device": "cpu", "precision": "fp32", **train},
    }
