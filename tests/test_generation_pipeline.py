"""Generation end to end on a tiny corpus: data, token cache, training, eval.json beside the
unigram baseline, the bundle's Generator, evaluate, and exact resume."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from generation_support import corpus_lines, tiny_generation_config, write_corpus
from resume_support import straight_and_resumed

import lmforge
from lmforge.bundle import Generator
from lmforge.config import load_config
from lmforge.data.documents import prepare_documents
from lmforge.errors import LmforgeError
from lmforge.models import GPT, GPTConfig
from lmforge.tasks import generation
from lmforge.tokenization import END_OF_TEXT, train_tokenizer
from lmforge.training import fit

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("generation")
    corpus = write_corpus(root / "corpus.txt")
    cfg = tiny_generation_config(corpus, root / "cache")
    result = lmforge.train(cfg, out=root / "run", show_progress=False)
    return result, cfg


def test_training_writes_a_run_whose_model_beats_the_unigram_baseline(trained):
    result, _ = trained
    run = result.run_dir
    for name in ("config.yaml", "data_report.json", "metrics.jsonl", "eval.json",
                 "provenance.json", "model/lmforge.json", "model/model.safetensors",
                 "model/tokenizer.json", "checkpoints/best", "checkpoints/last"):
        assert (run / name).exists(), name
    report = json.loads((run / "eval.json").read_text())
    assert set(report) >= {"val_loss", "test_loss", "perplexity", "baselines", "n_tokens"}
    assert report["perplexity"] == pytest.approx(np.exp(report["test_loss"]))
    assert report["perplexity"] < report["baselines"]["unigram"]["perplexity"] / 3
    data_report = json.loads((run / "data_report.json").read_text())
    assert data_report["split_by"] == "document"
    assert data_report["split_sizes"] == {"train": 240, "val": 30, "test": 30}
    assert data_report["token_dtype"] == "uint16"
    meta = json.loads((run / "model" / "lmforge.json").read_text())
    assert meta["task"] == "generation" and meta["arch"] == "gpt"
    assert meta["generate"]["max_new_tokens"] == 128


def test_the_bundle_continues_the_pattern_it_learned(trained):
    generator = lmforge.load(trained[0].bundle_dir)
    assert isinstance(generator, Generator)
    [completion] = generator.generate(["the cat sat counts one"], temperature=0,
                                      max_new_tokens=20)
    assert completion.text.startswith(" two three four five six")
    assert completion.finish_reason == "stop"  # the model ends the line with end-of-text


def test_same_seed_same_text_and_stream_equals_generate(trained):
    generator = lmforge.load(trained[0].bundle_dir)
    prompts = ["the dog", "red"]
    settings = {"temperature": 1.0, "top_k": 0, "seed": 7, "max_new_tokens": 15}
    first = generator.generate(prompts, **settings)
    assert first == generator.generate(prompts, **settings)
    streamed = ["", ""]
    for event in generator.stream(prompts, **settings):
        streamed[event.index] += event.text
    assert streamed == [c.text for c in first]


def test_a_stop_string_ends_the_continuation_before_it(trained):
    generator = lmforge.load(trained[0].bundle_dir)
    [completion] = generator.generate(["the cat sat counts one"], temperature=0, stop=["four"])
    assert completion.text == " two three " and completion.finish_reason == "stop"
    pieces = [e.text for e in generator.stream(["the cat sat counts one"], temperature=0,
                                               stop=["four"])]
    assert "".join(pieces) == " two three "


def test_evaluate_reports_loss_and_perplexity_again_and_on_a_file(trained, tmp_path):
    result, _ = trained
    before = json.loads((result.run_dir / "eval.json").read_text())
    again = lmforge.evaluate(result.run_dir, show=False)
    assert again["test_loss"] == pytest.approx(before["test_loss"], rel=1e-6)
    other = tmp_path / "holdout.txt"
    other.write_text("\n".join(corpus_lines(20, seed=9)) + "\n", encoding="utf-8")
    report = lmforge.evaluate(result.bundle_dir, data=other, show=False)
    assert report["perplexity"] < report["baselines"]["unigram"]["perplexity"]
    assert (result.run_dir / "eval-holdout.json").is_file()


def test_a_second_run_reuses_the_memory_mapped_token_file(trained, tmp_path, capsys):
    result, cfg = trained
    capsys.readouterr()
    lmforge.train(cfg, out=tmp_path / "again", overrides=["train.max_steps=2"],
                  show_progress=False)
    assert "cache hit" in capsys.readouterr().err
    [entry] = [p for p in (Path(cfg["data"]["cache_dir"]) / "tokens").iterdir() if p.is_dir()]
    n_train = json.loads((result.run_dir / "data_report.json").read_text())["tokens"]["train"]
    assert (entry / "train.bin").stat().st_size == 2 * n_train  # one uint16 per token


def test_too_few_documents_split_by_position(tmp_path):
    folder = tmp_path / "books"
    (folder / "a").mkdir(parents=True)
    long_text = " ".join(corpus_lines(40))
    for name in ("one.txt", "a/two.txt", "a/three.txt"):
        (folder / name).write_text(long_text, encoding="utf-8")
    (folder / "notes.md").write_text("ignored")
    cfg = load_config({"task": "generation", "data": {"path": str(folder)}})
    data = prepare_documents(cfg.data)
    assert data.split_by == "position"
    assert data.report["ignored_files"]["count"] == 1
    chars = {name: sum(map(len, split.texts)) for name, split in
             (("train", data.train), ("val", data.val), ("test", data.test))}
    total = sum(chars.values())
    assert chars["test"] == pytest.approx(0.1 * total, rel=0.02)
    assert chars["val"] == pytest.approx(0.1 * total, rel=0.02)


def test_a_file_document_keeps_its_line_breaks(tmp_path):
    folder = tmp_path / "poems"
    folder.mkdir()
    for i in range(12):
        text = f"Poem {i}\r\n\r\n\r\n  first   line\nsecond <b>line</b>\n"
        (folder / f"{i:02}.txt").write_text(text, encoding="utf-8")
    cfg = load_config({"task": "generation", "data": {"path": str(folder)}})
    data = prepare_documents(cfg.data)
    assert data.split_by == "document"
    texts = data.train.texts + data.val.texts + data.test.texts
    assert "Poem 3\n\nfirst line\nsecond line" in texts


def test_a_table_text_column_and_undecodable_bytes(tmp_path):
    path = tmp_path / "docs.csv"
    rows = [f"{i},\"{line}\"" for i, line in enumerate(corpus_lines(30))]
    path.write_bytes(("id,body\n" + "\n".join(rows) + "\n").encode() + b"7,caf\xe9 au lait\n")
    cfg = load_config({"task": "generation", "data": {"path": str(path), "text_column": "body"}})
    data = prepare_documents(cfg.data)
    assert data.report["documents_kept"] == 31
    assert data.report["undecodable"]["rows"] == 1
    with pytest.raises(LmforgeError, match="column 'text' not found.*id, body"):
        prepare_documents(load_config({"task": "generation", "data": {"path": str(path)}}).data)


@pytest.mark.parametrize(
    ("content", "message"),
    [("\n\n  \n", "no text in"), ("just a few words\n", "fewer than one context window")],
)
def test_a_corpus_too_small_to_train_is_a_clear_error(tmp_path, content, message):
    path = tmp_path / "small.txt"
    path.write_text(content, encoding="utf-8")
    cfg = tiny_generation_config(path, tmp_path / "cache")
    with pytest.raises(LmforgeError, match=message):
        lmforge.train(cfg, out=tmp_path / "run", show_progress=False)


def test_interrupted_then_resumed_training_equals_straight_through(tmp_path):
    tokens = np.random.default_rng(0).integers(0, 50, 2000).astype(np.uint16)
    cfg = load_config({"task": "generation", "train": {
        "max_steps": 12, "batch_size": 4, "eval_every": 4, "lr": 3e-3}}).train

    def run(out, wrap_loss, resume):
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=50, max_length=16, d_model=32, n_layers=1, n_heads=2,
                              d_ff=64, dropout=0.1))
        fit(model, generation.TokenWindows(tokens, 16), generation.make_collate(tokens, 16),
            wrap_loss(generation.lm_loss), generation.make_val_metrics(tokens[:200], 16, None),
            cfg, out, resume=resume, metric_mode="min", show_progress=False)
        return model.state_dict()

    # dies after step 6, between the checkpoints of steps 4 and 8
    straight, resumed = straight_and_resumed(run, tmp_path)
    for key, value in straight.items():
        assert torch.equal(value, resumed[key]), key


def test_a_pretrained_causal_lm_fine_tunes_and_decodes_as_transformers_does(tmp_path):
    transformers = pytest.importorskip("transformers")
    corpus = write_corpus(tmp_path / "corpus.txt")
    tokenizer = train_tokenizer(corpus_lines(), "byte_bpe", 300)
    local = tmp_path / "tiny-gpt2"  # a "hub model" made here: no network
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer.backend, eos_token=END_OF_TEXT
    ).save_pretrained(local)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=tokenizer.vocab_size, n_positions=64, n_embd=32, n_layer=1, n_head=2,
        bos_token_id=tokenizer.eos_id, eos_token_id=tokenizer.eos_id,
    )).save_pretrained(local)
    cfg = tiny_generation_config(corpus, tmp_path / "cache", max_steps=80)
    cfg["model"] = {"arch": "pretrained", "pretrained": str(local), "max_length": 32,
                    "gradient_checkpointing": True}
    result = lmforge.train(cfg, out=tmp_path / "run", show_progress=False)
    report = result.eval_report
    assert report["perplexity"] < report["baselines"]["unigram"]["perplexity"]

    generator = lmforge.load(result.bundle_dir)
    [ours] = generator.generate(["the cat sat"], temperature=0, max_new_tokens=10)
    hf = transformers.AutoModelForCausalLM.from_pretrained(result.bundle_dir)  # as saved
    prompt = torch.from_numpy(generator.tokenizer.encode_documents(["the cat sat"])[0])[None]
    out = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=10,
                      do_sample=False, pad_token_id=tokenizer.eos_id)
    theirs = generator.tokenizer.decode(out[0, prompt.shape[1]:].tolist())
    assert ours.text == theirs
