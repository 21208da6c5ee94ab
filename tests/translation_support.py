"""A translation bundle in a fraction of a second: a byte-level BPE vocabulary trained on a few
sentences and an untrained encoder–decoder (for the tests of what serves and runs a bundle, not
of what it learned)."""

from __future__ import annotations

from pathlib import Path

import torch

from lmforge.bundle import save_bundle
from lmforge.config import load_config
from lmforge.models import EncoderDecoder, Seq2SeqConfig
from lmforge.tasks import translation
from lmforge.tasks.recipe import Prepared
from lmforge.tokenization import train_tokenizer

SENTENCES = ["我每天早上喝咖啡。", "他们明天去北京。", "I drink coffee every morning.",
             "They go to Beijing tomorrow.", "这本书很有意思。", "This book is interesting."]


def random_translation_bundle(directory: Path, max_length: int = 16) -> Path:
    cfg = load_config({"task": "translation", "tokenizer": {"vocab_size": 300},
                       "model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64,
                                 "max_length": max_length, "dropout": 0.0},
                       "translation": {"beam_size": 2, "max_new_tokens": 8}})
    tokenizer = translation.with_pad_token(train_tokenizer(SENTENCES, "byte_bpe", 300))
    torch.manual_seed(0)
    model = EncoderDecoder(translation.architecture(cfg, tokenizer))
    run = Prepared(cfg, "0" * 64, tokenizer, {}, {})
    save_bundle(directory, model, tokenizer, translation.RECIPE.bundle_meta(run, model, None))
    return directory


def tiny_model(seed: int = 0) -> EncoderDecoder:
    """An untrained two-layer encoder–decoder over 24 token ids (pad 3, start and end 0)."""
    torch.manual_seed(seed)
    cfg = Seq2SeqConfig(vocab_size=24, max_length=12, d_model=32, n_layers=2, n_heads=4,
                        d_ff=64, dropout=0.0, pad_id=3, bos_id=0, eos_id=0)
    return EncoderDecoder(cfg).eval()


def padded_sources() -> tuple[torch.Tensor, torch.Tensor]:
    """Four sources of ids 4-23, two of them shorter and padded on the right, and their mask."""
    src = torch.randint(4, 24, (4, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(src)
    mask[1, 4:], mask[3, 2:] = 0, 0
    return src.masked_fill(mask == 0, 3), mask
