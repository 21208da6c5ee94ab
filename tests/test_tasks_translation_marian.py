"""Translation with a Marian model (model.arch pretrained): a tiny randomly initialised
MarianMTModel and a MarianTokenizer over two sentencepiece models trained here (Marian's
tokenizer is sentencepiece only, with no fast version) fine-tune on a toy lower-case →
upper-case language; the bundle loads in transformers and translates as lmforge does, through
`lmforge translate` and POST /v1/translations (tokens metered); exact resume; `lmforge check`.
What needs a fast tokenizer refuses the slow one by name."""

import io
import json
import random
from pathlib import Path

import pytest
import torch
from conftest import lmforge_cli
from resume_support import recipe_training, straight_and_resumed
from serve_support import app_client, auth, settings
from test_tasks_translation_pretrained import pretrained_config

import lmforge
from lmforge.check import check
from lmforge.config import load_config
from lmforge.errors import LmforgeError
from lmforge.serve.billing import keys
from lmforge.serve.billing.database import open_database
from lmforge.tasks import translation
from lmforge.tokenization import TextTokenizer, load_pretrained_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = "ab cd ef gh ij kl mn op".split()


def toy_language(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """(source, target) pairs: words of WORDS, and the same words in upper case."""
    rng, sentences = random.Random(seed), set()
    while len(sentences) < n:
        sentences.add(" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 5))))
    return [(s, s.upper()) for s in sorted(sentences)]


def write_pairs(path: Path, pairs: list[tuple[str, str]]) -> Path:
    rows = [{"source": source, "target": target} for source, target in pairs]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def tiny_marian(folder: Path) -> Path:
    """A randomly initialised MarianMTModel (d_model 32, one encoder and one decoder layer) and
    its MarianTokenizer: a source and a target sentencepiece model trained on the toy language,
    and the vocab.json of both, as opus-mt models are saved (save_pretrained)."""
    import sentencepiece as spm
    from transformers import MarianConfig, MarianMTModel, MarianTokenizer

    folder.mkdir(parents=True)
    pairs = toy_language(200, seed=1)
    vocab = {"</s>": 0, "<unk>": 1}
    for name, texts in (("source", [s for s, _ in pairs]), ("target", [t for _, t in pairs])):
        model = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts), model_writer=model, vocab_size=16,
            hard_vocab_limit=False, model_type="word", bos_id=-1, eos_id=-1, unk_id=0,
            minloglevel=2)
        (folder / f"{name}.spm").write_bytes(model.getvalue())
        pieces = spm.SentencePieceProcessor(model_proto=model.getvalue())
        for i in range(pieces.get_piece_size()):
            vocab.setdefault(pieces.id_to_piece(i), len(vocab))
    vocab["<pad>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    tokenizer = MarianTokenizer(str(folder / "source.spm"), str(folder / "target.spm"),
                                str(folder / "vocab.json"))
    torch.manual_seed(0)
    pad = vocab["<pad>"]
    # embeddings scaled by sqrt(d_model), as opus-mt's are, and initialised wide enough to
    # stand out beside the sinusoidal positions at this width
    config = MarianConfig(vocab_size=len(vocab), d_model=32, encoder_layers=1, decoder_layers=1,
                          encoder_attention_heads=4, decoder_attention_heads=4,
                          encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
                          dropout=0.0, scale_embedding=True, init_std=0.1, pad_token_id=pad,
                          eos_token_id=0, decoder_start_token_id=pad, forced_eos_token_id=0)
    MarianMTModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("marian")
    data = write_pairs(root / "pairs.jsonl", toy_language(500))
    base = tiny_marian(root / "opus-mt-toy")
    cfg = pretrained_config(data, base, root / "cache", steps=200)
    return base, lmforge.train(cfg, out=root / "run", show_progress=False)


def transformers_translations(folder: Path, sources: list[str]) -> list[str]:
    """Greedy translations by transformers alone (MarianMTModel, MarianTokenizer)."""
    from transformers import MarianMTModel, MarianTokenizer

    tokenizer = MarianTokenizer.from_pretrained(folder)
    model = MarianMTModel.from_pretrained(folder).eval()
    batch = tokenizer(sources, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**batch, num_beams=1, do_sample=False, max_new_tokens=16)
    return [text.strip() for text in tokenizer.batch_decode(out, skip_special_tokens=True)]


@pytest.mark.timeout(120)
def test_a_marian_model_fine_tunes_and_its_bundle_is_what_transformers_loads(trained):
    base, result = trained
    evals = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").open()
             if '"eval"' in line]
    assert evals[-1]["val_loss"] < 0.5 * evals[0]["val_loss"]
    assert result.eval_report["model"]["bleu"] > 50
    bundle = result.bundle_dir
    # Marian's own tokenizer files, beside save_pretrained's model
    for name in ("source.spm", "target.spm", "vocab.json", "config.json"):
        assert (bundle / name).is_file(), name
    rows = [json.loads(line) for line in (result.run_dir / "test_predictions.jsonl").open()]
    sources = [row["source"] for row in rows]
    # transformers alone, greedy, translates as lmforge does, and as the run's evaluation did
    translator = lmforge.load(bundle)
    ours = [t.text for t in translator.translate(sources, beam_size=1)]
    assert ours == transformers_translations(bundle, sources)
    assert [t.text for t in translator.translate(sources)] == [row["output"] for row in rows]
    # before fine-tuning it translated nothing right
    assert sum(a == b for a, b in zip(transformers_translations(base, sources),
                                      [row["reference"] for row in rows], strict=True)) == 0


@pytest.mark.timeout(120)
def test_translate_and_the_translations_api_run_a_marian_bundle_metered_in_its_tokens(
        trained, monkeypatch, capsys, sqlite_url):
    from transformers import MarianTokenizer

    bundle = trained[1].bundle_dir
    lines = ["ab cd ef", "gh ij", "op op kl mn"]
    translator = lmforge.load(bundle)
    expected = translator.translate(lines, beam_size=2)
    code, out, err = lmforge_cli(monkeypatch, capsys, "translate", bundle, "--input", "-",
                             "--beam-size", "2", stdin="\n".join(lines) + "\n")
    assert code == 0, err
    assert out.split("\n")[:-1] == [t.text for t in expected]

    secret = keys.create_key(open_database(sqlite_url), "translator")
    with app_client(settings(bundle, sqlite_url)) as client:
        response = client.post("/v1/translations", headers=auth(secret), json={
            "model": "run", "input": lines, "beam_size": 2})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [row["text"] for row in body["data"]] == [t.text for t in expected]
    # the sources' tokens as Marian's tokenizer reads them (its end token included)
    marian = MarianTokenizer.from_pretrained(bundle)
    assert body["usage"]["prompt_tokens"] == sum(len(ids) for ids in marian(lines)["input_ids"])
    assert body["usage"]["completion_tokens"] == sum(t.output_tokens for t in expected) > 0


@pytest.mark.timeout(120)
def test_interrupted_then_resumed_marian_fine_tuning_equals_straight_through(tmp_path):
    data = write_pairs(tmp_path / "pairs.jsonl", toy_language(80))
    base = tiny_marian(tmp_path / "opus-mt-toy")
    raw = pretrained_config(data, base, tmp_path / "cache", steps=12)
    raw["train"].update(eval_every=4, batch_size=8)
    train = recipe_training(translation.RECIPE, load_config(raw))
    straight, resumed = straight_and_resumed(train, tmp_path)  # dies between steps 4 and 8
    assert straight.keys() == resumed.keys()
    for key, value in straight.items():
        assert torch.equal(value, resumed[key]), key


def test_check_counts_marian_tokens_and_a_fast_only_use_refuses_the_tokenizer_by_name(tmp_path):
    data = write_pairs(tmp_path / "pairs.jsonl", toy_language(60))
    base = tiny_marian(tmp_path / "opus-mt-toy")
    report = check(pretrained_config(data, base, tmp_path / "cache", steps=4))
    lengths = report["length_tokens"]
    assert lengths["min"] == 1 and lengths["max"] == 5  # 1 to 5 words, a token each
    assert report["parameters"] is not None  # the Marian model counted from its config
    tokenizer = load_pretrained_tokenizer(str(base))
    assert tokenizer.vocab_size == len(json.loads((base / "vocab.json").read_text()))
    assert tokenizer.decode(tokenizer.encode_plain(["ab cd"], add_special_tokens=True)[0]) \
        == "ab cd"
    with pytest.raises(LmforgeError, match="has no fast \\(Rust\\) version"):
        tokenizer.encode(["ab cd"], 8)  # classification's encoder: a Rust tokenizer only
    with pytest.raises(LmforgeError, match="has no fast \\(Rust\\) version"):
        TextTokenizer.load(base).encode_offsets("ab cd")
