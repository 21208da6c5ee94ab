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
    and kind in `past_names` order; each step's outputs replace them. `length`: P.

    `k` and `v` are the same as (layers, B, nh, P, hs) tensors, the layout of the PyTorch GPT's
    cache: a decoder that merges or trims the rows of several generations (DecodeBatch) reads
    them, and writes a new cache's (`length` columns, allocated when first asked for)."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape  # (layers, B, nh, columns, hs)
        self.arrays: list[np.ndarray] | None = None
        self.length = 0
        self._kv: tuple[torch.Tensor, torch.Tensor] | None = None

    def _tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.arrays is not None:
            keys, values = self.arrays[0::2], self.arrays[1::2]
            return torch.from_numpy(np.stack(keys)), torch.from_numpy(np.stack(values))
        if self._kv is None:
            self._kv = (torch.zeros(self.shape), torch.zeros(self.shape))
        return self._kv

    @property
    def k(self) -> torch.Tensor:
        return self._tensors()[0]

    @property
    def v(self) -> torch.Tensor:
        return self._tensors()[1]

    def past(self) -> list[np.ndarray]:
        """The arrays the graph takes as its past: each layer's first `length` columns."""
        if self.arrays is None and self._kv is None:  # nothing written: an empty past
            layers, rows, heads, _, size = self.shape
            empty = np.zeros((rows, heads, 0, size), dtype=np.float32)
            self.arrays = [empty] * (2 * layers)
        elif self.arrays is None:
            k, v = self._tensors()
            self.arrays = [t[i, :, :, : self.length].contiguous().numpy()
                           for i in range(len(k)) for t in (k, v)]
            self._kv = None
        return self.arrays

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep row rows[i] as row i (beam search: each beam continues the one it grew from)."""
        picked = rows.cpu().numpy()
        self.arrays = [array[picked] for array in self.past()]


def check_inputs(session: Any, path: Path, expected: set[str], what: str) -> None:
    """An LmforgeError naming `path` if the graph's inputs are not `expected`: the graph of
    another model than the one lmforge.json describes."""
    found = {i.name for i in session.get_inputs()}
    if found != expected:
        missing = sorted(expected - found) or sorted(found - expected)
        raise LmforgeError(f"{path}: not {what} (inputs differ at {', '.join(missing[:3])})")


class OnnxGPT(OnnxClassifier):
    """An exported GPT (see the module's docstring) that decodes like the PyTorch one; the
    session is opened (and a missing or damaged file named) as a classifier's is."""

    gpt_cache_layout = True  # its cache's k and v are the PyTorch GPT's: generations share a batch

    def __init__(self, path: Path, architecture: dict[str, Any], threads: int | None = None):
        super().__init__(path, threads)
        self.n_layers = int(architecture["n_layers"])
        self.n_heads = int(architecture["n_heads"])
        self.head_size = int(architecture["d_model"]) // self.n_heads
        self.past_names = past_names(self.n_layers)
        check_inputs(self.session, self.path, {INPUT_IDS, ATTENTION_MASK, *self.past_names},
                     f"a GPT exported with its KV cache for {self.n_layers} layers")
        self.outputs = [LOGITS, *present_names(self.n_layers)]
        # The device a decoder reads from a model's parameters: the CPU, where the session runs.
        self.anchor = nn.Parameter(torch.empty(0), requires_grad=False)

    def new_cache(self, batch: int, length: int) -> OnnxKVCache:
        """An empty cache of `batch` rows: it grows step by step, and has room for `length`
        columns only where a decoder writes its `k` and `v` (the graph needs no room)."""
        return OnnxKVCache((self.n_layers, batch, self.n_heads, length, self.head_size))

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
        feeds.update(zip(self.past_names, step.past(), strict=True))
        logits, *presents = self.session.run(self.outputs, feeds)
        if cache is not None:
            cache.arrays, cache.length = presents, past + T
        logits = torch.from_numpy(logits[:, -1:] if last_only else logits)
        return logits
