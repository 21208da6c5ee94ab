"""lmforge's own Transformer family in one file: the encoder (with its classifier and masked-LM
heads), GPT and the encoder–decoder, built from one attention, one MLP and one block.

Reads bottom-up: attention, MLP, block, configs, encoder models, GPT with its KV cache, then the
encoder–decoder (the encoder, and decoder blocks that add cross-attention).
Shapes in comments: B batch, T tokens, D d_model, nh heads, hs head size (D / nh).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

# The norm is torch's nn.LayerNorm (with bias): both models are pre-LN.


class SelfAttention(nn.Module):
    """Multi-head softmax(QKᵀ/√hs)V through torch's fused scaled_dot_product_attention.

    Causal (GPT): a token sees itself and the tokens before it only. `layer` is this layer's
    slot in a KVCache, used when generating. As cross-attention (the encoder–decoder), the
    queries come from x and the keys and values from the encoder's output (`memory_kv`), through
    the same projection's query and key/value parts."""

    def __init__(
        self, cfg: TransformerConfig | GPTConfig | Seq2SeqConfig, causal: bool, layer: int
    ) -> None:
        super().__init__()
        self.n_heads, self.dropout = cfg.n_heads, cfg.dropout
        self.causal, self.layer = causal, layer
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        B, T, D = t.shape
        return t.view(B, T, self.n_heads, D // self.n_heads).transpose(1, 2)  # (B, nh, T, hs)

    def memory_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of cross-attention from the encoder's output (B, S, D): computed
        once per source, and reused at every decoding step."""
        D = memory.shape[-1]
        k, v = F.linear(memory, self.qkv.weight[D:], self.qkv.bias[D:]).split(D, dim=2)
        return self._heads(k), self._heads(v)  # (B, nh, S, hs) each

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None, cache: KVCache | None = None,
        memory: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """`mask` is True where a query may attend to a key: (B, 1, 1, T) hides padding keys,
        (B, 1, T, past + T) is a whole causal mask (decoder_mask); None hides nothing but the
        future of a causal layer. With `memory` (memory_kv's keys and values) the layer attends
        to them instead of to x (cross-attention; `mask` (B, 1, 1, S) hides source padding)."""
        B, T, D = x.shape
        if memory is not None:
            q = self._heads(F.linear(x, self.qkv.weight[:D], self.qkv.bias[:D]))
            k, v = memory
        else:
            q, k, v = (self._heads(t) for t in self.qkv(x).split(D, dim=2))
        if cache is not None and memory is None:
            k, v = cache.update(self.layer, k, v)  # (B, nh, past + T, hs)
        # No mask and no past: the plain causal case, which runs the flash kernels on GPU.
        # One new token with no padding sees every cached key, so it needs no mask either.
        is_causal = self.causal and mask is None and k.shape[2] == T and T > 1
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=is_causal,
            dropout_p=self.dropout if self.training else 0.0,
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, D)
        return self.resid_dropout(self.proj(y))


class MLP(nn.Module):
    """D -> d_ff -> D with GELU: exact ("none", BERT) or its tanh approximation ("tanh", which
    GPT-2 was trained with)."""

    def __init__(self, cfg: TransformerConfig | GPTConfig | Seq2SeqConfig, gelu: str) -> None:
        super().__init__()
        self.gelu = gelu
        self.up = nn.Linear(cfg.d_model, cfg.d_ff)
        self.down = nn.Linear(cfg.d_ff, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down(F.gelu(self.up(x), approximate=self.gelu)))


class Block(nn.Module):
    """Pre-LN block: x + attn(LN(x)), then x + mlp(LN(x)); stable without warm-up tricks.
    A decoder block of the encoder–decoder (`cross`) has x + cross_attn(LN(x)) in between:
    the same attention, its keys and values from the encoder."""

    def __init__(
        self, cfg: TransformerConfig | GPTConfig | Seq2SeqConfig, causal: bool, gelu: str,
        layer: int, cross: bool = False,
    ) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = SelfAttention(cfg, causal, layer)
        if cross:
            self.ln_cross = nn.LayerNorm(cfg.d_model)
            self.cross_attn = SelfAttention(cfg, causal=False, layer=layer)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg, gelu)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None, cache: KVCache | None = None,
        memory: tuple[torch.Tensor, torch.Tensor] | None = None,
        memory_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), mask, cache)
        if memory is not None:
            x = x + self.cross_attn(self.ln_cross(x), memory_mask, memory=memory)
        return x + self.mlp(self.ln2(x))


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
        if module.padding_idx is not None:
            nn.init.zeros_(module.weight[module.padding_idx])


# --- Configs -------------------------------------------------------------------------------------


@dataclass
class TransformerConfig:
    vocab_size: int
    n_classes: int
    max_length: int = 128
    d_model: int = 256
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int = 1024
    dropout: float = 0.1
    pooling: str = "mean"  # "cls" (first token) or "mean" (over non-padding tokens)
    pad_id: int = 0

    def __post_init__(self) -> None:
        _check_shape(self)
        if self.n_classes < 1:
            raise ValueError(f"n_classes must be at least 1, got {self.n_classes}")
        if self.pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be 'cls' or 'mean', got {self.pooling!r}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class GPTConfig:
    vocab_size: int
    max_length: int = 1024  # the context: learned positions exist up to here
    d_model: int = 768
    n_layers: int = 12
    n_heads: int = 12
    d_ff: int = 3072
    dropout: float = 0.0

    def __post_init__(self) -> None:
        _check_shape(self)

    def to_dict(self) -> dict:
        return asdict(self)


def _check_shape(cfg: TransformerConfig | GPTConfig | Seq2SeqConfig) -> None:
    """Raise ValueError naming the value for sizes that make no model."""
    for name in ("vocab_size", "max_length", "d_model", "n_layers", "n_heads", "d_ff"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be at least 1, got {getattr(cfg, name)}")
    if cfg.d_model % cfg.n_heads:
        nearest = max(cfg.n_heads, round(cfg.d_model / cfg.n_heads) * cfg.n_heads)
        raise ValueError(
            f"n_heads ({cfg.n_heads}) must divide d_model ({cfg.d_model}): each head takes "
            f"d_model / n_heads dimensions; e.g. d_model={nearest}"
        )
    if not 0.0 <= cfg.dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {cfg.dropout}")


# --- The encoder: task classification, and masked-LM pre-training --------------------------------


class Encoder(nn.Module):
    """Token + position embeddings, n_layers blocks, final LayerNorm: (B, T) -> (B, T, D)."""

    def __init__(self, cfg: TransformerConfig | Seq2SeqConfig) -> None:
        super().__init__()
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=cfg.pad_id)
        self.pos_emb = nn.Embedding(cfg.max_length, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            Block(cfg, causal=False, gelu="none", layer=i) for i in range(cfg.n_layers)
        )
        self.ln_f = nn.LayerNorm(cfg.d_model)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        T = input_ids.shape[1]
        positions = torch.arange(T, device=input_ids.device)
        x = self.dropout(self.tok_emb(input_ids) + self.pos_emb(positions))  # (B, T, D)
        keep = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T): padding is never attended to
        for block in self.blocks:
            x = block(x, keep)
        return self.ln_f(x)


class EncoderClassifier(nn.Module):
    """Encoder, pooling to one vector per text, dropout, linear head: (B, T) -> (B, n_classes)."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.d_model, cfg.n_classes)
        self.apply(_init_weights)

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.config.pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids, attention_mask)
        return self.head(self.dropout(self.pool(hidden, attention_mask)))


class MaskedLMHead(nn.Module):
    """BERT's MLM head: dense + GELU + LayerNorm, then a decoder tied to the token embedding."""

    def __init__(self, cfg: TransformerConfig, tok_emb: nn.Embedding) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.d_model, cfg.d_model)
        self.ln = nn.LayerNorm(cfg.d_model)
        self.tok_emb = tok_emb
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        x = self.ln(F.gelu(self.dense(hidden)))
        return F.linear(x, self.tok_emb.weight, self.bias)  # (N, vocab)


class EncoderForMaskedLM(nn.Module):
    """Masked-language-model pre-training around an existing encoder (shared, not copied), so
    the classifier that owns the encoder starts fine-tuning from what it learned here."""

    def __init__(self, encoder: Encoder, cfg: TransformerConfig) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = MaskedLMHead(cfg, encoder.tok_emb)
        _init_weights(self.head.dense)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, masked: torch.Tensor
    ) -> torch.Tensor:
        hidden = self.encoder(input_ids, attention_mask)  # (B, T, D)
        return self.head(hidden[masked])  # only the masked positions: (N, vocab)


# --- GPT: the decoder of task generation ---------------------------------------------------------


class KVCache:
    """Keys and values of every layer, allocated for `length` positions up front: each forward
    writes its T new positions after those already filled, in place (no concatenation), and
    attention sees the filled ones only."""

    def __init__(
        self, cfg: GPTConfig, batch: int, length: int, device: torch.device, dtype: torch.dtype
    ) -> None:
        shape = (cfg.n_layers, batch, cfg.n_heads, length, cfg.d_model // cfg.n_heads)
        self.k = torch.zeros(shape, device=device, dtype=dtype)  # (L, B, nh, Tmax, hs)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0  # positions filled so far

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's (B, nh, T, hs) keys/values; return all of them so far."""
        end = self.length + k.shape[2]
        self.k[layer, :, :, self.length : end] = k
        self.v[layer, :, :, self.length : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep row rows[i] as row i (beam search: each beam continues the one it grew from)."""
        self.k, self.v = self.k[:, rows], self.v[:, rows]


def decoder_mask(key_mask: torch.Tensor | None, T: int, past: int) -> torch.Tensor | None:
    """The (B, 1, T, past + T) boolean attention mask of T new tokens after `past` cached ones,
    or None where plain causal attention is exact (no padding, and no past or one new token).

    `key_mask` (B, past + T) is False at padding (prompts are padded on the left). A padding
    position may attend to itself, so that no row is fully masked (that would give NaN)."""
    if key_mask is None and (past == 0 or T == 1):
        return None
    device = key_mask.device if key_mask is not None else None
    query_pos = torch.arange(past, past + T, device=device)[:, None]  # (T, 1)
    key_pos = torch.arange(past + T, device=device)[None, :]  # (1, past + T)
    allowed = key_pos <= query_pos  # (T, past + T)
    if key_mask is None:
        return allowed[None, None]
    allowed = allowed[None] & key_mask[:, None, :].bool()  # (B, T, past + T)
    allowed = allowed | (key_pos == query_pos)[None]
    return allowed[:, None]


class GPT(nn.Module):
    """GPT-2's decoder: token + learned position embeddings, pre-LN blocks of causal attention,
    a final LayerNorm and an output layer tied to the token embedding: (B, T) -> (B, T, vocab)."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.config = cfg
        self.gradient_checkpointing = False
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.max_length, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            Block(cfg, causal=True, gelu="tanh", layer=i) for i in range(cfg.n_layers)
        )
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.apply(_init_weights)
        # GPT-2: residual projections scaled by 1/sqrt(2 * layers), so the sum of the residual
        # branches keeps unit variance at any depth.
        for block in self.blocks:
            for proj in (block.attn.proj, block.mlp.down):
                nn.init.normal_(proj.weight, std=0.02 / (2 * cfg.n_layers) ** 0.5)

    def new_cache(self, batch: int, length: int) -> KVCache:
        weight = self.tok_emb.weight
        return KVCache(self.config, batch, length, weight.device, weight.dtype)

    def forward(
        self,
        input_ids: torch.Tensor,
        key_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Logits of every position (B, T, vocab), or of the last one (B, 1, vocab).

        With `cache`, input_ids are the tokens after the cached ones and the cache grows by T.
        `key_mask` (B, past + T) marks real tokens (False at left padding); positions count
        real tokens only, so a padded prompt is seen exactly like an unpadded one."""
        B, T = input_ids.shape
        past = cache.length if cache is not None else 0
        if past + T > self.config.max_length:
            raise ValueError(
                f"{past + T} tokens exceed the context of {self.config.max_length} (max_length)"
            )
        if key_mask is None:
            positions = torch.arange(past, past + T, device=input_ids.device)[None]  # (1, T)
        else:
            positions = (key_mask.long().cumsum(1) - 1).clamp(min=0)[:, past:]  # (B, T)
        x = self.dropout(self.tok_emb(input_ids) + self.pos_emb(positions))  # (B, T, D)
        mask = decoder_mask(key_mask, T, past)
        for block in self.blocks:
            if self.gradient_checkpointing and self.training:
                x = checkpoint(block, x, mask, cache, use_reentrant=False)
            else:
                x = block(x, mask, cache)
        if cache is not None:
            cache.length += T
        x = self.ln_f(x[:, -1:] if last_only else x)
        return F.linear(x, self.tok_emb.weight)  # tied output layer: (B, T, vocab)


def gpt_from_gpt2_state_dict(hf_state: dict[str, torch.Tensor], cfg: GPTConfig) -> GPT:
    """Our GPT holding the weights of a Hugging Face GPT2LMHeadModel. Its Conv1D layers store
    weights as (in, out), nn.Linear as (out, in): those are transposed."""
    rename = {
        "ln_1": "ln1", "ln_2": "ln2", "attn.c_attn": "attn.qkv", "attn.c_proj": "attn.proj",
        "mlp.c_fc": "mlp.up", "mlp.c_proj": "mlp.down",
    }
    ours = {"tok_emb.weight": hf_state["transformer.wte.weight"],
            "pos_emb.weight": hf_state["transformer.wpe.weight"],
            "ln_f.weight": hf_state["transformer.ln_f.weight"],
            "ln_f.bias": hf_state["transformer.ln_f.bias"]}
    for i in range(cfg.n_layers):
        for hf_name, name in rename.items():
            for kind in ("weight", "bias"):
                tensor = hf_state[f"transformer.h.{i}.{hf_name}.{kind}"]
                transpose = kind == "weight" and "c_" in hf_name
                ours[f"blocks.{i}.{name}.{kind}"] = tensor.t() if transpose else tensor
    model = GPT(cfg)
    model.load_state_dict({k: v.contiguous() for k, v in ours.items()})
    return model


# --- The encoder–decoder: task translation -------------------------------------------------------


@dataclass
class Seq2SeqConfig:
    vocab_size: int  # one vocabulary shared by sources and targets
    max_length: int = 128  # tokens of a source, and of a target (its start token included)
    d_model: int = 256
    n_layers: int = 2  # of the encoder, and of the decoder
    n_heads: int = 4
    d_ff: int = 1024
    dropout: float = 0.1
    pad_id: int = 0
    bos_id: int = 1  # every target starts with it
    eos_id: int = 2  # and ends with it

    def __post_init__(self) -> None:
        _check_shape(self)
        for name in ("pad_id", "bos_id", "eos_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise ValueError(f"{name} must be a token id below vocab_size "
                                 f"({self.vocab_size}), got {getattr(self, name)}")

    def to_dict(self) -> dict:
        return asdict(self)


class EncoderDecoder(nn.Module):
    """The Transformer of "Attention is all you need", pre-LN: the encoder above reads the source,
    the decoder writes the target: blocks of causal self-attention, cross-attention to the
    encoder's output and MLP. One token embedding for the source, the target and the output
    layer (a shared vocabulary, tied as in the original)."""

    def __init__(self, cfg: Seq2SeqConfig) -> None:
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.pos_emb = nn.Embedding(cfg.max_length, cfg.d_model)  # the target's positions
        self.dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            Block(cfg, causal=True, gelu="none", layer=i, cross=True) for i in range(cfg.n_layers)
        )
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.apply(_init_weights)

    def encode(self, src_ids: torch.Tensor, src_mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(src_ids, src_mask)  # (B, S, D)

    def memory_kv(self, memory: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every decoder layer's cross-attention keys and values of the encoder's output."""
        return [block.cross_attn.memory_kv(memory) for block in self.blocks]

    def new_cache(self, batch: int, length: int) -> KVCache:
        weight = self.encoder.tok_emb.weight
        return KVCache(self.config, batch, length, weight.device, weight.dtype)

    def decode(
        self,
        tgt_ids: torch.Tensor,
        memory_kv: list[tuple[torch.Tensor, torch.Tensor]],
        src_mask: torch.Tensor,
        cache: KVCache | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Logits (B, T, vocab) of the next target token at every position (the last only with
        `last_only`). With `cache`, tgt_ids are the tokens after the cached ones."""
        B, T = tgt_ids.shape
        past = cache.length if cache is not None else 0
        if past + T > self.config.max_length:
            raise ValueError(f"{past + T} target tokens exceed max_length "
                             f"({self.config.max_length})")
        positions = torch.arange(past, past + T, device=tgt_ids.device)
        x = self.dropout(self.encoder.tok_emb(tgt_ids) + self.pos_emb(positions))  # (B, T, D)
        memory_mask = src_mask.bool()[:, None, None, :]  # (B, 1, 1, S): source padding hidden
        # None (plain causal) unless several new tokens follow cached ones; a traced step
        # (ONNX export, with a past) keeps the explicit mask, right for any past and T
        mask = decoder_mask(None, T, past)
        for block, memory in zip(self.blocks, memory_kv, strict=True):
            x = block(x, mask, cache, memory, memory_mask)
        if cache is not None:
            cache.length += T
        x = self.ln_f(x[:, -1:] if last_only else x)
        return F.linear(x, self.encoder.tok_emb.weight)  # tied output layer

    def forward(
        self, src_ids: torch.Tensor, src_mask: torch.Tensor, tgt_ids: torch.Tensor
    ) -> torch.Tensor:
        """Teacher forcing: logits (B, T, vocab) of each next target token given the source."""
        return self.decode(tgt_ids, self.memory_kv(self.encode(src_ids, src_mask)), src_mask)
