"""The HTTP API of `lmforge serve` as a client meets it: keys, classify, limits, errors, probes."""

import threading
import time

import pytest
from serve_support import app_client, auth, settings

import lmforge
from lmforge.serve.billing import keys
from lmforge.serve.billing.access import require_key
from lmforge.serve.billing.database import open_database
from lmforge.serve.main import PUBLIC_PATHS, create_app

LONG_TEXT = "很好 " * 40  # well over the bundle's 24 tokens


@pytest.fixture(scope="module")
def bundle(tiny_classifier):
    return tiny_classifier


@pytest.fixture(scope="module")
def db_url(sqlite_url):
    return sqlite_url


@pytest.fixture(scope="module")
def client(bundle, db_url):
    with app_client(settings(bundle, db_url, f"alias={bundle}")) as client:
        yield client


def new_key(db_url, name, **limits):
    return keys.create_key(open_database(db_url), name, **limits)


@pytest.fixture(scope="module")
def key(db_url):
    return new_key(db_url, "main")


def classify(client, key, model="reviews", **body):
    return client.post("/v1/classify", json={"model": model, **body}, headers=auth(key))


def assert_openai_error(response, status, code=None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"]
    if code:
        assert error["code"] == code, error


def test_probes_metrics_and_playground_need_no_key(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["models"] == {"reviews": "ready", "alias": "ready"}
    assert "lmforge_requests_total" in client.get("/metrics").text
    page = client.get("/")
    assert page.status_code == 200 and "lmforge playground" in page.text


def served_routes(routes):
    """(path, methods, dependant) of every route the app answers, however FastAPI nests them."""
    for route in routes:
        if hasattr(route, "effective_route_contexts"):  # newer FastAPI keeps included routers
            for context in route.effective_route_contexts():
                yield context.path, context.methods, getattr(context, "dependant", None)
        else:
            yield route.path, getattr(route, "methods", None), getattr(route, "dependant", None)


def test_every_route_outside_the_public_list_requires_a_key(client):
    def depends_on_key(dependant):
        return any(dep.call is require_key or depends_on_key(dep) for dep in dependant.dependencies)

    routes = list(served_routes(client.app.routes))
    assert {path for path, _, _ in routes} >= PUBLIC_PATHS | {"/v1/classify", "/v1/models"}
    for path, methods, dependant in routes:
        if path in PUBLIC_PATHS:
            continue
        assert dependant is not None and depends_on_key(dependant), f"{path} is unguarded"
        for method in methods:
            response = client.request(method, path.replace("{model}", "reviews"), json={})
            assert_openai_error(response, 401, "missing_api_key")


def test_missing_wrong_and_revoked_keys_get_401(client, db_url):
    body = {"model": "reviews", "input": "很好"}
    assert_openai_error(client.post("/v1/classify", json=body), 401, "missing_api_key")
    wrong = client.post("/v1/classify", json=body, headers=auth("lmf-not-a-key"))
    assert_openai_error(wrong, 401, "invalid_api_key")
    secret = new_key(db_url, "soon-revoked")
    assert classify(client, secret, input="很好").status_code == 200
    keys.revoke_key(open_database(db_url), "soon-revoked")
    # The server keeps active keys for cache_s (2 s): the revoked key stops soon after.
    deadline = time.monotonic() + 10
    while (response := classify(client, secret, input="很好")).status_code == 200:
        assert time.monotonic() < deadline, "the revoked key still works after 10 s"
        time.sleep(0.1)
    assert_openai_error(response, 401, "invalid_api_key")


def test_models_are_listed_in_the_openai_shape(client, key, bundle):
    listing = client.get("/v1/models", headers=auth(key)).json()
    assert listing["object"] == "list"
    assert [m["id"] for m in listing["data"]] == ["reviews", "alias"]
    for model in listing["data"]:
        assert model["object"] == "model" and model["owned_by"] == "lmforge"
        assert model["task"] == "classification" and isinstance(model["created"], int)
    assert client.get("/v1/models/alias", headers=auth(key)).json()["id"] == "alias"


def test_classify_answers_what_the_bundle_predicts(client, key, bundle):
    texts = ["这个 产品 很好 推荐", "物流 太差了 失望 退货", "great item"]
    response = classify(client, key, input=texts)
    assert response.status_code == 200, response.text
    body = response.json()
    local = lmforge.load(bundle).predict(texts)
    assert [row["index"] for row in body["data"]] == [0, 1, 2]
    for served, expected in zip(body["data"], local, strict=True):
        assert served["label"] == expected["label"]
        assert served["probs"] == pytest.approx(expected["probs"], abs=1e-5)
        assert sum(served["probs"].values()) == pytest.approx(1.0)
        assert served["score"] == max(served["probs"].values())
    assert [row["label"] for row in body["data"][:2]] == ["pos", "neg"]
    one = classify(client, key, model="alias", input="很好").json()
    assert len(one["data"]) == 1 and one["model"] == "alias"


def test_prompt_tokens_are_the_tokenizer_count(client, key, bundle):
    texts = ["很好", "这个 产品 物流 包装 价格 不错"]
    expected = sum(len(ids) for ids in lmforge.load(bundle).encode(texts).ids)
    usage = classify(client, key, input=texts).json()["usage"]
    assert usage == {"prompt_tokens": expected, "completion_tokens": 0, "total_tokens": expected}


def test_a_failed_forward_pass_is_a_500_and_the_model_keeps_serving(client, key, monkeypatch):
    from lmforge.serve.engines.classification import ClassificationEngine

    forward = ClassificationEngine._forward

    def fail_once(self, batch):
        monkeypatch.setattr(ClassificationEngine, "_forward", forward)
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(ClassificationEngine, "_forward", fail_once)
    failed = classify(client, key, input="这个 产品 很好")
    assert_openai_error(failed, 500, "server_error")
    assert "RuntimeError" in failed.json()["error"]["message"]
    assert classify(client, key, input="这个 产品 很好").status_code == 200


def test_model_names_are_looked_up_never_used_as_paths(client, key, bundle):
    for name in ("nope", str(bundle), "../reviews/model"):
        response = classify(client, key, model=name, input="很好")
        assert_openai_error(response, 404, "model_not_found")
        assert "reviews, alias" in response.json()["error"]["message"]


def test_too_long_input_is_422_unless_truncated(client, key):
    refused = classify(client, key, input=["很好", LONG_TEXT])
    assert_openai_error(refused, 422, "context_length_exceeded")
    assert "input[1]" in refused.json()["error"]["message"]
    cut = classify(client, key, input=LONG_TEXT, truncate=True)
    assert cut.status_code == 200
    assert cut.json()["data"][0]["truncated"] is True
    assert cut.json()["usage"]["prompt_tokens"] == 24


def test_bad_bodies_get_openai_style_422(client, key):
    assert_openai_error(classify(client, key), 422, "invalid_request")  # no input
    assert_openai_error(classify(client, key, input=[]), 422, "invalid_request")
    assert_openai_error(classify(client, key, input="x", truncat=True), 422)
    raw = client.post("/v1/classify", content=b"model=reviews", headers=auth(key))
    assert_openai_error(raw, 422, "invalid_json")


def test_completions_refuse_a_classification_model_clearly(client, key):
    chat = {"model": "reviews", "messages": [{"role": "user", "content": "hi"}]}
    response = client.post("/v1/chat/completions", json=chat, headers=auth(key))
    assert_openai_error(response, 400, "wrong_model_task")
    assert "/v1/classify" in response.json()["error"]["message"]
    plain = {"model": "reviews", "prompt": "hi"}
    assert_openai_error(
        client.post("/v1/completions", json=plain, headers=auth(key)), 400, "wrong_model_task"
    )
    missing = {"model": "nope", "prompt": "hi"}
    assert_openai_error(
        client.post("/v1/completions", json=missing, headers=auth(key)), 404, "model_not_found"
    )
    for field in ("max_tokens", "max_completion_tokens"):
        over = client.post("/v1/chat/completions", json={**chat, field: 5000}, headers=auth(key))
        assert_openai_error(over, 422, "max_tokens_too_large")
        assert over.json()["error"]["param"] == field


def test_rate_limit_is_429_with_retry_after(client, db_url):
    secret = new_key(db_url, "slow", rpm=2)
    assert [classify(client, secret, input="很好").status_code for _ in range(2)] == [200, 200]
    limited = classify(client, secret, input="很好")
    assert_openai_error(limited, 429, "rate_limit_exceeded")
    assert 1 <= int(limited.headers["retry-after"]) <= 60


def test_token_quota_is_429_with_retry_after(client, db_url):
    secret = new_key(db_url, "small", quota_tokens=10)
    first = classify(client, secret, input="很好 推荐")
    assert first.status_code == 200  # under 10 tokens
    cost = first.json()["usage"]["total_tokens"]
    for _ in range(10):  # bounded: the quota is spent after a few calls
        if (response := classify(client, secret, input="很好 推荐")).status_code != 200:
            break
    assert_openai_error(response, 429, "insufficient_quota")
    assert 1 <= int(response.headers["retry-after"]) <= 31 * 24 * 3600
    usage = client.get("/v1/usage", headers=auth(secret)).json()
    # A call is admitted only if its cost fits: the quota is never passed.
    assert 10 - cost < usage["total_tokens"] <= 10
    assert usage["remaining_tokens"] == 10 - usage["total_tokens"]


def test_usage_endpoint_shows_the_callers_own_key(client, db_url):
    secret = new_key(db_url, "counted", quota_tokens=1000, rpm=100)
    texts = ["很好", "太差了 退货"]
    prompt = classify(client, secret, input=texts).json()["usage"]["prompt_tokens"]
    classify(client, secret, input=LONG_TEXT)  # a 422: recorded, billed nothing
    usage = client.get("/v1/usage", headers=auth(secret)).json()
    assert usage["key"] == "counted"
    assert (usage["requests"], usage["errors"]) == (2, 1)
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (prompt, 0)
    assert usage["remaining_tokens"] == 1000 - prompt and usage["rpm"] == 100


def test_metrics_count_requests_tokens_and_batches(client, key):
    classify(client, key, input=["很好", "失望"])
    text = client.get("/metrics").text
    assert 'lmforge_requests_total{route="/v1/classify",status="200"}' in text
    assert 'lmforge_tokens_total{direction="in",model="reviews"}' in text
    assert 'lmforge_batch_size_count{model="reviews"}' in text
    assert 'lmforge_queue_depth{model="reviews"}' in text
    assert 'lmforge_request_latency_seconds_count{route="/v1/classify"}' in text


def test_body_over_the_limit_is_413(bundle, db_url, key):
    with app_client(settings(bundle, db_url, max_body_bytes=2000)) as small:
        assert classify(small, key, input="很好").status_code == 200
        response = classify(small, key, input="很" * 3000)
        assert_openai_error(response, 413, "request_too_large")


def test_no_auth_serves_without_a_key_and_meters_anonymous(bundle, db_url):
    with app_client(settings(bundle, db_url, auth=False)) as open_app:
        response = open_app.post("/v1/classify", json={"model": "reviews", "input": "很好"})
        assert response.status_code == 200
        assert open_app.get("/v1/usage").json()["key"] == "anonymous"


def queue_depth(client, model="reviews"):
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(f'lmforge_queue_depth{{model="{model}"}}'):
            return float(line.split()[-1])
    return 0.0


def test_a_full_queue_is_503_and_a_slow_request_504(bundle, db_url, key):
    # A batch that waits 60 s to fill: the first request sits in the queue until its timeout.
    slow = settings(bundle, db_url, max_queue=1, max_batch_size=64, max_wait_ms=60_000, timeout_s=2)
    with app_client(slow) as client:
        first = {}
        waiting = threading.Thread(
            target=lambda: first.update(response=classify(client, key, input="很好"))
        )
        waiting.start()
        deadline = time.monotonic() + 30
        while queue_depth(client) < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        full = classify(client, key, input="失望")
        assert_openai_error(full, 503, "overloaded")
        assert full.headers["retry-after"] == "1"
        waiting.join(timeout=30)
        assert_openai_error(first["response"], 504, "timeout")


def test_create_app_refuses_bad_model_specs(bundle, db_url, tmp_path):
    from lmforge.errors import LmforgeError

    with pytest.raises(LmforgeError, match="two models are named 'reviews'"):
        create_app(settings(bundle, db_url, str(bundle)))
    with pytest.raises(LmforgeError, match="not an lmforge bundle"):
        create_app(settings(tmp_path, db_url))
    with pytest.raises(LmforgeError, match="--db"):
        create_app(settings(bundle, "not a url"))


def test_the_openai_client_lists_models_and_reads_our_errors(client, key):
    openai = pytest.importorskip("openai")
    api = openai.OpenAI(base_url="http://testserver/v1", api_key=key, http_client=client)
    assert [model.id for model in api.models.list()] == ["reviews", "alias"]
    with pytest.raises(openai.BadRequestError, match="/v1/classify"):
        api.chat.completions.create(model="reviews", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.NotFoundError):
        api.completions.create(model="nope", prompt="hi")
    wrong = openai.OpenAI(base_url="http://testserver/v1", api_key="lmf-wrong", http_client=client)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
