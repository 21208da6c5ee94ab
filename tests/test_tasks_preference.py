"""task preference: DPO on prompt/chosen/rejected pairs over a tiny pretrained causal LM (made
here), whose result is a generation bundle."""

import json
import random

import numpy as np
import pytest
import torch
from chat_support import tiny_llama, write_jsonl

import lmforge
from lmforge import pipeline
from lmforge.errors import LmforgeError
from lmforge.tasks.preference import pair_scores

pytestmark = pytest.mark.usefixtures("one_thread")


def sum_pairs(n, seed=0):
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        # a whole answer is preferred to a curt one, which an untuned model finds likelier
        right, wrong = f"add {a} and {b} is {a + b}", f"{a}"
        prompt = f"add {a} and {b} ({i})"
        if i % 3 == 0:  # a messages list as the prompt, rendered with the chat template
            prompt = [{"role": "system", "content": "be brief"},
                      {"role": "user", "content": prompt}]
        rows.append({"prompt": prompt, "chosen": right, "rejected": wrong})
    return rows


def config(data, model, cache, **train):
    return {"task": "preference",
            "data": {"path": str(data), "cache_dir": str(cache)},
            "model": {"arch": "pretrained", "pretrained": str(model), "max_length": 64},
            "train": {"max_steps": 40, "batch_size": 16, "lr": 5e-3, "eval_every": 20,
                      "device": "cpu", "precision": "fp32", **train},
            "preference": {"beta": 0.5}}


def test_the_dpo_score_prefers_what_moved_toward_chosen_against_the_reference():
    reference = np.log(np.array([[0.2, 0.2], [0.2, 0.2]]))
    policy = np.log(np.array([[0.4, 0.1], [0.1, 0.4]]))  # first pair moved right, second wrong
    scores = pair_scores(policy, reference, beta=1.0)
    assert scores["reward_accuracy"].tolist() == [1.0, 0.0]
    assert scores["reward_margin"][0] == pytest.approx(np.log(2.0) - np.log(0.5))
    assert scores["dpo_loss"][0] < np.log(2.0) < scores["dpo_loss"][1]


@pytest.mark.timeout(300)
def test_dpo_learns_the_preferred_replies_and_ships_a_generation_bundle(tmp_path):
    model = tiny_llama(tmp_path / "base")
    broken = ['{"prompt": "add 1 and 2", "chosen": "3"}',
              '{"prompt": "add 1 and 2", "chosen": "3", "rejected": "3"}', "not json"]
    data = write_jsonl(tmp_path / "pairs.jsonl", sum_pairs(240), broken)
    assert "task: preference" in pipeline.init_config("preference", data)

    result = lmforge.train(config(data, model, tmp_path / "cache"), out=tmp_path / "run",
                           show_progress=False)

    report = json.loads((result.run_dir / "data_report.json").read_text())
    assert report["dropped"]["missing_rejected"] == 1 and report["dropped"]["same_replies"] == 1
    evaluation = json.loads((result.run_dir / "eval.json").read_text())
    assert evaluation["reward_accuracy"] >= 0.9, evaluation
    assert evaluation["reward_accuracy_ci95"][0] > 0.5
    assert evaluation["reward_margin"] > 1.0  # β-scaled log-odds moved toward the chosen
    assert "prefers_chosen" in evaluation["baselines"]["reference"]
    assert evaluation["dpo_loss"] < np.log(2.0)

    meta = json.loads((result.bundle_dir / "lmforge.json").read_text())
    assert meta["task"] == "generation" and meta["inputs"] == "preference"
    generator = lmforge.load(result.bundle_dir)
    (reply,) = generator.generate([[{"role": "user", "content": "add 2 and 3 (7)"}]],
                                  chat=True, max_new_tokens=4, temperature=0)
    assert isinstance(reply.text, str)
    again = lmforge.evaluate(result.run_dir, show=False)
    assert again["n"] == evaluation["n"]
    assert again["reward_accuracy"] == pytest.approx(evaluation["reward_accuracy"])
    with torch.no_grad():
        assert all(torch.isfinite(p).all() for p in generator.model.parameters())


def test_preference_data_without_its_columns_is_refused(tmp_path):
    model = tiny_llama(tmp_path / "base")
    data = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "a", "chosen": "b"}] * 30)
    with pytest.raises(LmforgeError, match="missing: rejected"):
        lmforge.train(config(data, model, tmp_path / "cache"), out=tmp_path / "run",
                      show_progress=False)


def test_preference_needs_a_pretrained_model(tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", sum_pairs(30))
    cfg = {"task": "preference", "data": {"path": str(data)}}
    with pytest.raises(LmforgeError, match="model.pretrained"):
        lmforge.train(cfg, out=tmp_path / "run", show_progress=False)


def test_too_few_pairs_to_split_say_so(tmp_path):
    model = tiny_llama(tmp_path / "base")
    data = write_jsonl(tmp_path / "pairs.jsonl", sum_pairs(5))
    with pytest.raises(LmforgeError, match="5 pairs are too few to split"):
        lmforge.train(config(data, model, tmp_path / "cache"), out=tmp_path / "run",
                      show_progress=False)
