"""lmforge's GPT exported to ONNX with its KV cache as inputs and outputs: the graph's logits
match PyTorch with and without the cache, the exported bundle generates the same text as the
original (greedy, sampled, streamed, served), and a damaged bundle or a model it cannot export
is one clear error."""

import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch
from conftest import assert_one_line_error, lmforge_cli
from generation_support import random_bundle
from serve_support import story_server

import lmforge
from lmforge.decoding import DecodeBatch, Sampling, left_padded
from lmforge.errors import LmforgeError
from lmforge.models import GPT, GPTConfig
from lmforge.models.onnx_generation import OnnxGPT
from lmforge.optimize.export_gpt import export_gpt

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["the cat sat on", "a big red dog ran under the log"]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """A random GPT bundle and its ONNX export (through the command line's code)."""
    root = tmp_path_factory.mktemp("gpt-onnx")
    original = random_bundle(root / "model", context=48)
    exported = root / "model-onnx"
    documents = root / "documents.txt"
    documents.write_text("the cat sat on a mat\nthe dog ran under a big log\n", encoding="utf-8")
    report = lmforge.export(original, out=exported, data=documents)
    return original, exported, report


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A random GPT (4 heads, 2 layers) and its ONNX graph run by ONNX Runtime."""
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=50, max_length=24, d_model=32, n_layers=2, n_heads=4,
                        d_ff=64)).eval()
    path = tmp_path_factory.mktemp("gpt-graph") / "gpt.onnx"
    export_gpt(gpt, path, opset=17)
    return gpt, OnnxGPT(path, gpt.config.to_dict())


@pytest.mark.timeout(120)
def test_onnx_logits_match_pytorch_with_and_without_the_cache(exported):
    gpt, onnx = exported
    # left-padded prompts of other lengths than the traced ones, and a batch of one token
    ids, key_mask = left_padded([[1, 2, 3, 4, 5, 6, 7, 8, 9], [10, 11], [12]], torch.device("cpu"))
    with torch.no_grad():
        reference = gpt(ids, key_mask)
    real = key_mask.bool()
    assert torch.allclose(onnx(ids, key_mask)[real], reference[real], atol=1e-5)

    # a prompt of 4 columns, then one token at a time through the cache
    cache = onnx.new_cache(3, ids.shape[1])
    steps = [onnx(ids[:, :4], key_mask[:, :4], cache)]
    for t in range(4, ids.shape[1]):
        steps.append(onnx(ids[:, t : t + 1], key_mask[:, : t + 1], cache, last_only=True))
    assert cache.length == ids.shape[1]
    assert cache.arrays[0].shape == (3, 4, ids.shape[1], 8)
    assert torch.allclose(torch.cat(steps, 1)[real], reference[real], atol=1e-5)

    # no padding and no mask: the plain causal case
    with torch.no_grad():
        plain = gpt(ids[:1])
    assert torch.allclose(onnx(ids[:1]), plain, atol=1e-5)


def scripted_batch(model):
    """Generations joining and leaving one DecodeBatch (as the server runs them): the tokens
    drawn at every step."""
    greedy, drawn = Sampling(temperature=0), []
    batch = DecodeBatch(model, context=24, static_after=None)
    batch.add("a", [[1, 2, 3, 4, 5, 6]], 9, greedy, torch.Generator())
    for step in range(8):
        if step == 2:  # joins mid-way, ragged; leaves first (4 tokens)
            assert batch.can_take(2, max_rows=8)
            batch.add("b", [[7, 8], [9, 10, 11, 12, 13, 14, 15, 16, 17]], 4, greedy,
                      torch.Generator())
        drawn.append([(key, tokens.tolist(), last) for key, tokens, last in batch.sample()])
        batch.advance()
    return drawn


@pytest.mark.timeout(60)
def test_generations_share_a_batch_as_with_pytorch(exported):
    gpt, onnx = exported
    steps = scripted_batch(onnx)
    assert steps == scripted_batch(gpt)
    assert [len(step) for step in steps] == [1, 1, 2, 2, 2, 2, 1, 1]  # b joined, then left


@pytest.mark.timeout(180)
def test_exported_bundle_generates_the_same_text_as_pytorch(bundles, monkeypatch, capsys):
    original, exported, report = bundles
    check = report["check"]
    assert check["greedy_prompts_differ"] == 0 and check["max_abs_logit_diff_cached"] < 1e-4
    written = json.loads((exported / "compress_report.json").read_text())
    for side in ("original", "result"):
        assert written[side]["tokens_per_s_b1"] > 0 and written[side]["first_token_ms_b1"] > 0
    held_out = written["eval"]  # the documents given as --data, scored by both runtimes
    assert held_out["n_tokens"] > 10
    assert held_out["result"]["test_loss"] == pytest.approx(held_out["original"]["test_loss"],
                                                            abs=1e-5)
    meta = json.loads((exported / "lmforge.json").read_text())
    assert meta["runtime"] == "onnx" and not (exported / "model.safetensors").exists()

    torch_gen, onnx_gen = lmforge.load(original), lmforge.load(exported)
    assert isinstance(onnx_gen.model, OnnxGPT)
    for settings in ({"temperature": 0}, {"temperature": 0.9, "top_k": 20, "top_p": 0.95,
                                           "repetition_penalty": 1.2, "seed": 7}):
        expected = torch_gen.generate(PROMPTS, max_new_tokens=12, **settings)
        got = onnx_gen.generate(PROMPTS, max_new_tokens=12, **settings)
        assert [c.text for c in got] == [c.text for c in expected]
        assert [c.completion_tokens for c in got] == [c.completion_tokens for c in expected]
    streamed = "".join(e.text for e in onnx_gen.stream(PROMPTS[0], max_new_tokens=12,
                                                        temperature=0))
    assert streamed == torch_gen.generate(PROMPTS[0], max_new_tokens=12, temperature=0)[0].text

    outputs = [lmforge_cli(monkeypatch, capsys, "generate", bundle, "--prompt", PROMPTS[1],
                           "--max-new-tokens", 10, "--temperature", 0)
               for bundle in (original, exported)]
    assert outputs[0][0] == outputs[1][0] == 0
    assert outputs[1][1] == outputs[0][1] and outputs[1][1].strip()


@pytest.mark.timeout(120)
def test_exported_bundle_serves_concurrent_completions_together(
    bundles, sqlite_url, monkeypatch
):
    original, exported, _ = bundles
    calls = [{"prompt": PROMPTS[0], "max_tokens": 8, "temperature": 0},
             {"prompt": PROMPTS[1], "max_tokens": 5, "temperature": 0.9, "seed": 4}]
    generator = lmforge.load(original)
    expected = [generator.generate(c["prompt"], max_new_tokens=c["max_tokens"],
                                   **{k: c[k] for k in ("temperature", "seed") if k in c})[0].text
                for c in calls]
    together, sample = [], DecodeBatch.sample

    def slow_sample(self):  # each request still decoding when the other arrives
        time.sleep(0.05)
        drawn = sample(self)
        together.append(len(drawn))
        return drawn

    monkeypatch.setattr(DecodeBatch, "sample", slow_sample)
    with story_server(exported, sqlite_url, "writer", max_tokens_cap=16) as (url, secret):
        def complete(call):
            return httpx.post(url + "/v1/completions", timeout=60, json={"model": "story", **call},
                              headers={"Authorization": f"Bearer {secret}"})

        with ThreadPoolExecutor(len(calls)) as pool:
            responses = list(pool.map(complete, calls))
    assert [r.status_code for r in responses] == [200, 200], responses[0].text
    assert [r.json()["choices"][0]["text"] for r in responses] == expected
    assert max(together) == 2  # decoded in one batch


@pytest.mark.timeout(60)
def test_a_missing_or_corrupt_onnx_file_is_named(bundles, tmp_path, monkeypatch, capsys):
    _, exported, _ = bundles
    damaged = tmp_path / "damaged"
    shutil.copytree(exported, damaged)
    (damaged / "model.onnx").write_bytes(b"not a protobuf at all")
    with pytest.raises(LmforgeError, match="model.onnx: not a valid ONNX model"):
        lmforge.load(damaged)
    code, _, err = lmforge_cli(monkeypatch, capsys, "generate", damaged, "--prompt", "the cat")
    assert_one_line_error(code, err, "model.onnx", "not a valid ONNX model")
    (damaged / "model.onnx").unlink()
    with pytest.raises(LmforgeError, match="model.onnx: missing"):
        lmforge.load(damaged)
    # a graph of another model (here: of two layers where lmforge.json says one)
    other = GPT(GPTConfig(vocab_size=50, max_length=16, d_model=32, n_layers=2, n_heads=2,
                          d_ff=64))
    export_gpt(other, damaged / "model.onnx", opset=17)
    with pytest.raises(LmforgeError, match="not a GPT exported with its KV cache for 1 layers"):
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
    meta.update(arch="pretrained", base_model="sshleifer/tiny-gpt2")
    (pretrained / "lmforge.json").write_text(json.dumps(meta))
    code, _, err = lmforge_cli(monkeypatch, capsys, "export", pretrained, "--out", tmp_path / "y")
    assert_one_line_error(code, err, "pretrained causal LM", "model.arch gpt")
    code, _, err = lmforge_cli(monkeypatch, capsys, "export", original, "--out", tmp_path / "z",
                               "--opset", 11)
    assert_one_line_error(code, err, "--opset 11 is too old")
    assert not any((tmp_path / name).exists() for name in "xyz")


@pytest.mark.timeout(60)
def test_an_export_that_disagrees_fails_with_the_difference_and_writes_nothing(
    bundles, tmp_path, monkeypatch
):
    original, _, _ = bundles
    run = OnnxGPT.forward
    monkeypatch.setattr(OnnxGPT, "forward", lambda self, *a, **k: run(self, *a, **k) + 1e-3)
    with pytest.raises(LmforgeError, match=r"max \|logit difference\| 1.00e-03 without the cache"):
        lmforge.export(original, out=tmp_path / "off")
    assert not (tmp_path / "off").exists()
