"""The RNN and the TextCNN as text classifiers (model.arch rnn | textcnn): trained through the same
recipe, bundle and loop (exact resume), reloaded into the same numbers, exported to ONNX with the
parity check; and what makes them correct on padded batches."""

import json

import numpy as np
import pytest
import torch
from conftest import tiny_config

import lmforge
from lmforge import pipeline
from lmforge.models.classic import RNNClassifier, RNNConfig, TextCNNClassifier, TextCNNConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def text_config(data, arch):
    cfg = tiny_config(data, max_steps=80, eval_every=40)
    cfg["model"] = {"arch": arch, "d_model": 32, "n_layers": 1, "max_length": 24}
    del cfg["train"]["lr"]  # the arch's own rate
    return cfg


@pytest.mark.parametrize("model", [
    RNNClassifier(RNNConfig(40, 3, d_model=8, cell="gru")),
    RNNClassifier(RNNConfig(40, 3, d_model=8, n_layers=2)),
    RNNClassifier(RNNConfig(40, 3, d_model=8, pooling="max_mean")),
    TextCNNClassifier(TextCNNConfig(40, 3, d_model=8, kernel_sizes=[2, 5])),
])
def test_padding_never_changes_a_texts_logits(model):
    model.eval()
    ids = torch.tensor([[5, 6, 7]])
    padded = torch.tensor([[5, 6, 7, 0, 0, 0, 0], [9, 8, 7, 6, 5, 4, 3]])
    mask = (padded != 0).long()
    alone = model(ids, torch.ones_like(ids))
    assert torch.allclose(model(padded, mask)[0], alone[0], atol=1e-6)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("arch", ["rnn", "textcnn"])
def test_rnn_and_textcnn_train_resume_exactly_reload_and_export(arch, reviews_csv, tmp_path):
    result = lmforge.train(text_config(reviews_csv, arch), out=tmp_path / "run",
                           show_progress=False)
    assert result.eval_report["accuracy"] >= 0.9
    meta = json.loads((result.bundle_dir / "lmforge.json").read_text())
    assert meta["arch"] == arch

    half = lmforge.train(text_config(reviews_csv, arch), out=tmp_path / "half",
                         show_progress=False, on_eval=lambda step, metrics: step >= 40)
    assert half.stopped and half.steps == 40
    resumed = lmforge.train(text_config(reviews_csv, arch), out=tmp_path / "half", resume=True,
                            show_progress=False)
    assert resumed.resumed_from == 40
    straight = lmforge.load(result.bundle_dir)
    again = lmforge.load(resumed.bundle_dir)
    for name, tensor in again.model.state_dict().items():
        assert torch.equal(tensor, straight.model.state_dict()[name]), name

    texts = ["很好 the item", "物流 awful", "这个 产品 价格 推荐"]
    logits, _ = straight.logits(texts)
    report = pipeline.export(result.bundle_dir, out=tmp_path / "onnx")
    assert report["check"]["max_abs_logit_diff"] < 1e-4
    onnx_logits, _ = lmforge.load(tmp_path / "onnx").logits(texts)
    np.testing.assert_allclose(onnx_logits, logits, atol=1e-4)


def test_a_knob_of_another_model_is_an_error_naming_it():
    from lmforge.config import load_config
    from lmforge.errors import LmforgeError

    with pytest.raises(LmforgeError, match="model.kernel_sizes is read by model.arch textcnn"):
        load_config({"model": {"arch": "rnn", "kernel_sizes": [2, 3]}})
    with pytest.raises(LmforgeError, match="data.augment is read by model.arch cnn"):
        load_config({"data": {"augment": "crop_flip"}})
    assert load_config({"model": {"arch": "rnn", "rnn_cell": "gru"}}).model.rnn_cell == "gru"
