"""lmforge's encoder–decoder exported to ONNX as two graphs, run by ONNX Runtime on the CPU behind
the calls of the PyTorch EncoderDecoder that greedy and beam search make (`encode`, `memory_kv`,
`new_cache`, `decode`), so a Translator, `lmforge translate` and the server decode with it
unchanged.

The encoder graph: `source_ids` (B, S), `source_mask` (B, S; 0 at padding) -> `cross.{i}.key` /
`cross.{i}.value` (B, nh, S, hs) of each decoder layer i: the cross-attention keys and values,
computed once per source as PyTorch's memory_kv does (a decoder graph that took the encoder's
output would project it again at every step of every beam).
The decoder graph: `input_ids` (B, T), `source_mask`, the cross keys and values, and
`past.{i}.key` / `past.{i}.value` (B, nh, P, hs) of the self-attention -> `logits` (B, T, vocab)
and `present.{i}.key` / `present.{i}.value` (B, nh, P + T, hs), the next step's past (P is zero
for the first step; the target's positions start at P).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lmforge.models.onnx_generation import (
    INPUT_IDS,
    LOGITS,
    OnnxKVCache,
    check_inputs,
    past_names,
    present_names,
)
from lmforge.models.onnx_runtime import open_session
from lmforge.models.transformer import Seq2SeqConfig

SOURCE_IDS, SOURCE_MASK = "source_ids", "source_mask"
ENCODER_FILE, DECODER_FILE = "encoder.onnx", "decoder.onnx"

MemoryKV = list[tuple[torch.Tensor, torch.Tensor]]


def cross_names(n_layers: int) -> list[str]:
    return [f"cross.{i}.{kind}" for i in range(n_layers) for kind in ("key", "value")]


class OnnxEncoderDecoder(nn.Module):
    """An exported encoder–decoder (see the module's docstring) that greedy_search and
    beam_search run like the PyTorch one; a missing or damaged graph is named when it opens."""

    def __init__(self, encoder: Path, decoder: Path, config: Seq2SeqConfig,
                 threads: int | None = None) -> None:
        super().__init__()
        self.config = config
        self.encoder_path, self.decoder_path = Path(encoder), Path(decoder)
        self.encoder = open_session(self.encoder_path, threads)
        self.decoder = open_session(self.decoder_path, threads)
        n, self.head_size = config.n_layers, config.d_model // config.n_heads
        self.cross_names, self.past_names = cross_names(n), past_names(n)
        check_inputs(self.encoder, self.encoder_path, {SOURCE_IDS, SOURCE_MASK},
                     "the encoder graph of an exported encoder–decoder")
        check_inputs(self.decoder, self.decoder_path,
                     {INPUT_IDS, SOURCE_MASK, *self.cross_names, *self.past_names},
                     f"the decoder graph of an encoder–decoder of {n} layers")
        self.outputs = [LOGITS, *present_names(n)]
        # The device a Translator reads from a model's parameters: the CPU, where sessions run.
        self.anchor = nn.Parameter(torch.empty(0), requires_grad=False)

    def encode(self, src_ids: torch.Tensor, src_mask: torch.Tensor) -> MemoryKV:
        """Every decoder layer's cross-attention keys and values (the encoder graph's outputs)."""
        feeds = {SOURCE_IDS: _int64(src_ids), SOURCE_MASK: _int64(src_mask)}
        arrays = [torch.from_numpy(a) for a in self.encoder.run(self.cross_names, feeds)]
        return list(zip(arrays[0::2], arrays[1::2], strict=True))

    def memory_kv(self, memory: MemoryKV) -> MemoryKV:
        """What encode returned: the graph computed the keys and values already."""
        return memory

    def new_cache(self, batch: int, length: int) -> OnnxKVCache:
        """An empty cache of `batch` rows; it grows step by step (the graph needs no room)."""
        cfg = self.config
        return OnnxKVCache((cfg.n_layers, batch, cfg.n_heads, length, self.head_size))

    def decode(
        self, tgt_ids: torch.Tensor, memory_kv: MemoryKV, src_mask: torch.Tensor,
        cache: OnnxKVCache | None = None, last_only: bool = False,
    ) -> torch.Tensor:
        """Logits (B, T, vocab) of the next target token at every position (the last only with
        `last_only`). With `cache`, tgt_ids are the tokens after the cached ones."""
        B, T = tgt_ids.shape
        step = cache if cache is not None else self.new_cache(B, 0)
        past = step.length
        if past + T > self.config.max_length:
            raise ValueError(f"{past + T} target tokens exceed max_length "
                             f"({self.config.max_length})")
        feeds = {INPUT_IDS: _int64(tgt_ids), SOURCE_MASK: _int64(src_mask)}
        feeds.update(zip(self.cross_names, (t.contiguous().numpy() for kv in memory_kv
                                            for t in kv), strict=True))
        feeds.update(zip(self.past_names, step.past(), strict=True))
        logits, *presents = self.decoder.run(self.outputs, feeds)
        if cache is not None:
            cache.arrays, cache.length = presents, past + T
        return torch.from_numpy(logits[:, -1:] if last_only else logits)

    def forward(
        self, src_ids: torch.Tensor, src_mask: torch.Tensor, tgt_ids: torch.Tensor
    ) -> torch.Tensor:
        """Teacher forcing: logits (B, T, vocab) of each next target token given the source."""
        return self.decode(tgt_ids, self.encode(src_ids, src_mask), src_mask)


def _int64(t: torch.Tensor) -> np.ndarray:
    return t.cpu().numpy().astype(np.int64)


def onnx_files(directory: Path, onnx: dict[str, Any]) -> tuple[Path, Path]:
    """The encoder's and decoder's graphs that an ONNX translation bundle's lmforge.json names."""
    return directory / onnx["file"], directory / onnx.get("decoder_file", DECODER_FILE)
