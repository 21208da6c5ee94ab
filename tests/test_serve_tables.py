"""POST /v1/predict: a feature table's model served with keys and metering; rows are JSON
objects, and a missing or mistyped feature is a 422 that names it."""

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
def table_bundle(tmp_path_factory):
    """A regression MLP over a number and a category: price = 3 * size (+ 5 in the centre)."""
    directory = tmp_path_factory.mktemp("table")
    rng = np.random.default_rng(0)
    with open(directory / "homes.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["size", "area", "label"])
        for _ in range(200):
            size, area = rng.uniform(1, 5), rng.choice(["centre", "suburb"])
            writer.writerow([f"{size:.3f}", area, 3 * size + 5 * (area == "centre")])
    cfg = {"task": "regression", "data": {"path": str(directory / "homes.csv")},
           "train": {"max_steps": 200}, "eval": {"bootstrap": 0}}
    return lmforge.train(cfg, out=directory / "run", show_progress=False).bundle_dir


@pytest.fixture
def served(table_bundle, tmp_path):
    db = f"sqlite:///{tmp_path / 'usage.db'}"
    secret = keys.create_key(open_database(db), "alice", quota_tokens=1000)
    with app_client(ServeSettings(models=[f"homes={table_bundle}"], db=db)) as client:
        yield client, secret


def post(client, secret, rows, model="homes"):
    return client.post("/v1/predict", json={"model": model, "input": rows},
                       headers=auth(secret) if secret else {})


@pytest.mark.timeout(120)
def test_rows_are_predicted_keyed_and_metered(served):
    client, secret = served
    assert post(client, None, {"size": 2.0, "area": "centre"}).status_code == 401
    response = post(client, secret, [{"size": 2.0, "area": "centre"},
                                     {"area": "suburb", "size": 4.0, "note": "extra"},
                                     {"size": None, "area": "nowhere"}])
    assert response.status_code == 200, response.text
    body = response.json()
    values = [row["value"] for row in body["data"]]
    assert values[0] > values[1] - 12 + 5  # the centre adds about 5
    assert all(np.isfinite(values))
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 0, "total_tokens": 3}
    usage = client.get("/v1/usage", headers=auth(secret)).json()
    assert (usage["requests"], usage["prompt_tokens"]) == (1, 3)


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("row", "named"), [
    ({"area": "centre"}, "input[1]: feature 'size' is missing"),
    ({"size": "big", "area": "centre"}, "input[1]: feature 'size' must be a number"),
    ({"size": [1, 2], "area": "centre"}, "feature 'size' must be a number or a string"),
    ("size=2", "a row must be a JSON object"),
])
def test_a_missing_or_mistyped_feature_is_a_422_naming_it(served, row, named):
    client, secret = served
    response = post(client, secret, [{"size": 1.0, "area": "suburb"}, row])
    assert response.status_code == 422
    assert named in response.json()["error"]["message"]
    usage = client.get("/v1/usage", headers=auth(secret)).json()
    assert usage["prompt_tokens"] == 0  # refused rows are not billed


@pytest.mark.timeout(120)
def test_a_table_model_is_not_served_as_a_text_classifier(served):
    client, secret = served
    response = client.post("/v1/classify", json={"model": "homes", "input": "hello"},
                           headers=auth(secret))
    assert response.status_code == 400
    assert "POST /v1/predict" in response.json()["error"]["message"]
