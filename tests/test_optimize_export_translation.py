"""lmforge's encoder–decoder exported to ONNX (an encoder graph, and a decoder graph with its KV
cache as inputs and outputs): the graphs' logits match PyTorch for any past and new tokens, the
exported bundle translates as the original does (greedy and beam, in Python, on the command line
and served), and a damaged bundle or a model it cannot export is one clear error."""

import json
import shutil

import pytest
import torch
from conftest import assert_one_line_error, lmforge_cli
from safetensors.torch import save_model
from serve_support import app_client, auth, settings
from translation_support import random_translation_bundle

import lmforge
from lmforge.decoding import beam_search, greedy_search
from lmforge.errors import LmforgeError
from lmforge.models import EncoderDecoder, Seq2SeqConfig
from lmforge.models.onnx_translation import OnnxEncoderDecoder
from lmforge.optimize import export_translation
from lmforge.optimize.export_translation import export_encoder_decoder
from lmforge.serve.billing import keys
from lmforge.serve.billing.database import open_database
from lmforge.tasks.classification import pad_batch

pytestmark = pytest.mark.usefixtures("one_thread")

SOURCES = ["我每天早上喝咖啡。", "他们明天去北京。", "这本书很有意思。", "你好", "I drink coffee."]


def learn_to_copy(model: EncoderDecoder, steps: int = 300) -> EncoderDecoder:
    """A few Adam steps on copying random token sequences: the outputs then follow the source
    (an untrained model says one token whatever it reads), and near-ties between tokens are
    rare."""
    cfg, rng = model.config, torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        src = torch.randint(3, min(cfg.vocab_size, 60), (32, 6), generator=rng)
        src = torch.where(torch.isin(src, torch.tensor([cfg.pad_id, cfg.eos_id])), 3, src)
        start = torch.full((32, 1), cfg.bos_id)
        end = torch.full((32, 1), cfg.eos_id)
        logits = model(src, torch.ones_like(src), torch.cat([start, src], 1))
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1),
                                                 torch.cat([src, end], 1).flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def tiny_model(n_layers: int = 2) -> EncoderDecoder:
    torch.manual_seed(0)
    return EncoderDecoder(Seq2SeqConfig(
        vocab_size=60, max_length=20, d_model=32, n_layers=n_layers, n_heads=4, d_ff=64,
        dropout=0.1, pad_id=0, bos_id=1, eos_id=2))  # dropout: the graphs must leave it out


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """A translation bundle of an encoder–decoder that learnt to copy a little, and its ONNX
    export (through the command line's code)."""
    root = tmp_path_factory.mktemp("translation-onnx")
    original = random_translation_bundle(root / "model", max_length=20)
    save_model(learn_to_copy(lmforge.load(original).model), str(original / "model.safetensors"))
    exported = root / "model-onnx"
    pairs = root / "pairs.csv"  # the sentences --data gives to score both runtimes on
    pairs.write_text("source,target\n" + "".join(f"{s},{s}\n" for s in SOURCES),
                     encoding="utf-8")
    report = lmforge.export(original, out=exported, data=pairs)
    return original, exported, report


@pytest.mark.timeout(60)
def test_onnx_graphs_match_pytorch_for_any_past_and_new_tokens(tmp_path):
    model = learn_to_copy(tiny_model())
    export_encoder_decoder(model, tmp_path, opset=17)
    onnx = OnnxEncoderDecoder(tmp_path / "encoder.onnx", tmp_path / "decoder.onnx", model.config)
    # sources of other lengths than the traced ones, right-padded
    batch = pad_batch([torch.tensor(s).numpy() for s in ([5, 6, 7, 8, 9, 10, 11], [12, 13],
                                                          [14, 15, 16, 17])], 0)
    src, mask = batch["input_ids"], batch["attention_mask"]
    targets = torch.randint(3, 60, (3, 9), generator=torch.Generator().manual_seed(0))
    targets[:, 0] = 1
    with torch.no_grad():
        reference = model(src, mask, targets)
    assert torch.allclose(onnx(src, mask, targets), reference, atol=1e-5)  # whole, no past
    memory_kv, cache = onnx.encode(src, mask), onnx.new_cache(3, 20)
    pieces = [onnx.decode(targets[:, :4], memory_kv, mask, cache),  # 4 tokens, then 1, then 4
              onnx.decode(targets[:, 4:5], memory_kv, mask, cache),
              onnx.decode(targets[:, 5:], memory_kv, mask, cache)]
    assert cache.length == 9 and cache.arrays[0].shape == (3, 4, 9, 8)
    assert torch.allclose(torch.cat(pieces, 1), reference, atol=1e-5)

    for search, args in ((greedy_search, ()), (beam_search, (3, 1.0)), (beam_search, (4, 0.0))):
        expected = search(model, src, mask, 12, *args)
        got = search(onnx, src, mask, 12, *args)
        assert [h.tokens for h in got] == [h.tokens for h in expected]
        assert [h.score for h in got] == pytest.approx([h.score for h in expected], abs=1e-4)
    assert len({tuple(h.tokens) for h in expected}) > 1  # the sources translate differently


@pytest.mark.timeout(120)
def test_exported_bundle_translates_as_pytorch_greedy_and_beam(
    bundles, tmp_path, monkeypatch, capsys
):
    original, exported, report = bundles
    check = report["check"]
    assert check["greedy_sources_differ"] == check["beam_sources_differ"] == 0
    assert check["max_abs_logit_diff_cached"] <= check["allowed_abs_logit_diff"]
    written = json.loads((exported / "compress_report.json").read_text())
    for side in ("original", "result"):
        assert written[side]["sentences_per_s_b1"] > 0 and written[side]["sentences_per_s_b8"] > 0
    held_out = written["eval"]  # the pairs given as --data, translated by both runtimes
    assert held_out["n"] == len(SOURCES) and held_out["original"]["chrf"] > 0
    for figure in ("bleu", "chrf"):
        assert held_out["result"][figure] == pytest.approx(held_out["original"][figure])
    meta = json.loads((exported / "lmforge.json").read_text())
    assert meta["runtime"] == "onnx" and not (exported / "model.safetensors").exists()

    torch_translator, onnx_translator = lmforge.load(original), lmforge.load(exported)
    assert isinstance(onnx_translator.model, OnnxEncoderDecoder)
    for beam in (1, 3):
        expected = torch_translator.translate(SOURCES, beam_size=beam)
        got = onnx_translator.translate(SOURCES, beam_size=beam, batch_size=2)
        assert [t.text for t in got] == [t.text for t in expected]
        assert [t.output_tokens for t in got] == [t.output_tokens for t in expected]
    assert len({t.text for t in expected}) > 1

    source = tmp_path / "in.txt"
    source.write_text("\n".join(SOURCES) + "\n", encoding="utf-8")
    outputs = [lmforge_cli(monkeypatch, capsys, "translate", bundle, "--input", source,
                           "--beam-size", 2) for bundle in (original, exported)]
    assert outputs[0][0] == outputs[1][0] == 0, outputs[1][2]
    assert outputs[1][1] == outputs[0][1] and len(outputs[1][1].splitlines()) == len(SOURCES)


@pytest.mark.timeout(120)
def test_exported_bundle_serves_translations(bundles, sqlite_url):
    original, exported, _ = bundles
    secret = keys.create_key(open_database(sqlite_url), "translator")
    expected = lmforge.load(original).translate(SOURCES, beam_size=3)
    serve = settings(exported, sqlite_url).model_copy(update={"models": [f"zh-en={exported}"]})
    with app_client(serve) as client:
        response = client.post("/v1/translations", headers=auth(secret),
                               json={"model": "zh-en", "input": SOURCES, "beam_size": 3})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [row["text"] for row in body["data"]] == [t.text for t in expected]
    assert body["usage"]["completion_tokens"] == sum(t.output_tokens for t in expected)


@pytest.mark.timeout(60)
def test_a_missing_or_corrupt_onnx_file_is_named(bundles, tmp_path, monkeypatch, capsys):
    _, exported, _ = bundles
    damaged = tmp_path / "damaged"
    shutil.copytree(exported, damaged)
    (damaged / "decoder.onnx").write_bytes(b"not a protobuf at all")
    with pytest.raises(LmforgeError, match="decoder.onnx: not a valid ONNX model"):
        lmforge.load(damaged)
    (damaged / "in.txt").write_text("你好\n", encoding="utf-8")
    code, _, err = lmforge_cli(monkeypatch, capsys, "translate", damaged, "--input",
                               damaged / "in.txt")
    assert_one_line_error(code, err, "decoder.onnx", "not a valid ONNX model")
    (damaged / "encoder.onnx").unlink()
    with pytest.raises(LmforgeError, match="encoder.onnx: missing"):
        lmforge.load(damaged)
    # graphs of another model (two layers where lmforge.json says one)
    export_encoder_decoder(tiny_model(), damaged, opset=17)
    with pytest.raises(LmforgeError, match="decoder.onnx: not the decoder graph of an "
                                           "encoder–decoder of 1 layers"):
        lmforge.load(damaged)


@pytest.mark.timeout(60)
def test_what_cannot_be_exported_is_refused_and_nothing_is_written(
    bundles, tmp_path, monkeypatch, capsys
):
    original, exported, _ = bundles
    code, _, err = lmforge_cli(monkeypatch, capsys, "export", exported, "--out", tmp_path / "x")
    assert_one_line_error(code, err, "already an ONNX bundle")
    pretrained = tmp_path / "pretrained"
    shutil.copytree(original, pretrained)
    meta = json.loads((pretrained / "lmforge.json").read_text())
    meta.update(arch="pretrained", base_model="Helsinki-NLP/opus-mt-zh-en")
    (pretrained / "lmforge.json").write_text(json.dumps(meta))
    code, _, err = lmforge_cli(monkeypatch, capsys, "export", pretrained, "--out", tmp_path / "y")
    assert_one_line_error(code, err, "pretrained seq2seq model (Helsinki-NLP/opus-mt-zh-en)",
                          "model.arch transformer")
    code, _, err = lmforge_cli(monkeypatch, capsys, "export", original, "--out", tmp_path / "z",
                               "--opset", 11)
    assert_one_line_error(code, err, "--opset 11 is too old")
    code, _, err = lmforge_cli(monkeypatch, capsys, "compress", original, "--prune", 0.5,
                               "--out", tmp_path / "w")
    assert_one_line_error(code, err, "a translation bundle compresses with --quantize int8 only")
    assert not any((tmp_path / name).exists() for name in "xyzw")


@pytest.mark.timeout(60)
def test_an_export_that_disagrees_fails_with_the_difference_and_writes_nothing(
    bundles, tmp_path, monkeypatch
):
    original, _, _ = bundles
    decode = OnnxEncoderDecoder.decode
    monkeypatch.setattr(OnnxEncoderDecoder, "decode",
                        lambda self, *a, **k: decode(self, *a, **k) + 1e-2)
    with pytest.raises(LmforgeError, match=r"max \|logit difference\| 1.00e-02 without the cache"):
        lmforge.export(original, out=tmp_path / "off")
    assert not (tmp_path / "off").exists()


@pytest.mark.timeout(120)
def test_int8_is_kept_within_its_tolerance_and_refused_beyond_it(
    bundles, tmp_path, monkeypatch, capsys
):
    original, exported, _ = bundles
    code, _, err = lmforge_cli(monkeypatch, capsys, "compress", original, "--quantize", "int8",
                               "--out", tmp_path / "int8")
    assert code == 0, err
    assert "ONNX Runtime (int8) vs PyTorch" in err and "ONNX Runtime (fp32) vs PyTorch" in err
    report = json.loads((tmp_path / "int8" / "compress_report.json").read_text())
    check = report["check"]
    assert check["weights"] == "int8" and report["check_fp32"]["greedy_sources_differ"] == 0
    assert check["max_abs_logit_diff"] <= check["allowed_abs_logit_diff"]
    assert max(check["greedy_sources_differ"], check["beam_sources_differ"]) <= 1
    meta = json.loads((tmp_path / "int8" / "lmforge.json").read_text())
    assert meta["onnx"]["weights"] == "int8"
    int8 = lmforge.load(tmp_path / "int8")
    fp32 = lmforge.load(exported).translate(SOURCES, beam_size=3)
    same = [a.text == b.text for a, b in zip(int8.translate(SOURCES, beam_size=3), fp32,
                                             strict=True)]
    assert sum(same) >= len(SOURCES) - 1, same

    monkeypatch.setattr(export_translation, "INT8_MAX_DIFF", 1e-6)  # a tolerance int8 misses
    with pytest.raises(LmforgeError, match=r"ONNX Runtime \(int8\) disagrees with PyTorch.*"
                                           "export it as fp32.*nothing was written"):
        lmforge.compress(original, quantize="int8", out=tmp_path / "strict")
    assert not (tmp_path / "strict").exists()
