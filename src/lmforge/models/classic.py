"""The classic networks beside the Transformer: the MLP (feature tables), the CNN (images), the
RNN and the TextCNN (text). Each is a plain nn.Module that the same training loop, bundle, export
and server handle; each class stays small and readable."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

# --- MLP (feature tables) ------------------------------------------------------------------------


@dataclass
class MLPConfig:
    n_numbers: int  # numeric inputs (standardized numbers and missing-value indicators)
    cardinalities: list[int]  # ids per category column (0 is "unknown")
    n_outputs: int  # classes, or 1 for regression
    hidden: list[int] = field(default_factory=lambda: [256, 128])
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.n_numbers < 0 or self.n_outputs < 1 or not self.hidden:
            raise ValueError("n_numbers >= 0, n_outputs >= 1 and hidden layers are required")
        if self.n_numbers + len(self.cardinalities) == 0:
            raise ValueError("an MLP needs at least one input")

    def embedding_sizes(self) -> list[int]:
        """Width of each category's embedding: fastai's rule of thumb, at most 32."""
        return [min(32, round(1.6 * n**0.56)) for n in self.cardinalities]

    def to_dict(self) -> dict:
        return asdict(self)


class MLP(nn.Module):
    """Rows of a table → logits (or a value): each category column through its embedding,
    concatenated with the numbers, then Linear → LayerNorm → GELU → dropout per hidden layer,
    plus a linear map of the same inputs (wide and deep): a table that is nearly linear is
    learnt as a linear model would, the hidden layers adding what is not.
    Input (B, n_numbers + n_categories) float: the numbers, then the category ids."""

    def __init__(self, cfg: MLPConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embeddings = nn.ModuleList(
            nn.Embedding(n, d) for n, d in zip(cfg.cardinalities, cfg.embedding_sizes(),
                                               strict=True))
        layers: list[nn.Module] = []
        width = cfg.n_numbers + sum(cfg.embedding_sizes())
        for size in cfg.hidden:
            layers += [nn.Linear(width, size), nn.LayerNorm(size), nn.GELU(),
                       nn.Dropout(cfg.dropout)]
            width = size
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, cfg.n_outputs)
        self.linear = nn.Linear(cfg.n_numbers + sum(cfg.embedding_sizes()), cfg.n_outputs)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        n = self.config.n_numbers
        parts = [features[:, :n]]
        ids = features[:, n:].long()  # (B, n_categories)
        parts += [embed(ids[:, j]) for j, embed in enumerate(self.embeddings)]
        x = torch.cat(parts, dim=1)  # (B, inputs)
        return self.head(self.body(x)) + self.linear(x)  # (B, n_outputs)

    @torch.no_grad()
    def start_from_linear(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Start as a given linear model of the numbers (a closed-form fit, ridge's): the wide
        path takes its weights (the category embeddings' columns start at zero) and the hidden
        path's output layer starts at zero, so training learns a residual over that model.
        weight (n_outputs, n_numbers), bias (n_outputs,)."""
        n = self.config.n_numbers
        self.linear.weight.zero_()
        self.linear.weight[:, :n] = weight
        self.linear.bias.copy_(bias)
        self.head.weight.zero_()
        self.head.bias.zero_()

# --- CNN (images) --------------------------------------------------------------------------------


@dataclass
class CNNConfig:
    in_channels: int
    n_classes: int
    image_size: int
    channels: list[int] = field(default_factory=lambda: [32, 64, 128])
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.in_channels < 1 or self.n_classes < 1 or self.image_size < 1:
            raise ValueError("in_channels, n_classes and image_size must be at least 1")
        if not self.channels or min(self.channels) < 1:
            raise ValueError(f"channels must be positive widths, got {self.channels}")

    def to_dict(self) -> dict:
        return asdict(self)


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and a skip connection (ResNet's basic block); with
    stride 2 it halves the resolution, and a 1x1 convolution matches the skip's shape."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.skip = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.skip = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                      nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.skip(x))


class CNNClassifier(nn.Module):
    """Stem, one residual block per stage (the first keeps the resolution, each later one halves
    it), global average pooling, dropout, linear head: (B, C, H, W) -> (B, n_classes)."""

    def __init__(self, cfg: CNNConfig) -> None:
        super().__init__()
        self.config = cfg
        first = cfg.channels[0]
        self.stem = nn.Sequential(nn.Conv2d(cfg.in_channels, first, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(first), nn.ReLU())
        widths = [first, *cfg.channels]
        self.stages = nn.Sequential(*(ResidualBlock(c_in, c_out, 1 if i == 0 else 2)
                                      for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:],
                                                                   strict=True))))
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.channels[-1], cfg.n_classes)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(pixels))  # (B, C_last, H', W')
        return self.head(self.dropout(x.mean(dim=(2, 3))))


# --- RNN and TextCNN (text) ---------------------------------------------------------------------


@dataclass
class RNNConfig:
    vocab_size: int
    n_classes: int
    d_model: int = 128  # the embedding, and each direction's hidden state
    n_layers: int = 1
    cell: str = "lstm"  # "lstm" or "gru"
    dropout: float = 0.2
    pad_id: int = 0
    # what feeds the head: "max_mean" (the max and the mean of the top layer's outputs over the
    # text) or "final" (each direction's final state; what bundles without this field hold)
    pooling: str = "final"

    def __post_init__(self) -> None:
        if self.cell not in ("lstm", "gru"):
            raise ValueError(f"cell must be 'lstm' or 'gru', got {self.cell!r}")
        if self.pooling not in ("max_mean", "final"):
            raise ValueError(f"pooling must be 'max_mean' or 'final', got {self.pooling!r}")
        if min(self.vocab_size, self.n_classes, self.d_model, self.n_layers) < 1:
            raise ValueError("vocab_size, n_classes, d_model and n_layers must be at least 1")

    def to_dict(self) -> dict:
        return asdict(self)


class RNNClassifier(nn.Module):
    """Token embeddings read by a bidirectional LSTM or GRU over packed sequences (padding is
    never read); the top layer's outputs max- and mean-pooled over the text (pooling max_mean:
    every position's state reaches the head, not only the ends'), or each direction's final
    state, concatenated, feed the head: (B, T) -> (B, n_classes)."""

    def __init__(self, cfg: RNNConfig) -> None:
        super().__init__()
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=cfg.pad_id)
        rnn = nn.LSTM if cfg.cell == "lstm" else nn.GRU
        self.rnn = rnn(cfg.d_model, cfg.d_model, cfg.n_layers, batch_first=True,
                       bidirectional=True, dropout=cfg.dropout if cfg.n_layers > 1 else 0.0)
        self.dropout = nn.Dropout(cfg.dropout)
        pooled = 4 if cfg.pooling == "max_mean" else 2
        self.head = nn.Linear(pooled * cfg.d_model, cfg.n_classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        lengths = attention_mask.sum(1).clamp(min=1)  # pack_padded_sequence moves it to the CPU
        x = self.dropout(self.tok_emb(input_ids))  # (B, T, d)
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True,
                                                   enforce_sorted=False)
        out, _ = self.rnn(packed)
        # The top layer's final states: the forward direction's at each text's last token, the
        # backward one's at its first. (Read from the outputs rather than h_n: the same numbers,
        # and PyTorch's ONNX exporter fails on a one-layer h_n over packed sequences.)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True)  # (B, T', 2d)
        if self.config.pooling == "max_mean":
            steps = torch.arange(out.size(1), device=out.device)
            real = (steps[None, :] < lengths.to(out.device)[:, None]).unsqueeze(2)  # (B, T', 1)
            mean = out.sum(1) / lengths.to(out.device, out.dtype)[:, None]  # padding is zeros
            peak = out.masked_fill(~real, float("-inf")).amax(1)
            return self.head(self.dropout(torch.cat([peak, mean], dim=1)))
        d = self.config.d_model
        at_last = (lengths - 1).view(-1, 1, 1).expand(-1, 1, 2 * d)
        forward_last = out.gather(1, at_last).squeeze(1)[:, :d]
        return self.head(self.dropout(torch.cat([forward_last, out[:, 0, d:]], dim=1)))


@dataclass
class TextCNNConfig:
    vocab_size: int
    n_classes: int
    d_model: int = 128  # the embedding, and the filters of each width
    kernel_sizes: list[int] = field(default_factory=lambda: [3, 4, 5])
    dropout: float = 0.2
    pad_id: int = 0

    def __post_init__(self) -> None:
        if not self.kernel_sizes or min(self.kernel_sizes) < 1:
            raise ValueError(f"kernel_sizes must be positive widths, got {self.kernel_sizes}")
        if min(self.vocab_size, self.n_classes, self.d_model) < 1:
            raise ValueError("vocab_size, n_classes and d_model must be at least 1")

    def to_dict(self) -> dict:
        return asdict(self)


class TextCNNClassifier(nn.Module):
    """Kim's TextCNN: convolutions of several widths over the token embeddings, each max-pooled
    over the text's positions (padding excluded), concatenated into the head:
    (B, T) -> (B, n_classes)."""

    def __init__(self, cfg: TextCNNConfig) -> None:
        super().__init__()
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=cfg.pad_id)
        self.convs = nn.ModuleList(nn.Conv1d(cfg.d_model, cfg.d_model, k, padding=k - 1)
                                   for k in cfg.kernel_sizes)
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.d_model * len(cfg.kernel_sizes), cfg.n_classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.dropout(self.tok_emb(input_ids)).transpose(1, 2)  # (B, d, T)
        pooled = []
        for conv, k in zip(self.convs, self.config.kernel_sizes, strict=True):
            out = F.relu(conv(x))  # (B, d, T + k - 1): window j covers tokens j-k+1 .. j
            # a window holding no real token is left out of the max
            real = F.max_pool1d(F.pad(attention_mask[:, None].float(), (k - 1, k - 1)), k, 1)
            pooled.append(out.masked_fill(real == 0, float("-inf")).amax(dim=2))
        return self.head(self.dropout(torch.cat(pooled, dim=1)))
