"""lmforge's GPT exported to ONNX with its KV cache as inputs and outputs, run by ONNX Runtime on
the CPU behind the call signature of the PyTorch GPT: `forward(input_ids, key_mask, cache,
last_only) -> logits` and `new_cache(batch, length)`, so the bundle's Generator, `lmforge
generate` and the server decode with it unchanged.

One graph serves the prompt and every later step: its past keys and values have a dynamic length,
zero for a prompt. Inputs: `input_ids` (B, T), `attention_mask` (B, P + T; 0 at left padding) and
`past.{i}.key` / `past.{i}.value` (B, nh, P, hs) of each layer i; outputs: `logits` (B, T, vocab)
and `present.{i}.key` / `present.{i}.value` (B, nh, P + T, hs), the next step's past.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lmforge.errors import LmforgeError
from lmforge.models.onnx_runtime import OnnxClassifier

INPUT_IDS, ATTENTION_MASK, LOGITS = "input_ids", "attention_mask", "logits"


def past_names(n_layers: int) -> list[str]:
    return [f"past.{i}.{kind}" for i in range(n_layers) for kind in ("key", "value")]


def present_names(n_layers: int) -> list[str]:
    return [f"present.{i}.{kind}" for i in range(n_layers) for kind in ("key", "value")]


class OnnxKVCache:
    """The past keys and values as ONNX Runtime returned them, one (B, nh, P, hs) array per layer
    and kind in `past_names` order; each step's outputs replace them. `length`: P."""

    def __init__(self, arrays: list[np.ndarray]) -> None:
        self.arrays = arrays
        self.length = 0


class OnnxGPT(OnnxClassifier):
    """An exported GPT (see the module's docstring) that decodes like the PyTorch one; the
    session is opened (and a missing or damaged file named) as a classifier's is."""

    def __init__(self, path: Path, architecture: dict[str, Any], threads: int | None = None):
        super().__init__(path, threads)
        self.n_layers = int(architecture["n_layers"])
        self.n_heads = int(architecture["n_heads"])
        self.head_size = int(architecture["d_model"]) // self.n_heads
        self.past_names = past_names(self.n_layers)
        expected = {INPUT_IDS, ATTENTION_MASK, *self.past_names}
        found = {i.name for i in self.session.get_inputs()}
        if found != expected:
            missing = sorted(expected - found) or sorted(found - expected)
            raise LmforgeError(
                f"{self.path}: not a GPT exported with its KV cache for {self.n_layers} layers "
                f"(inputs differ at {', '.join(missing[:3])})"
            )
        self.outputs = [LOGITS, *present_names(self.n_layers)]
        # The device a decoder reads from a model's parameters: the CPU, where the session runs.
        self.anchor = nn.Parameter(torch.empty(0), requires_grad=False)

    def new_cache(self, batch: int, length: int) -> OnnxKVCache:
        """An empty cache of `batch` rows (it grows step by step; `length` is not needed)."""
        empty = np.zeros((batch, self.n_heads, 0, self.head_size), dtype=np.float32)
        return OnnxKVCache([empty] * len(self.past_names))

    def forward(  # type: ignore[override]
        self,
        input_ids: torch.Tensor,
        key_mask: torch.Tensor | None = None,
        cache: OnnxKVCache | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Logits (B, T, vocab), or of the last position (B, 1, vocab). With `cache`, input_ids
        follow the cached tokens and the cache grows by T; `key_mask` (B, past + T) is False at
        left padding, as for the PyTorch GPT."""
        B, T = input_ids.shape
        step = cache if cache is not None else self.new_cache(B, 0)
        past = step.length
        if key_mask is None:
            mask = np.ones((B, past + T), dtype=np.int64)
        else:
            mask = key_mask.cpu().numpy().astype(np.int64)
        feeds = {INPUT_IDS: input_ids.cpu().numpy().astype(np.int64), ATTENTION_MASK: mask}
        feeds.update(zip(self.past_names, step.arrays, strict=True))
        logits, *presents = self.session.run(self.outputs, feeds)
        if cache is not None:
            cache.arrays, cache.length = presents, past + T
        logits = torch.from_numpy(logits[:, -1:] if last_only else logits)
        return logits
