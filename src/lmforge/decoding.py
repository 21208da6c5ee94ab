"""Decoding: how the next token is chosen (temperature, top-k, top-p, repetition penalty),
continuous batching of many generations over one KV cache (DecodeBatch, SlotBatch, with CUDA
graphs on a GPU over a StaticKVCache), the assembly of the drawn tokens into streamed text
(GenerationJob), and greedy and beam search over an encoder–decoder (translation).

The bundle's Generator and the server's generation engine decode with it; it knows nothing of
either.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.config import GenerateConfig
from lmforge.models import GPT, GPTConfig
from lmforge.models.transformer import KVCache
from lmforge.tokenization import TextTokenizer

# --- choosing the next token ------------------------------------------------------------------


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen from the model's scores (already validated)."""

    temperature: float = 1.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    repetition_penalty: float = 1.0  # 1: off


# One generator for every row of a generation, or one per row (each prompt its own stream of
# random numbers, so its text never depends on the rows decoded beside it).
Rngs = torch.Generator | Sequence[torch.Generator]


def next_tokens(
    logits: torch.Tensor,
    seen: torch.Tensor | None,
    sampling: Sampling,
    generator: Rngs,
) -> torch.Tensor:
    """(B,) next tokens from (B, vocab) scores: repetition penalty, then temperature, top-k
    and top-p (nucleus) filtering, then a draw; or the likeliest token at temperature 0."""
    scores = sampling_scores(logits, seen, sampling)
    uniform = None if sampling.temperature == 0 else uniforms(generator, len(logits), logits.device)
    return pick_tokens(logits, scores, sampling, uniform)


def sampling_scores(
    logits: torch.Tensor, seen: torch.Tensor | None, sampling: Sampling
) -> torch.Tensor:
    """The scores the next token is drawn from (float32): penalised, divided by the
    temperature, -inf outside top-k and top-p; at temperature 0, only penalised. Row by row, so
    the rows of several generations with the same sampling can go through at once."""
    logits = logits.float()
    if sampling.repetition_penalty != 1.0:  # CTRL's penalty, as in transformers
        penalised = torch.where(
            logits > 0, logits / sampling.repetition_penalty, logits * sampling.repetition_penalty
        )
        logits = torch.where(seen, penalised, logits)
    if sampling.temperature == 0:
        return logits
    # Shifted so the best score is 0 before dividing: however small the temperature, the
    # scores stay finite (the likeliest token takes all the probability), never inf or NaN.
    logits = (logits - logits.amax(dim=-1, keepdim=True)) / sampling.temperature
    if 0 < sampling.top_k < logits.shape[-1]:
        kth = torch.topk(logits, sampling.top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        mass_before = sorted_logits.softmax(-1).cumsum(-1) - sorted_logits.softmax(-1)
        drop = mass_before >= sampling.top_p  # the likeliest token is always kept
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return logits


def uniforms(generator: Rngs, rows: int, device: torch.device) -> torch.Tensor:
    """(rows,) uniform numbers on `device`: `rows` from one generator, or one from each row's."""
    if isinstance(generator, torch.Generator):
        return torch.rand(rows, generator=generator, device=generator.device).to(device)
    if len(generator) != rows:
        raise ValueError(f"{len(generator)} random generators for {rows} rows")
    return torch.cat([torch.rand(1, generator=g, device=g.device) for g in generator]).to(device)


def pick_tokens(
    logits: torch.Tensor,
    scores: torch.Tensor,
    sampling: Sampling,
    uniform: torch.Tensor | None,
) -> torch.Tensor:
    """(B,) tokens from `sampling_scores`' scores: the likeliest at temperature 0, else drawn
    with one uniform number per row. A row whose scores are unusable (NaN or inf: a model that
    overflowed; or nothing left to draw from) takes its likeliest logit instead: one bad row
    never fails the rows decoded beside it."""
    if sampling.temperature == 0:
        tokens = scores.argmax(dim=-1)
    else:
        tokens = inverse_cdf(scores.softmax(dim=-1), uniform)
    unusable = ~scores.amax(dim=-1).isfinite()  # amax is NaN if any score is
    fallback = logits.float().nan_to_num(nan=float("-inf")).argmax(dim=-1)
    return torch.where(unusable, fallback, tokens)


def inverse_cdf(probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """The token whose cumulative probability first exceeds each row's uniform number: a draw
    whose random numbers can come from different generators, row by row, in one batch (the
    rows of several generations, each with its own seed). A token of probability 0 is never
    drawn."""
    cdf = probs.cumsum(dim=-1)
    total = cdf[:, -1:]
    point = torch.minimum(uniform[:, None] * total, total.nextafter(torch.zeros_like(total)))
    # clamped: a row of NaN probabilities finds no token, and must not name one past the end
    return torch.searchsorted(cdf, point, right=True).squeeze(1).clamp(max=probs.shape[-1] - 1)


def left_padded(
    prompts: list[list[int]], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, key_mask), both (B, width of the longest prompt): prompts padded on the left, the
    mask False at padding."""
    B, width = len(prompts), max(len(p) for p in prompts)
    ids = torch.zeros((B, width), dtype=torch.long)
    key_mask = torch.zeros((B, width), dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        key_mask[row, width - len(prompt) :] = True
    return ids.to(device), key_mask.to(device)


def prompt_seen(ids: torch.Tensor, key_mask: torch.Tensor, vocab: int) -> torch.Tensor:
    """(B, vocab): which tokens each prompt holds (what the repetition penalty penalises)."""
    seen = torch.zeros((ids.shape[0], vocab), dtype=torch.bool, device=ids.device)
    # padding stands in as the row's last (real) prompt token, already marked seen
    return seen.scatter_(1, torch.where(key_mask, ids, ids[:, -1:]), True)


# --- continuous batching ----------------------------------------------------------------------


@dataclass
class _Group:
    """One generation in a DecodeBatch: its rows, how it samples, and where it stands."""

    key: Hashable
    prompts: list[list[int]]
    sampling: Sampling
    rng: Rngs
    steps_left: int  # tokens it may still draw (max_new_tokens, or until the context is full)
    logits: torch.Tensor | None = None  # (rows, vocab): scores of the next token
    seen: torch.Tensor | None = None  # (rows, vocab), with a repetition penalty only
    token: torch.Tensor | None = None  # (rows,): drawn, not yet run through the model

    @property
    def rows(self) -> int:
        return len(self.prompts)


def _rows_of(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The groups' rows as one tensor (a single group's as they are: no copy)."""
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


class StaticKVCache(KVCache):
    """GPT's KVCache, which a static step can take over: until `make_static` it fills position
    after position as KVCache does (the prompts); after, each row's one new token is written at
    its column in `write_at` (B,), and attention sees every column (a mask hides the unused
    ones): fixed shapes throughout, as a CUDA graph needs."""

    def __init__(
        self, cfg: GPTConfig, batch: int, length: int, device: torch.device, dtype: torch.dtype
    ) -> None:
        super().__init__(cfg, batch, length, device, dtype)
        self.write_at: torch.Tensor | None = None
        self._rows: torch.Tensor | None = None

    def make_static(self, write_at: torch.Tensor) -> None:
        self.write_at = write_at
        self._rows = torch.arange(len(write_at), device=write_at.device)

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.write_at is None:
            return super().update(layer, k, v)
        # (B, nh, 1, hs): each row's one token at its own column
        self.k[layer][self._rows, :, self.write_at] = k[:, :, 0]
        self.v[layer][self._rows, :, self.write_at] = v[:, :, 0]
        return self.k[layer], self.v[layer]


class _StaticStep:
    """One GPT step over a StaticKVCache with every input in a buffer of fixed shape:
    `token` (B, 1), `positions` (B, 1), `mask` (B, capacity) and the cache's `write_at` (B,),
    which the caller sets before each `run()`. On a GPU it is captured once as a CUDA graph and
    replayed every step (one launch instead of hundreds: at small batches the host's kernel
    launches, not the GPU, bound eager decoding); on the CPU it runs as it is."""

    def __init__(
        self, model: GPT, cache: StaticKVCache, mask: torch.Tensor, positions: torch.Tensor,
        write_at: torch.Tensor,
    ) -> None:
        self.model, self.cache, self.mask, self.positions = model, cache, mask, positions
        self.token = torch.zeros((len(mask), 1), dtype=torch.long, device=mask.device)
        cache.make_static(write_at)
        self.graph: torch.cuda.CUDAGraph | None = None
        if mask.device.type == "cuda":
            # Warm up on a side stream (as capture requires), then capture. Warm-up writes the
            # cache at the next columns, which the first real step overwrites.
            side = torch.cuda.Stream(mask.device)
            side.wait_stream(torch.cuda.current_stream(mask.device))
            with torch.cuda.stream(side):
                for _ in range(2):
                    self._forward()
            torch.cuda.current_stream(mask.device).wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.logits = self._forward()

    def _forward(self) -> torch.Tensor:
        """GPT's forward of one token per row at its position: the next scores (B, vocab).
        The mask lets each row attend to its filled columns, the new one included."""
        model = self.model
        x = model.tok_emb(self.token) + model.pos_emb(self.positions)  # (B, 1, D)
        mask = self.mask[:, None, None, :]  # (B, 1, 1, capacity)
        for block in model.blocks:
            x = block(x, mask, self.cache)
        return F.linear(model.ln_f(x), model.tok_emb.weight)[:, -1]  # tied output layer

    def run(self) -> torch.Tensor:
        """The next scores (B, vocab); valid until the next run."""
        if self.graph is None:
            return self._forward()
        self.graph.replay()
        return self.logits


class _AlignedStaticStep(_StaticStep):
    """A static step for DecodeBatch's left-padded rows, which all write the same column."""

    def __init__(self, model: GPT, cache: StaticKVCache, key_mask: torch.Tensor) -> None:
        B, width = key_mask.shape
        mask = torch.zeros((B, cache.k.shape[3]), dtype=torch.bool, device=key_mask.device)
        mask[:, :width] = key_mask
        positions = key_mask.sum(1, keepdim=True)  # (B, 1): the next token's position
        write_at = torch.full((B,), width, device=key_mask.device)
        self.width = width
        super().__init__(model, cache, mask, positions, write_at)

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        """The next scores (B, vocab) after `tokens` (B,); valid until the next call."""
        self.token.copy_(tokens[:, None])
        self.mask[:, self.width] = True
        self.cache.write_at.fill_(self.width)
        logits = self.run()
        self.positions += 1
        self.width += 1
        self.cache.length += 1
        return logits


class DecodeBatch:
    """Generations decoded together, one token each per step (continuous batching).

    Each generation is a group of prompts with its own sampling, random generator and length.
    A group may join between any two steps and leaves when its caller is done with it, so a
    long generation never holds up a short one and a new one never waits for a batch to end:

        batch.add(key, prompts, max_new_tokens, sampling, rng)   # any number, any time
        for key, tokens, last in batch.sample(): ...             # prefill new groups; draw
        batch.leave(keys_done)                                   # stop strings, clients gone
        batch.advance()                                          # run the drawn tokens

    All rows share one KV cache, left-padded to a common width W (the longest row); the key mask
    (B, W) marks real tokens and positions count real tokens only, so a row is computed as it
    would be alone. A group draws its tokens from its own rows' scores with its own generator
    (or each row with its own), as `decode_tokens` would for it alone (up to the float rounding
    of a batch of another shape).

    Joining and leaving copy the cache into one of the new shape: O(cache) per event, as much
    as one step reads, so cheap while generations run for more than a few tokens. A model whose
    cache is not lmforge's KVCache (a pretrained Hugging Face model) decodes one group at a time:
    `can_take` says when another may join.

    With `static_after` N, once the rows have stayed the same for N steps (and every group has
    at least `STATIC_MIN_STEPS` to go), lmforge's GPT decodes with a static step, a CUDA graph on
    a GPU, until the rows change. None (the default on the CPU, where it gains nothing): never.
    """

    STATIC_MIN_STEPS = 8  # a CUDA graph's capture costs a few steps: worth it for longer runs

    def __init__(
        self, model: nn.Module, context: int, static_after: int | None | str = "auto"
    ) -> None:
        self.model, self.context = model, context
        self.device = next(model.parameters()).device
        if static_after == "auto":
            static_after = 0 if self.device.type == "cuda" else None
        self.static_after = static_after if isinstance(model, GPT) else None
        self.groups: list[_Group] = []  # decoding, in row order
        self.waiting: list[_Group] = []  # added, prefilled at the next sample()
        self.cache: Any = None
        self.key_mask: torch.Tensor | None = None  # (B, W)
        self.ragged = False  # any padding: attention needs the mask
        self.static: _StaticStep | None = None
        self.steps_unchanged = 0  # steps since the rows last changed

    @property
    def rows(self) -> int:
        return sum(g.rows for g in self.groups + self.waiting)

    def can_take(self, rows: int, max_rows: int) -> bool:
        """Whether a group of `rows` prompts may join now, at most `max_rows` rows in all (a
        group alone may have more)."""
        if not self.groups and not self.waiting:
            return True
        # lmforge's GPT, or a model whose cache has its layout (its ONNX export)
        joins = isinstance(self.model, GPT) or getattr(self.model, "gpt_cache_layout", False)
        return joins and self.rows + rows <= max_rows

    def add(
        self,
        key: Hashable,
        prompts: list[list[int]],
        max_new_tokens: int,
        sampling: Sampling,
        rng: Rngs,
    ) -> None:
        """Queue a generation; it joins the batch at the next sample(). Prompts must leave room
        for one token in the context. `rng`: one generator for all its rows, or one per row."""
        if any(g.token is not None for g in self.groups):
            raise RuntimeError("add() between sample() and advance()")
        steps = min(max_new_tokens, self.context - max(len(p) for p in prompts))
        if steps < 1:
            raise ValueError("no room for a new token: max_new_tokens < 1 or the context is full")
        self.waiting.append(_Group(key, prompts, sampling, rng, steps))

    @torch.no_grad()
    def sample(self) -> list[tuple[Hashable, torch.Tensor, bool]]:
        """Draw every group's next tokens: (key, (rows,) tokens, whether that was its last)."""
        if self.waiting:
            self._prefill()
        # Groups that sample alike are scored together (one set of kernels, not one per
        # group); each still draws with its own generator from its own rows (and, with a
        # repetition penalty, against its own rows' history).
        alike: dict[Sampling, list[_Group]] = {}
        for g in self.groups:
            alike.setdefault(g.sampling, []).append(g)
        for sampling, groups in alike.items():
            logits = _rows_of([g.logits for g in groups])
            seen = _rows_of([g.seen for g in groups]) if groups[0].seen is not None else None
            scores = sampling_scores(logits, seen, sampling)
            uniform = None  # greedy; else one small draw per generation (or row), one batch
            if sampling.temperature != 0:
                uniform = torch.cat([uniforms(g.rng, g.rows, self.device) for g in groups])
            tokens = pick_tokens(logits, scores, sampling, uniform).split(
                [g.rows for g in groups]
            )
            for g, token in zip(groups, tokens, strict=True):
                g.token = token
                if g.seen is not None:
                    g.seen[torch.arange(g.rows, device=self.device), token] = True
        for g in self.groups:
            g.steps_left -= 1
        return [(g.key, g.token, g.steps_left <= 0) for g in self.groups]

    def clear(self) -> None:
        """Drop every generation (after a failed step, say)."""
        self.groups, self.waiting = [], []
        self._reset(None, None)

    def leave(self, keys: Iterable[Hashable]) -> None:
        """Drop these groups (unknown keys are ignored); the cache keeps the others' rows only,
        trimmed of the padding no row needs any more."""
        keys = set(keys)
        self.waiting = [g for g in self.waiting if g.key not in keys]
        if not any(g.key in keys for g in self.groups):
            return
        kept, rows, start = [], [], 0
        for g in self.groups:
            if g.key not in keys:
                kept.append(g)
                rows.extend(range(start, start + g.rows))
            start += g.rows
        self.groups = kept
        if not kept:
            self._reset(None, None)
            return
        index = torch.tensor(rows, device=self.device)
        width = int(self.key_mask[index].sum(1).max())  # the longest row kept
        self._rebuild([(self.cache, self.key_mask, index)], width)

    @torch.no_grad()
    def advance(self) -> None:
        """Run the drawn tokens through the model: the next scores of every group. Groups that
        drew their last token leave first."""
        self.leave([g.key for g in self.groups if g.steps_left <= 0])
        if not self.groups:
            return
        tokens = torch.cat([g.token for g in self.groups])
        if self.static is None and self._static_worth_it():
            self.static = _AlignedStaticStep(self.model, self.cache, self.key_mask)
        self.key_mask = torch.cat([self.key_mask, self.key_mask.new_ones((len(tokens), 1))], 1)
        if self.static is not None:
            logits = self.static(tokens)
        else:
            mask = self.key_mask if self.ragged else None
            logits = self.model(tokens[:, None], mask, self.cache, last_only=True)[:, -1]
        self.steps_unchanged += 1
        self._hand_out(logits, self.groups)

    def _static_worth_it(self) -> bool:
        return (
            self.static_after is not None
            and self.steps_unchanged >= self.static_after
            and min(g.steps_left for g in self.groups) >= self.STATIC_MIN_STEPS
        )

    def _run_prompts(
        self, groups: list[_Group], room: int
    ) -> tuple[Any, torch.Tensor]:
        """Run the groups' prompts (together, left-padded) into a new cache with `room` more
        columns: each group gets its next scores (and, with a repetition penalty, what its
        prompts hold). Returns the cache and its key mask."""
        ids, key_mask = left_padded([p for g in groups for p in g.prompts], self.device)
        cache = self._new_cache(len(ids), ids.shape[1] + room)
        ragged = not bool(key_mask.all())  # no padding: no mask, and the fused causal kernels
        logits = self.model(ids, key_mask if ragged else None, cache, last_only=True)[:, -1]
        self._hand_out(logits, groups)
        start = 0
        for g in groups:
            if g.sampling.repetition_penalty != 1.0:
                rows = slice(start, start + g.rows)
                g.seen = prompt_seen(ids[rows], key_mask[rows], logits.shape[-1])
            start += g.rows
        return cache, key_mask

    def _prefill(self) -> None:
        """Run the waiting groups' prompts and merge them into the batch."""
        groups, self.waiting = self.waiting, []
        # Alone, the cache is used as it is: room for every step. Else _rebuild makes room.
        room = 0 if self.groups else max(g.steps_left for g in groups)
        cache, key_mask = self._run_prompts(groups, room)
        width = key_mask.shape[1]
        if not self.groups:
            self.groups = groups
            self._reset(cache, key_mask)
            return
        old = (self.cache, self.key_mask, None)
        self.groups += groups
        self._rebuild([old, (cache, key_mask, None)], max(self.key_mask.shape[1], width))

    def _hand_out(self, logits: torch.Tensor, groups: list[_Group]) -> None:
        start = 0
        for g in groups:
            g.logits, g.token = logits[start : start + g.rows], None
            start += g.rows

    def _rebuild(
        self, parts: list[tuple[KVCache, torch.Tensor, torch.Tensor | None]], width: int
    ) -> None:
        """One cache and key mask of `width` columns from parts (a cache, its key mask, and
        which of its rows, None: all), each left-padded or trimmed of its leading padding, with
        room for every group's remaining steps."""
        masks = [mask if rows is None else mask[rows] for _, mask, rows in parts]
        rows_in_all = sum(len(mask) for mask in masks)
        cache = self._new_cache(rows_in_all, width + max(g.steps_left for g in self.groups))
        key_mask = torch.zeros((rows_in_all, width), dtype=torch.bool, device=self.device)
        start = 0
        for (part, _, rows), mask in zip(parts, masks, strict=True):
            n, w = mask.shape
            take = min(w, width)
            for mine, theirs in ((cache.k, part.k), (cache.v, part.v)):
                source = theirs[:, :, :, w - take : w]
                mine[:, start : start + n, :, width - take : width] = (
                    source if rows is None else source[:, rows]
                )
            key_mask[start : start + n, width - take :] = mask[:, w - take :]
            start += n
        cache.length = width
        self._reset(cache, key_mask)

    def _new_cache(self, rows: int, length: int) -> Any:
        """lmforge's GPT: a StaticKVCache, which a static step may take over; another model:
        its own cache."""
        if isinstance(self.model, GPT):
            weight = self.model.tok_emb.weight
            return StaticKVCache(self.model.config, rows, length, weight.device, weight.dtype)
        return self.model.new_cache(rows, length)

    def _reset(self, cache: Any, key_mask: torch.Tensor | None) -> None:
        """New rows: their cache and key mask; any static step is for the old ones."""
        self.cache, self.key_mask, self.static, self.steps_unchanged = cache, key_mask, None, 0
        self.ragged = key_mask is not None and not bool(key_mask.all())


class SlotBatch(DecodeBatch):
    """DecodeBatch's interface over a fixed set of slots, as servers batch on a GPU: `slots`
    rows, each with the whole context, in one KV cache allocated once. A generation's rows take
    free slots when it joins and give them back when it leaves; nobody else's rows move, so
    every step replays the same CUDA graph however often generations come and go (where
    DecodeBatch would copy its cache and decode eagerly). A step attends over the whole context
    of every slot: bytes a GPU reads faster than the host launches kernels, while on a CPU
    DecodeBatch's padded width is cheaper. lmforge's GPT only."""

    def __init__(self, model: GPT, context: int, slots: int) -> None:
        super().__init__(model, context, static_after=None)
        device = self.device
        self.cache = self._new_cache(slots, context)
        self.mask = torch.zeros((slots, context), dtype=torch.bool, device=device)
        self.positions = torch.zeros((slots, 1), dtype=torch.long, device=device)
        self.write_at = torch.zeros(slots, dtype=torch.long, device=device)
        self.static: _StaticStep | None = None  # made at the first advance (a graph on a GPU)
        self.clear()

    def can_take(self, rows: int, max_rows: int) -> bool:
        return rows <= len(self.free) - sum(g.rows for g in self.waiting)

    def clear(self) -> None:
        self.groups, self.waiting = [], []
        self.free = list(range(len(self.mask)))
        self.slots_of: dict[Hashable, list[int]] = {}
        self.slot_index: dict[Hashable, torch.Tensor] = {}  # the same, on the device
        self._empty(slice(None))

    def _empty(self, slots: torch.Tensor | slice) -> None:
        """Free slots attend to column 0 only (no row of attention fully masked) and write
        there; whatever they compute is never read."""
        self.mask[slots] = False
        self.mask[slots, 0] = True
        self.positions[slots] = 0
        self.write_at[slots] = 0

    def _prefill(self) -> None:
        """Run the waiting groups' prompts; copy each row's keys and values into a free slot."""
        groups, self.waiting = self.waiting, []
        cache, key_mask = self._run_prompts(groups, room=0)
        width, lengths = key_mask.shape[1], key_mask.sum(1).tolist()
        row = 0
        for g in groups:
            slots = [self.free.pop() for _ in range(g.rows)]
            self.slots_of[g.key] = slots
            self.slot_index[g.key] = torch.tensor(slots, device=self.device)
            for slot in slots:
                n = lengths[row]  # the prompt's tokens: the last n columns of its padded row
                self.cache.k[:, slot, :, :n] = cache.k[:, row, :, width - n : width]
                self.cache.v[:, slot, :, :n] = cache.v[:, row, :, width - n : width]
                self.mask[slot] = False
                self.mask[slot, :n] = True
                self.positions[slot] = n
                self.write_at[slot] = n
                row += 1
        self.groups += groups

    def leave(self, keys: Iterable[Hashable]) -> None:
        keys = set(keys)
        self.waiting = [g for g in self.waiting if g.key not in keys]
        for g in self.groups:
            if g.key in keys:
                self._empty(self.slot_index.pop(g.key))
                self.free += self.slots_of.pop(g.key)
        self.groups = [g for g in self.groups if g.key not in keys]

    @torch.no_grad()
    def advance(self) -> None:
        self.leave([g.key for g in self.groups if g.steps_left <= 0])
        if not self.groups:
            return
        if self.static is None:
            self.static = _StaticStep(
                self.model, self.cache, self.mask, self.positions, self.write_at
            )
        slots = torch.cat([self.slot_index[g.key] for g in self.groups])
        self.static.token[slots, 0] = torch.cat([g.token for g in self.groups])
        self.mask[slots, self.write_at[slots]] = True
        logits = self.static.run()
        self.positions[slots] += 1
        self.write_at[slots] += 1
        for g in self.groups:
            g.logits, g.token = logits[self.slot_index[g.key]], None


def decode_tokens(
    model: nn.Module,
    prompts: list[list[int]],
    max_new_tokens: int,
    context: int,
    sampling: Sampling,
    generator: Rngs,
    use_cache: bool = True,
) -> Iterator[torch.Tensor]:
    """Yield the next token of every prompt, (B,) per step, for max_new_tokens steps or until
    the context is full. Prompts of different lengths are padded on the left. The caller stops
    iterating when it has what it needs (every row at its end-of-text or stop string).

    With use_cache, a DecodeBatch of this one generation: each step runs the model on one new
    token per row against the cached keys and values. Without, the model runs on the whole
    sequence again every step (slow; the reference the cache must match).
    """
    if max_new_tokens < 1:
        return
    if use_cache:
        batch = DecodeBatch(model, context)
        batch.add(None, prompts, max_new_tokens, sampling, generator)
        while batch.waiting or batch.groups:
            ((_, token, last),) = batch.sample()
            yield token
            if last:
                return
            batch.advance()
        return
    device = next(model.parameters()).device
    ids, key_mask = left_padded(prompts, device)
    ragged = not bool(key_mask.all())
    steps = min(max_new_tokens, context - ids.shape[1])
    seen: torch.Tensor | None = None

    @torch.no_grad()  # not around the loop: a suspended generator must not leak the mode
    def last_logits() -> torch.Tensor:
        return model(ids, key_mask if ragged else None, last_only=True)[:, -1]

    for _ in range(steps):
        logits = last_logits()
        if seen is None:
            seen = prompt_seen(ids, key_mask, logits.shape[-1])
        token = next_tokens(logits, seen, sampling, generator)
        yield token
        seen[torch.arange(len(token), device=device), token] = True
        ids = torch.cat([ids, token[:, None]], dim=1)
        key_mask = torch.cat([key_mask, key_mask.new_ones((len(token), 1))], dim=1)


# --- text: the drawn tokens as streamed text --------------------------------------------------


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
    with `take` and gets the StreamEvents they make; `end` closes the rows still open.

    `tokenizer` decodes the tokens (its end-of-text token ends a row); `normalize`: the model
    was trained on NFKC-normalized text (the bundle's clean.normalize), so the stop strings are
    normalized too."""

    def __init__(
        self,
        tokenizer: TextTokenizer,
        prompts: list[list[int]],
        settings: GenerateConfig,
        rngs: list[torch.Generator],
        normalize: bool,
    ) -> None:
        self.prompts, self.rngs = prompts, rngs  # a random generator per prompt
        self.max_new_tokens = settings.max_new_tokens
        self.sampling = Sampling(
            settings.temperature, settings.top_k, settings.top_p, settings.repetition_penalty
        )
        stop = settings.stop
        if normalize:  # the model writes NFKC text: "，" comes out as ","
            stop = [unicodedata.normalize("NFKC", s) for s in stop]
        self.eos_id = tokenizer.eos_id
        self.rows = [_Continuation(tokenizer, stop) for _ in prompts]

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


# --- an encoder–decoder: greedy and beam search -----------------------------------------------


@dataclass
class Hypothesis:
    """One source's output: its target tokens (the start and end tokens left out) and score."""

    tokens: list[int]
    score: float  # sum of the tokens' log-probabilities (end token included) / length ** penalty
    finished: bool  # it ended with the end token (False: max_new_tokens or max_length reached)


def block_repeated_ngrams(logprobs: torch.Tensor, tokens: torch.Tensor, n: int) -> torch.Tensor:
    """(rows, vocab) log-probabilities with -inf for each token that would repeat an n-gram
    already in its row of `tokens` (rows, length): the degenerate loops ("is is is ...") of a
    weak model are cut, as fairseq's --no-repeat-ngram-size does."""
    if n < 1 or tokens.shape[1] < n - 1:
        return logprobs
    blocked = torch.zeros_like(logprobs, dtype=torch.bool)
    for row, seen in enumerate(tokens.tolist()):
        prefix = seen[len(seen) - n + 1:] if n > 1 else []
        for start in range(len(seen) - n + 1):
            if seen[start:start + n - 1] == prefix:
                blocked[row, seen[start + n - 1]] = True
    return logprobs.masked_fill(blocked, float("-inf"))


class _TargetSteps:
    """Log-probabilities (rows, vocab) of the next token of each row's target so far. With a KV
    cache the decoder runs on the newest token only; without, on the whole target every step
    (slow: the reference the cache must match). The sources were encoded once, up front. With
    `no_repeat_ngram` n, a token that would repeat an n-gram of the row's target gets -inf."""

    def __init__(
        self, model: nn.Module, memory_kv: list[tuple[torch.Tensor, torch.Tensor]],
        src_mask: torch.Tensor, use_cache: bool, no_repeat_ngram: int = 0,
    ) -> None:
        self.model, self.memory_kv, self.src_mask = model, memory_kv, src_mask
        rows, length = src_mask.shape[0], model.config.max_length
        self.cache = model.new_cache(rows, length) if use_cache else None
        self.no_repeat_ngram = no_repeat_ngram

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        new = tokens[:, self.cache.length:] if self.cache is not None else tokens
        logits = self.model.decode(new, self.memory_kv, self.src_mask, self.cache, last_only=True)
        logprobs = F.log_softmax(logits[:, -1].float(), dim=-1)
        return block_repeated_ngrams(logprobs, tokens[:, 1:], self.no_repeat_ngram)

    def reorder(self, rows: torch.Tensor) -> None:
        if self.cache is not None:
            self.cache.reorder(rows)


def _target_steps(model: nn.Module, max_new_tokens: int) -> int:
    # the start token and all but the last new token take a position each
    return max(0, min(max_new_tokens, model.config.max_length))


@torch.no_grad()
def greedy_search(
    model: nn.Module, src_ids: torch.Tensor, src_mask: torch.Tensor, max_new_tokens: int,
    use_cache: bool = True, no_repeat_ngram: int = 0,
) -> list[Hypothesis]:
    """The likeliest next token at every step, for each source (rows of src_ids, padded on the
    right, src_mask 0 at padding); a row stops at its end token. Scores are not normalised.
    no_repeat_ngram n > 0: no n-gram of tokens twice in an output."""
    cfg, rows = model.config, src_ids.shape[0]
    steps = _target_steps(model, max_new_tokens)
    next_logprobs = _TargetSteps(model, model.memory_kv(model.encode(src_ids, src_mask)),
                                 src_mask, use_cache, no_repeat_ngram)
    tokens = torch.full((rows, 1), cfg.bos_id, dtype=torch.long, device=src_ids.device)
    scores = torch.zeros(rows, device=src_ids.device)
    ended = torch.zeros(rows, dtype=torch.bool, device=src_ids.device)
    for _ in range(steps):
        logprobs = next_logprobs(tokens)
        best = logprobs.argmax(dim=-1)
        scores += torch.where(ended, 0.0, logprobs.gather(1, best[:, None])[:, 0])
        best = torch.where(ended, cfg.eos_id, best)
        ended |= best == cfg.eos_id
        tokens = torch.cat([tokens, best[:, None]], dim=1)
        if bool(ended.all()):
            break
    out = []
    for row, score, finished in zip(tokens[:, 1:].tolist(), scores.tolist(), ended.tolist(),
                                    strict=True):
        end = row.index(cfg.eos_id) if finished else len(row)
        out.append(Hypothesis(row[:end], score, finished))
    return out


@torch.no_grad()
def beam_search(
    model: nn.Module, src_ids: torch.Tensor, src_mask: torch.Tensor, max_new_tokens: int,
    beam_size: int, length_penalty: float = 1.0, use_cache: bool = True,
    no_repeat_ngram: int = 0,
) -> list[Hypothesis]:
    """The best of `beam_size` hypotheses kept per source at every step, by their sum of
    log-probabilities divided by length ** length_penalty (0: the plain sum; above 0 favours
    longer outputs). A source is done when `beam_size` hypotheses have ended and no live beam
    can beat the worst of them any more. no_repeat_ngram n > 0: no n-gram twice in a beam."""
    cfg, n, k = model.config, src_ids.shape[0], beam_size
    device = src_ids.device
    steps = _target_steps(model, max_new_tokens)
    memory_kv = [(key.repeat_interleave(k, 0), value.repeat_interleave(k, 0))
                 for key, value in model.memory_kv(model.encode(src_ids, src_mask))]
    next_logprobs = _TargetSteps(model, memory_kv, src_mask.repeat_interleave(k, 0), use_cache,
                                 no_repeat_ngram)
    tokens = torch.full((n * k, 1), cfg.bos_id, dtype=torch.long, device=device)
    beam_scores = torch.zeros(n, k, device=device)
    beam_scores[:, 1:] = float("-inf")  # every beam starts as the same start token: keep one
    ended: list[list[Hypothesis]] = [[] for _ in range(n)]
    done = [False] * n
    for step in range(steps):
        logprobs = next_logprobs(tokens)  # (n * k, vocab)
        vocab = logprobs.shape[-1]
        total = (beam_scores.view(-1, 1) + logprobs).view(n, k * vocab)
        top_scores, top_index = total.topk(min(2 * k, k * vocab), dim=1)
        rows = torch.arange(n * k, device=device)  # a done source keeps its rows as they are
        new_tokens = torch.full((n * k,), cfg.eos_id, dtype=torch.long, device=device)
        new_scores = torch.zeros(n, k, device=device)
        for b in range(n):
            if done[b]:
                continue
            filled = 0
            for rank, (score, index) in enumerate(zip(top_scores[b].tolist(),
                                                      top_index[b].tolist(), strict=True)):
                beam, token = divmod(index, vocab)
                if token == cfg.eos_id:
                    if rank < k:  # an end among the k best candidates ends a hypothesis
                        words = tokens[b * k + beam, 1:].tolist()
                        ended[b].append(Hypothesis(words, score / (step + 1) ** length_penalty,
                                                   True))
                    continue
                rows[b * k + filled], new_tokens[b * k + filled] = b * k + beam, token
                new_scores[b, filled] = score
                filled += 1
                if filled == k:
                    break
            done[b] = _beam_done(ended[b], float(new_scores[b].max()), k, step + 1, steps,
                                 length_penalty)
        if all(done):
            break
        tokens = torch.cat([tokens[rows], new_tokens[:, None]], dim=1)
        next_logprobs.reorder(rows)
        beam_scores = new_scores
    length = tokens.shape[1] - 1
    for b in range(n):
        if not done[b]:  # out of steps: the live beams compete with the ended ones
            ended[b].extend(Hypothesis(tokens[b * k + j, 1:].tolist(),
                                       float(beam_scores[b, j]) / max(length, 1) ** length_penalty,
                                       False) for j in range(k))
    return [max(hypotheses, key=lambda h: h.score) for hypotheses in ended]


def _beam_done(
    ended: list[Hypothesis], best_live: float, k: int, length: int, steps: int,
    length_penalty: float,
) -> bool:
    """True when k hypotheses have ended and the best live beam cannot beat the worst of the
    best k: its sum of log-probabilities only falls, and its length can grow up to `steps`."""
    if len(ended) < k:
        return False
    worst = sorted((h.score for h in ended), reverse=True)[k - 1]
    longest = steps if length_penalty > 0 else length
    return worst >= best_live / longest ** length_penalty
