"""Bundles written by an earlier lmforge (tests/fixtures/legacy-0.1, made by
tests/fixtures/make_legacy_bundles.py) still load and predict exactly as they did then."""

import json
from pathlib import Path

import pytest

import lmforge

LEGACY = Path(__file__).resolve().parent / "fixtures" / "legacy-0.1"
EXPECTED = json.loads((LEGACY / "expected.json").read_text(encoding="utf-8"))


def test_an_old_classifier_bundle_predicts_as_it_did():
    predictions = lmforge.load(LEGACY / "classifier").predict(EXPECTED["texts"])
    for now, then in zip(predictions, EXPECTED["predictions"], strict=True):
        assert now["label"] == then["label"]
        assert now["probs"] == pytest.approx(then["probs"], abs=1e-6)


def test_an_old_generation_bundle_generates_as_it_did():
    generator = lmforge.load(LEGACY / "generator")
    greedy = generator.generate(EXPECTED["prompts"], max_new_tokens=6, temperature=0)
    sampled = generator.generate(EXPECTED["prompts"], max_new_tokens=6, temperature=1.0, seed=5)
    assert [c.text for c in greedy] == EXPECTED["greedy"]
    assert [c.text for c in sampled] == EXPECTED["sampled_seed_5"]
