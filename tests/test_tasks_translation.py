"""Translation end to end on a toy language (each sentence's words reversed): sentence pairs
read, cleaned and split; lmforge's encoder–decoder learns it; BLEU and chrF beside copying the
source and retrieval; the bundle's Translator; greedy and beam search with and without the KV
cache; exact resume."""

import csv
import json
import math
import random
from pathlib import Path

import pytest
import torch
from resume_support import recipe_training, straight_and_resumed
from translation_support import padded_sources, tiny_model

import lmforge
import lmforge.pipeline as pipeline
from lmforge.config import load_config
from lmforge.data.pairs import prepare_pairs
from lmforge.decoding import beam_search, greedy_search
from lmforge.errors import LmforgeError
from lmforge.evaluation.translation import (
    retrieval_translations,
    target_tokenize,
    translation_scores,
)
from lmforge.models import Seq2SeqConfig
from lmforge.models.transformer import KVCache
from lmforge.tasks import translation

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = "ab cd ef gh ij kl".split()


def reversed_language(n: int, seed: int = 0) -> list[tuple[str, str]]:
    rng, sentences = random.Random(seed), set()
    while len(sentences) < n:
        sentences.add(" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4))))
    return [(s, " ".join(reversed(s.split()))) for s in sorted(sentences)]


def write_pairs(path: Path, pairs: list[tuple[str, str]], header=("source", "target")) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(pairs)
    return path


def tiny_config(data: Path, cache: Path, steps: int = 400) -> dict:
    return {"task": "translation", "data": {"path": str(data), "cache_dir": str(cache)},
            "tokenizer": {"vocab_size": 300},
            "model": {"d_model": 64, "n_layers": 2, "n_heads": 4, "d_ff": 128, "max_length": 16,
                      "dropout": 0.0},
            "train": {"max_steps": steps, "eval_every": 200, "batch_size": 32, "lr": 3e-3},
            "eval": {"bootstrap": 200}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("translation")
    data = write_pairs(root / "pairs.csv", reversed_language(400))
    return lmforge.train(tiny_config(data, root / "cache"), out=root / "run",
                         show_progress=False)


@pytest.mark.timeout(300)
def test_the_model_learns_a_reversed_language_far_above_both_baselines(trained):
    report = json.loads((trained.run_dir / "eval.json").read_text())
    model, baselines = report["model"], report["baselines"]
    assert model["bleu"] > 90 and model["chrf"] > 90
    for name in ("copy_source", "retrieval"):
        assert model["ci95"]["bleu"][0] > baselines[name]["ci95"]["bleu"][1], name
    assert report["tokenize"] == "13a" and report["n"] == 40
    first = report["examples"][0]
    assert set(first) == {"source", "reference", "output"}
    rows = (trained.run_dir / "test_predictions.jsonl").read_text().splitlines()
    assert len(rows) == 40
    meta = json.loads((trained.run_dir / "model" / "lmforge.json").read_text())
    assert meta["task"] == "translation" and meta["metrics"]["bleu"] == model["bleu"]


def test_the_bundle_translates_new_sentences_in_order(trained):
    translator = lmforge.load(trained.bundle_dir)
    sources = ["ab cd ef", "kl  ij", "   "]  # cleaning collapses the spaces; blank stays blank
    greedy = translator.translate(sources, beam_size=1)
    beam = translator.translate(sources, beam_size=3)
    assert [t.text for t in greedy] == ["ef cd ab", "ij kl", ""]
    assert [t.text for t in beam] == [t.text for t in greedy]
    assert greedy[0].finished and greedy[0].source_tokens > 0
    with pytest.raises(LmforgeError, match="beam_size"):
        translator.translate(sources, beam_size=0)


def test_evaluate_scores_the_runs_test_split_again(trained):
    report = lmforge.evaluate(trained.run_dir, show=False)
    saved = json.loads((trained.run_dir / "eval.json").read_text())
    assert report["model"]["bleu"] == pytest.approx(saved["model"]["bleu"])
    assert report["data_check"]["split_record"] is True


def test_evaluate_on_a_new_file_leaves_out_what_the_model_trained_on(trained, tmp_path):
    tested = {json.loads(line)["source"]
              for line in (trained.run_dir / "test_predictions.jsonl").read_text().splitlines()}
    train_source = next(s for s, _ in reversed_language(400) if s not in tested)
    fresh = [("ab ab ab ab ab", "ab ab ab ab ab"), ("kl ij kl ij ab", "ab ij kl ij kl")]
    data = write_pairs(tmp_path / "new.csv", fresh + [(train_source, "whatever it was")])
    report = lmforge.evaluate(trained.run_dir, data=data, show=False)
    assert report["n"] == 2 and report["data_check"]["dropped_seen_in_training"] == 1
    assert "copy_source" in report["baselines"] and "retrieval" in report["baselines"]


# --- decoding -----------------------------------------------------------------------------------


def test_kv_cache_decoding_equals_running_the_whole_target_every_step():
    model, (src, mask) = tiny_model(), padded_sources()
    for search in (lambda **kw: greedy_search(model, src, mask, 10, **kw),
                   lambda **kw: beam_search(model, src, mask, 10, 3, 1.0, **kw)):
        cached, uncached = search(use_cache=True), search(use_cache=False)
        assert [h.tokens for h in cached] == [h.tokens for h in uncached]
        assert [h.score for h in cached] == pytest.approx([h.score for h in uncached], abs=1e-4)


def test_a_source_translates_the_same_alone_as_beside_others():
    model, (src, mask) = tiny_model(2), padded_sources()
    together = beam_search(model, src, mask, 10, 3, 1.0)
    alone = beam_search(model, src[3:, :2], mask[3:, :2], 10, 3, 1.0)
    assert together[3].tokens == alone[0].tokens


class MarkovDecoder(torch.nn.Module):
    """A stand-in for the encoder–decoder whose next-token probabilities depend on the last
    token only: P(first) A .6, B .4; after A: end .3, A .35, B .35; after B: end .9, A .1.
    The likeliest sentence is "B" (.36), but greedy starts with A."""

    END, A, B = 0, 1, 2
    NEXT = {0: [0.0, 0.6, 0.4], 1: [0.3, 0.35, 0.35], 2: [0.9, 0.1, 1e-9]}

    def __init__(self) -> None:
        super().__init__()
        self.config = Seq2SeqConfig(vocab_size=3, max_length=8, d_model=4, n_layers=1,
                                    n_heads=1, d_ff=4, pad_id=0, bos_id=0, eos_id=0)
        self.first = True

    def encode(self, src, mask):
        return torch.zeros(src.shape[0], 1, 4)

    def memory_kv(self, memory):
        return []

    def new_cache(self, batch, length):
        return KVCache(self.config, batch, length, torch.device("cpu"), torch.float32)

    def decode(self, tokens, memory_kv, src_mask, cache=None, last_only=False):
        if cache is not None:
            cache.length += tokens.shape[1]
        start = cache is not None and cache.length == 1 or cache is None and tokens.shape[1] == 1
        last = tokens[:, -1].tolist()
        probs = [self.NEXT[0] if start else self.NEXT[t] for t in last]
        return torch.tensor(probs).clamp(min=1e-12).log()[:, None]


def best_by_enumeration(model: MarkovDecoder, length: int) -> tuple[list[int], float]:
    """Every ended sentence of up to `length` tokens, scored by its log-probability."""
    best, frontier = ([], -math.inf), [([], 0.0)]
    for step in range(length):
        grown = []
        for words, score in frontier:
            probs = model.NEXT[0] if step == 0 else model.NEXT[words[-1]]
            for token, p in enumerate(probs):
                if p <= 0:
                    continue
                if token == model.END:
                    best = max(best, (words, score + math.log(p)), key=lambda item: item[1])
                else:
                    grown.append((words + [token], score + math.log(p)))
        frontier = grown
    return best


@pytest.mark.parametrize("use_cache", [True, False])
def test_beam_search_returns_the_highest_scoring_sentence_where_greedy_does_not(use_cache):
    model = MarkovDecoder()
    src, mask = torch.ones(1, 2, dtype=torch.long), torch.ones(1, 2, dtype=torch.long)
    words, score = best_by_enumeration(model, 6)
    assert words == [MarkovDecoder.B]
    beam = beam_search(model, src, mask, 6, beam_size=2, length_penalty=0.0,
                       use_cache=use_cache)[0]
    assert beam.tokens == words and beam.finished
    assert beam.score == pytest.approx(score, abs=1e-5)
    greedy = greedy_search(model, src, mask, 6, use_cache=use_cache)[0]
    assert greedy.tokens[0] == MarkovDecoder.A and greedy.score < score


# --- data ---------------------------------------------------------------------------------------


def test_pairs_are_deduplicated_by_source_before_the_split_and_every_drop_is_counted(tmp_path):
    pairs = reversed_language(60)
    pairs += [
        (pairs[-1][0], "another " + pairs[-1][1]),  # a repeated source
        ("", "no source"), ("no target", ""),
        ("ab", "a target far, far longer than its source sentence could ever say"),
    ]
    data = write_pairs(tmp_path / "pairs.csv", pairs)
    cfg = load_config({"task": "translation", "data": {"path": str(data)}})
    prepared = prepare_pairs(cfg.data, cfg.translation.max_length_ratio)
    dropped = prepared.report["dropped"]
    assert dropped["duplicate_source"] == 1 and dropped["length_mismatch"] == 1
    assert dropped["missing_source"] == 1 and dropped["missing_target"] == 1
    assert prepared.report["rows_kept"] == 60
    splits = [set(getattr(prepared, name).sources) for name in ("train", "val", "test")]
    assert sum(map(len, splits)) == len(set.union(*splits)) == 60


def test_named_columns_are_read_and_a_missing_one_is_named(tmp_path):
    data = write_pairs(tmp_path / "pairs.csv", reversed_language(20), header=("zh", "en"))
    cfg = load_config({"task": "translation", "data": {
        "path": str(data), "source_column": "zh", "target_column": "en"}})
    assert prepare_pairs(cfg.data, 9.0).report["rows_kept"] == 20
    with pytest.raises(LmforgeError, match="column 'source' not found.*zh, en.*source_column"):
        prepare_pairs(load_config({"task": "translation", "data": {"path": str(data)}}).data, 9)
    assert "source_column: zh" in pipeline.init_config("translation", data)


def test_config_refuses_what_translation_cannot_use():
    with pytest.raises(LmforgeError, match="tokenizer.kind 'bpe'.*byte_bpe"):
        load_config({"task": "translation", "tokenizer": {"kind": "bpe"}})
    with pytest.raises(LmforgeError, match="translation.beam_size is not used by task"):
        load_config({"task": "classification", "translation": {"beam_size": 2}})
    cfg = load_config({"task": "translation", "eval": {"bootstrap": 50}})
    assert cfg.tokenizer.kind == "byte_bpe" and cfg.train.early_stopping_metric == "val_bleu"


# --- metrics and baselines -----------------------------------------------------------------------


def test_bleu_and_chrf_with_intervals_and_chinese_tokenization():
    refs = ["the cat sat on the mat", "a dog ran all the way home", "it rains a lot today"]
    perfect = translation_scores(refs, refs, "13a", 100)
    assert perfect["bleu"] == pytest.approx(100) and perfect["chrf"] == pytest.approx(100)
    assert perfect["ci95"]["bleu"] == pytest.approx([100, 100])
    worse = translation_scores(["the cat sat on a mat", "a dog ran home", "it rains"], refs,
                               "13a", 100)
    assert worse["ci95"]["bleu"][0] <= worse["bleu"] <= worse["ci95"]["bleu"][1] < 100
    assert target_tokenize(["我今天很高兴。", "他去北京了。"]) == "zh"
    assert target_tokenize(refs) == "13a"
    # without spaces, 13a reads each Chinese sentence as one word: zh scores the characters
    zh = translation_scores(["我今天很开心。"], ["我今天很高兴。"], "zh", 0)["bleu"]
    assert zh > translation_scores(["我今天很开心。"], ["我今天很高兴。"], "13a", 0)["bleu"]


def test_retrieval_returns_the_target_of_the_most_similar_training_source():
    train_sources, train_targets = ["我喜欢喝茶。", "他明天去上海。"], ["I like tea.", "He goes."]
    assert retrieval_translations(train_sources, train_targets, ["你喜欢喝茶吗？", "明天去上海"]) \
        == ["I like tea.", "He goes."]


# --- resume -------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_interrupted_then_resumed_training_equals_straight_through(tmp_path):
    data = write_pairs(tmp_path / "pairs.csv", reversed_language(80))
    cfg = load_config(tiny_config(data, tmp_path / "cache", steps=12)
                      | {"train": {"max_steps": 12, "eval_every": 4, "batch_size": 8}})
    # dies after step 6, between the checkpoints of steps 4 and 8
    straight, resumed = straight_and_resumed(recipe_training(translation.RECIPE, cfg), tmp_path)
    for key, value in straight.items():
        assert torch.equal(value, resumed[key]), key
