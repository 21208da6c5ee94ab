"""Translation with a pretrained seq2seq model (model.arch pretrained): a tiny randomly
initialised T5, saved with a tokenizer built here, fine-tunes on a toy copy language; its bundle
is save_pretrained's files and translates through `lmforge translate` and POST /v1/translations
as lmforge's own model does; exact resume; LoRA adapters. And two aligned text files as data."""

import csv
import json
import random
from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error, lmforge_cli
from resume_support import recipe_training, straight_and_resumed
from serve_support import app_client, auth, settings

import lmforge
import lmforge.pipeline as pipeline
from lmforge.config import load_config
from lmforge.data.pairs import prepare_pairs
from lmforge.errors import LmforgeError
from lmforge.evaluation.translation import translation_scores
from lmforge.models import PretrainedSeq2SeqLM
from lmforge.serve.billing import keys
from lmforge.serve.billing.database import open_database
from lmforge.tasks import translation
from lmforge.tokenization import load_pretrained_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = "ab cd ef gh ij kl mn op".split()


def copy_language(n: int, seed: int = 0) -> list[str]:
    rng, sentences = random.Random(seed), set()
    while len(sentences) < n:
        sentences.add(" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 5))))
    return sorted(sentences)


def write_pairs(path: Path, sentences: list[str]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["source", "target"])
        writer.writerows((s, s) for s in sentences)
    return path


def tiny_t5(folder: Path) -> Path:
    """A randomly initialised T5 (two layers, 32 wide) and a word-level fast tokenizer over
    WORDS, saved as a hub model is (save_pretrained)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    words = Tokenizer(models.WordLevel(unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    words.train_from_iterator([" ".join(WORDS)], trainers.WordLevelTrainer(
        special_tokens=["<pad>", "</s>", "<unk>"]))
    words.post_processor = processors.TemplateProcessing(single="$A </s>",
                                                         special_tokens=[("</s>", 1)])
    words.decoder = decoders.WordPiece()  # tokens joined by spaces
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, pad_token="<pad>",
                                        eos_token="</s>", unk_token="<unk>")
    torch.manual_seed(0)
    config = T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2,
                      num_heads=4, dropout_rate=0.0, pad_token_id=0, eos_token_id=1,
                      decoder_start_token_id=0)
    T5ForConditionalGeneration(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def pretrained_config(data: Path, base: Path, cache: Path, steps: int, **sections) -> dict:
    return {"task": "translation", "data": {"path": str(data), "cache_dir": str(cache)},
            "model": {"arch": "pretrained", "pretrained": str(base), "max_length": 16},
            "train": {"max_steps": steps, "eval_every": steps // 2, "batch_size": 16,
                      "lr": 3e-3},
            "translation": {"source_token_dropout": 0.0, "label_smoothing": 0.0},
            "eval": {"bootstrap": 100}, **sections}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("seq2seq")
    data = write_pairs(root / "pairs.csv", copy_language(600))
    base = tiny_t5(root / "t5")
    cfg = pretrained_config(data, base, root / "cache", steps=300)
    return base, lmforge.train(cfg, out=root / "run", show_progress=False)


def base_translations(base: Path, sources: list[str]) -> list[str]:
    """What the model translated before it was fine-tuned."""
    from transformers import AutoModelForSeq2SeqLM

    model = PretrainedSeq2SeqLM(AutoModelForSeq2SeqLM.from_pretrained(base))
    meta = {"clean": {}, "max_length": 16, "translation": {}}
    translator = translation.make_translator(model, load_pretrained_tokenizer(str(base)), meta)
    return [t.text for t in translator.translate(sources)]


@pytest.mark.timeout(120)
def test_a_pretrained_seq2seq_model_learns_to_copy_and_bundles_as_transformers_loads_it(
        trained):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    base, result = trained
    evals = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").open()
             if '"eval"' in line]
    assert evals[-1]["val_loss"] < 0.8 * evals[0]["val_loss"]
    rows = [json.loads(line) for line in (result.run_dir / "test_predictions.jsonl").open()]
    sources, references = [r["source"] for r in rows], [r["reference"] for r in rows]
    before = translation_scores(base_translations(base, sources), references, "13a", 0)
    assert result.eval_report["model"]["bleu"] > before["bleu"] + 15
    assert set(result.eval_report["baselines"]) == {"copy_source", "retrieval"}
    meta = json.loads((result.bundle_dir / "lmforge.json").read_text())
    assert meta["arch"] == "pretrained" and meta["pretrained"]["name"] == str(base)
    # the bundle is save_pretrained's layout: transformers loads it as it is
    assert AutoModelForSeq2SeqLM.from_pretrained(result.bundle_dir).config.d_model == 32
    assert AutoTokenizer.from_pretrained(result.bundle_dir)("ab cd")["input_ids"][-1] == 1
    # loaded, it translates as the run's evaluation did (same cleaning, tokenizer, decoding)
    translator = lmforge.load(result.bundle_dir)
    assert [t.text for t in translator.translate(sources)] == [r["output"] for r in rows]
    greedy = translator.translate(sources[:3], beam_size=1, max_new_tokens=2)
    assert all(t.output_tokens <= 2 for t in greedy)


@pytest.mark.timeout(120)
def test_translate_and_the_translations_api_run_a_pretrained_bundle(
        trained, tmp_path, monkeypatch, capsys, sqlite_url):
    bundle = trained[1].bundle_dir
    lines = ["ab cd ef", "", "gh ij", "op op kl mn"]
    source = tmp_path / "in.txt"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    translator = lmforge.load(bundle)
    expected = translator.translate(lines, beam_size=2)
    code, out, err = lmforge_cli(monkeypatch, capsys, "translate", bundle, "--input", source,
                             "--beam-size", "2")
    assert code == 0, err
    assert out.split("\n")[:-1] == [t.text for t in expected] and expected[1].text == ""
    code, _, err = lmforge_cli(monkeypatch, capsys, "translate", bundle, "--input", "-",
                           "--beam-size", "0", stdin="ab\n")
    assert_one_line_error(code, err, "beam_size must be greater than or equal to 1")

    secret = keys.create_key(open_database(sqlite_url), "translator")
    with app_client(settings(bundle, sqlite_url)) as client:
        response = client.post("/v1/translations", headers=auth(secret), json={
            "model": "run", "input": lines, "beam_size": 2})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [row["text"] for row in body["data"]] == [t.text for t in expected]
    assert body["usage"]["prompt_tokens"] == sum(translator.count_tokens(lines))
    assert body["usage"]["completion_tokens"] == sum(t.output_tokens for t in expected)


@pytest.mark.timeout(120)
def test_interrupted_then_resumed_fine_tuning_equals_straight_through(tmp_path):
    sentences = copy_language(80)
    (tmp_path / "corpus.src").write_text("\n".join(sentences) + "\n", encoding="utf-8")
    (tmp_path / "corpus.tgt").write_text("\n".join(sentences) + "\n", encoding="utf-8")
    base = tiny_t5(tmp_path / "t5")
    raw = pretrained_config(tmp_path / "corpus.src", base, tmp_path / "cache", steps=12)
    raw["data"]["target_path"] = str(tmp_path / "corpus.tgt")
    raw["train"].update(eval_every=4, batch_size=8)
    raw["translation"]["source_token_dropout"] = 0.2  # random masks: their RNG resumes too
    train = recipe_training(translation.RECIPE, load_config(raw))
    # dies after step 6, between the checkpoints of steps 4 and 8
    straight, resumed = straight_and_resumed(train, tmp_path)
    assert straight.keys() == resumed.keys()
    for key, value in straight.items():
        assert torch.equal(value, resumed[key]), key


@pytest.mark.timeout(120)
def test_lora_adapters_fine_tune_a_seq2seq_model_and_bundle_over_its_base(tmp_path):
    data = write_pairs(tmp_path / "pairs.csv", copy_language(120))
    base = tiny_t5(tmp_path / "t5")
    cfg = pretrained_config(data, base, tmp_path / "cache", steps=20,
                            eval={"bootstrap": 0})
    cfg["model"]["adapter"] = {"r": 4, "alpha": 8}
    result = lmforge.train(cfg, out=tmp_path / "run", show_progress=False)
    bundle = result.bundle_dir
    assert (bundle / "adapter_config.json").is_file() and not (bundle / "config.json").exists()
    meta = json.loads((bundle / "lmforge.json").read_text())
    assert meta["adapter"]["base"]["name"] == str(base)
    parameters = json.loads((result.run_dir / "provenance.json").read_text())["parameters"]
    assert 0 < parameters["trainable"] < parameters["total"] / 2
    rows = [json.loads(line) for line in (result.run_dir / "test_predictions.jsonl").open()]
    translator = lmforge.load(bundle)
    outputs = [r["output"] for r in rows]
    assert [t.text for t in translator.translate([r["source"] for r in rows])] == outputs
    # `lmforge export --merge`: the adapter folded into its base, a plain transformers bundle
    pipeline.export(bundle, merge=True, out=tmp_path / "merged")
    assert (tmp_path / "merged" / "config.json").is_file()
    merged = lmforge.load(tmp_path / "merged")
    assert [t.text for t in merged.translate([r["source"] for r in rows])] == outputs


def test_a_pretrained_model_reads_with_its_own_tokenizer(tmp_path):
    with pytest.raises(LmforgeError, match="its own tokenizer"):
        load_config({"task": "translation", "tokenizer": {"kind": "byte_bpe"},
                     "model": {"arch": "pretrained", "pretrained": str(tmp_path)}})
    cfg = load_config({"task": "translation",
                       "model": {"arch": "pretrained", "pretrained": str(tmp_path)}})
    assert cfg.tokenizer.kind == "pretrained" and cfg.train.lr == 5e-5


# --- two aligned text files ---------------------------------------------------------------------


def test_aligned_text_files_are_pairs_line_by_line_and_blank_lines_are_counted(tmp_path):
    sources = ["我喝茶。", "", "他们去北京。", "你好。", "我喝茶。", "再见。"]
    targets = ["I drink tea.", "Hello?", "They go to Beijing.", "", "I drink tea too.", "Bye."]
    (tmp_path / "corpus.zh").write_text("\n".join(sources) + "\n", encoding="utf-8")
    (tmp_path / "corpus.en").write_text("\n".join(targets), encoding="utf-8")  # no last newline
    cfg = load_config({"task": "translation",
                       "data": {"path": str(tmp_path / "corpus.zh"),
                                "target_path": str(tmp_path / "corpus.en"),
                                "split": {"val": 0, "test": 0}}})
    prepared = prepare_pairs(cfg.data, cfg.translation.max_length_ratio)
    report = prepared.report
    assert report["rows_read"] == 6 and report["rows_kept"] == 3
    assert report["dropped"]["missing_source"] == 1 and report["dropped"]["missing_target"] == 1
    assert report["dropped"]["duplicate_source"] == 1
    pairs = dict(zip(prepared.train.sources, prepared.train.targets, strict=True))
    assert pairs == {"我喝茶。": "I drink tea.", "他们去北京。": "They go to Beijing.",
                     "再见。": "Bye."}
    # `lmforge init` finds the file aligned beside it
    written = pipeline.init_config("translation", str(tmp_path / "corpus.zh"))
    assert f"target_path: {tmp_path / 'corpus.en'}" in written


def test_aligned_files_of_different_lengths_are_an_error_naming_both(tmp_path):
    (tmp_path / "a.zh").write_text("一\n二\n三\n", encoding="utf-8")
    (tmp_path / "a.en").write_text("one\ntwo\n", encoding="utf-8")
    cfg = load_config({"task": "translation", "data": {"path": str(tmp_path / "a.zh"),
                                                       "target_path": str(tmp_path / "a.en")}})
    with pytest.raises(LmforgeError) as error:
        prepare_pairs(cfg.data, 9.0)
    assert f"{tmp_path / 'a.zh'} has 3 lines but {tmp_path / 'a.en'} has 2" in str(error.value)
    cfg = load_config({"task": "translation", "data": {"path": str(tmp_path / "a.zh"),
                                                       "target_path": "missing.en"}})
    with pytest.raises(LmforgeError, match="data file not found: missing.en"):
        prepare_pairs(cfg.data, 9.0)
    with pytest.raises(LmforgeError, match="data.target_path is not used by task"):
        load_config({"task": "classification", "data": {"target_path": "b.en"}})
