"""POST /v1/predict answers a text regression model too: one {"value"} per text, keyed and
billed by the tokens read; an input that is no text is a 422 that names it."""

import csv

import numpy as np
import pytest
from serve_support import app_client, auth

import lmforge
from lmforge.serve.billing import keys
from lmforge.serve.billing.database import open_database
from lmforge.serve.settings import ServeSettings

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def text_bundle(tmp_path_factory):
    """A tiny encoder whose number is the count of 'up' minus the count of 'down'."""
    directory = tmp_path_factory.mktemp("textreg")
    rng = np.random.default_rng(0)
    with open(directory / "notes.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "change"])
        for _ in range(200):
            words = list(rng.choice(["up", "down", "flat"], size=rng.integers(1, 8)))
            writer.writerow([" ".join(words), words.count("up") - words.count("down")])
    cfg = {"task": "regression",
           "data": {"path": str(directory / "notes.csv"), "label_column": "change",
                    "cache_dir": str(directory / "cache")},
           "tokenizer": {"vocab_size": 40},
           "model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64, "max_length": 16},
           "train": {"max_steps": 120, "batch_size": 16, "lr": 3e-3, "eval_every": 60},
           "eval": {"bootstrap": 0, "baselines": False}}
    return lmforge.train(cfg, out=directory / "run", show_progress=False).bundle_dir


@pytest.fixture
def served(text_bundle, tmp_path):
    db = f"sqlite:///{tmp_path / 'usage.db'}"
    secret = keys.create_key(open_database(db), "alice", quota_tokens=1000)
    with app_client(ServeSettings(models=[f"notes={text_bundle}"], db=db)) as client:
        yield client, secret


def post(client, secret, texts, model="notes"):
    return client.post("/v1/predict", json={"model": model, "input": texts},
                       headers=auth(secret) if secret else {})


@pytest.mark.timeout(120)
def test_texts_get_a_value_each_keyed_and_metered(served):
    client, secret = served
    assert post(client, None, "up up").status_code == 401
    one = post(client, secret, "up up up")
    assert one.status_code == 200, one.text
    assert [set(row) for row in one.json()["data"]] == [{"object", "index", "value"}]
    response = post(client, secret, ["up up up up", "down down down", "flat"])
    assert response.status_code == 200, response.text
    body = response.json()
    values = [row["value"] for row in body["data"]]
    assert values[0] > values[2] > values[1]
    assert values[0] == pytest.approx(one.json()["data"][0]["value"] + 1, abs=1.0)
    billed = body["usage"]["prompt_tokens"]
    assert billed >= 8  # at least one token per word
    usage = client.get("/v1/usage", headers=auth(secret)).json()
    assert usage["requests"] == 2
    assert usage["prompt_tokens"] == billed + one.json()["usage"]["prompt_tokens"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("texts", "named"), [
    (["up", {"text": "down"}], "input[1]: must be a text (a JSON string), not dict"),
    ([7], "input[0]: must be a text"),
    ({"size": 2}, "input[0]: must be a text"),
    (["up", "x" * 100_001], "input[1]: is 100,001 characters"),
    ([], "input has 0 rows"),
])
def test_an_input_that_is_no_text_is_a_422_naming_it(served, texts, named):
    client, secret = served
    response = post(client, secret, texts)
    assert response.status_code == 422
    assert named in response.json()["error"]["message"]
    usage = client.get("/v1/usage", headers=auth(secret)).json()
    assert usage["prompt_tokens"] == 0  # refused requests are not billed


@pytest.mark.timeout(120)
def test_a_text_regression_model_is_not_served_as_a_classifier(served):
    client, secret = served
    response = client.post("/v1/classify", json={"model": "notes", "input": "up"},
                           headers=auth(secret))
    assert response.status_code == 400
    assert "POST /v1/predict" in response.json()["error"]["message"]
