"""Magnitude pruning: the saved bundle really has the zeros it reports, a fine-tune keeps them,
and mistakes are one clear line."""

import csv
import json
import shutil

import pytest
import torch
from conftest import make_reviews, tiny_config
from safetensors.torch import load_file

import lmforge
from lmforge import pipeline
from lmforge.errors import LmforgeError
from lmforge.models import EncoderClassifier, TransformerConfig
from lmforge.optimize.prune import make_permanent, prune_linear_layers, sparsity


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prune")
    data = tmp / "reviews.csv"
    with open(data, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([("review", "sentiment"), *make_reviews()])
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOME", str(tmp / "home"))
        return lmforge.train(tiny_config(data), out=tmp / "run", show_progress=False)


def linear_zero_share(bundle) -> float:
    """Zeros among the linear layers' weights, read from the saved safetensors file."""
    meta = json.loads((bundle / "lmforge.json").read_text())
    model = EncoderClassifier(TransformerConfig(**meta["architecture"]))
    names = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    weights = load_file(bundle / "model.safetensors")
    zeros = sum(int((weights[name] == 0).sum()) for name in names)
    return zeros / sum(weights[name].numel() for name in names)


def test_pruned_bundle_has_the_sparsity_it_reports(run, tmp_path):
    out = tmp_path / "pruned"
    report = pipeline.compress(run.bundle_dir, prune=0.5, out=out)
    reported = report["pruning"]["sparsity"]["linear_weights"]
    assert reported == pytest.approx(0.5, abs=0.01)
    assert linear_zero_share(out) == pytest.approx(reported, abs=1e-9)
    assert linear_zero_share(run.bundle_dir) < 0.01
    assert json.loads((out / "compress_report.json").read_text()) == report
    assert lmforge.load(out).predict(["很好"])[0]["label"] in {"neg", "pos"}


def test_a_fine_tune_keeps_the_pruned_weights_at_zero(run, tmp_path):
    out = tmp_path / "pruned"
    report = pipeline.compress(
        run.bundle_dir, prune=0.6, finetune_steps=5, out=out, show_progress=False
    )
    assert report["pruning"]["finetune_steps"] == 5
    assert linear_zero_share(out) == pytest.approx(0.6, abs=0.01)
    original = lmforge.load(run.bundle_dir).model.state_dict()
    tuned = lmforge.load(out).model.state_dict()
    assert not torch.equal(original["head.bias"], tuned["head.bias"])  # it did train


def test_every_linear_layer_is_pruned_to_the_amount():
    model = EncoderClassifier(TransformerConfig(vocab_size=50, n_classes=3, d_model=16, d_ff=32))
    prune_linear_layers(model, 0.3)
    make_permanent(model)
    for layer in (m for m in model.modules() if isinstance(m, torch.nn.Linear)):
        assert float((layer.weight == 0).float().mean()) == pytest.approx(0.3, abs=0.02)
        assert not hasattr(layer, "weight_mask")
    assert sparsity(model)["linear_weights"] == pytest.approx(0.3, abs=0.01)


def test_bad_prune_requests_get_one_clear_error(run, tmp_path):
    for amount in (1.0, -0.1):
        with pytest.raises(LmforgeError, match=r"--prune takes a fraction in \[0, 1\)"):
            pipeline.compress(run.bundle_dir, prune=amount)
    with pytest.raises(LmforgeError, match="--finetune-steps goes with --prune"):
        pipeline.compress(run.bundle_dir, quantize="int8", finetune_steps=3)
    pipeline.export(run.bundle_dir, out=tmp_path / "onnx")
    with pytest.raises(LmforgeError, match="is an ONNX bundle; prune the PyTorch bundle"):
        pipeline.compress(tmp_path / "onnx", prune=0.5, out=tmp_path / "p")

    orphan = tmp_path / "orphan"  # labelled data given, but no run to fine-tune on
    shutil.copytree(run.bundle_dir, orphan)
    meta = json.loads((orphan / "lmforge.json").read_text())
    meta["run"]["dir"] = str(tmp_path / "gone")
    (orphan / "lmforge.json").write_text(json.dumps(meta))
    holdout = tmp_path / "holdout.csv"
    holdout.write_text("review,sentiment\n很好,pos\n很差,neg\n", encoding="utf-8")
    with pytest.raises(LmforgeError, match="--finetune-steps needs the training split"):
        pipeline.compress(orphan, prune=0.5, finetune_steps=2, data=holdout)
