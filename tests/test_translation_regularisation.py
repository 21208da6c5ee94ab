"""Translation's defaults for small corpora: source-token dropout in training
(translation.source_token_dropout) and the n-gram repetition block in decoding
(translation.no_repeat_ngram)."""

import pytest
import torch
from translation_support import padded_sources, tiny_model

from lmforge.config import load_config
from lmforge.decoding import beam_search, greedy_search
from lmforge.errors import LmforgeError
from lmforge.tasks.translation import drop_source_tokens, make_collate, make_loss

pytestmark = pytest.mark.usefixtures("one_thread")


LOOP, SECOND, EOS = 5, 6, 0  # a decoder that always prefers LOOP, then SECOND, then the end


class LoopingDecoder(torch.nn.Module):
    """An encoder–decoder stand-in whose next-token scores never change: left alone, greedy
    and beam search repeat LOOP until they run out of steps."""

    def __init__(self) -> None:
        super().__init__()
        self.config = tiny_model().config

    def memory_kv(self, memory: torch.Tensor) -> list:
        return []

    def encode(self, src_ids: torch.Tensor, src_mask: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(src_ids), 1, 1)

    def decode(self, tgt_ids, memory_kv, src_mask, cache=None, last_only=False) -> torch.Tensor:
        logits = torch.full((len(tgt_ids), 1, self.config.vocab_size), -5.0)
        logits[:, :, LOOP], logits[:, :, SECOND], logits[:, :, EOS] = 3.0, 2.0, 1.0
        return logits


def ngrams(tokens: list[int], n: int) -> list[tuple[int, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def test_without_the_block_a_looping_model_repeats_one_token_to_the_limit():
    src, mask = padded_sources()
    for hypothesis in greedy_search(LoopingDecoder(), src, mask, 8, use_cache=False):
        assert hypothesis.tokens == [LOOP] * 8 and not hypothesis.finished


@pytest.mark.parametrize("n", [1, 2, 3])
def test_no_ngram_appears_twice_in_greedy_or_beam_output(n):
    model, (src, mask) = LoopingDecoder(), padded_sources()
    searches = {"greedy": greedy_search(model, src, mask, 10, use_cache=False,
                                        no_repeat_ngram=n),
                "beam": beam_search(model, src, mask, 10, 3, 1.0, use_cache=False,
                                    no_repeat_ngram=n)}
    for name, hypotheses in searches.items():
        for hypothesis in hypotheses:
            grams = ngrams(hypothesis.tokens, n)
            assert len(grams) == len(set(grams)), (name, hypothesis.tokens)
            assert hypothesis.finished, name  # out of fresh n-grams, the end token wins
    expected = {1: [LOOP, SECOND], 2: [LOOP, LOOP, SECOND, LOOP],
                3: [LOOP, LOOP, LOOP, SECOND, LOOP, LOOP]}
    assert searches["greedy"][0].tokens == expected[n]


def test_the_block_leaves_a_real_model_output_without_repeats_unchanged():
    model, (src, mask) = tiny_model(), padded_sources()
    plain = greedy_search(model, src, mask, 10)
    blocked = greedy_search(model, src, mask, 10, no_repeat_ngram=3)
    for before, after in zip(plain, blocked, strict=True):
        if len(set(ngrams(before.tokens, 3))) == len(ngrams(before.tokens, 3)):
            assert after.tokens == before.tokens


def test_source_token_dropout_hides_tokens_but_never_a_whole_source():
    torch.manual_seed(0)
    mask = torch.ones(200, 10, dtype=torch.long)
    mask[:, 6:] = 0
    dropped = drop_source_tokens(mask, 0.3)
    assert not (dropped > mask).any()  # padding stays hidden
    assert (dropped.sum(1) > 0).all()
    assert 0.2 < 1 - dropped.sum() / mask.sum() < 0.4
    single = drop_source_tokens(torch.ones(500, 1, dtype=torch.long), 0.9)
    assert (single == 1).all()  # a one-token source is never emptied


def test_source_token_dropout_changes_the_training_loss_only():
    model = tiny_model()
    collate = make_collate(model.config.pad_id)
    items = [(torch.randint(4, 24, (6,)).numpy(), torch.randint(4, 24, (5,)).numpy())
             for _ in range(8)]
    batch = collate(items)
    plain, dropping = make_loss(0.0), make_loss(0.0, source_dropout=0.5)
    with torch.no_grad():
        model.eval()
        assert float(dropping(model, batch)) == pytest.approx(float(plain(model, batch)))
        model.train()  # the model's own dropout is 0: only the hidden source tokens differ
        torch.manual_seed(1)
        assert float(dropping(model, batch)) != pytest.approx(float(plain(model, batch)))


def test_the_knobs_are_checked_with_a_message_naming_them():
    base = {"task": "translation", "data": {"path": "builtin:hsk-zh-en"}}
    for key, value in (("source_token_dropout", 1.0), ("no_repeat_ngram", -1)):
        with pytest.raises((LmforgeError, ValueError), match=key):
            load_config({**base, "translation": {key: value}})
