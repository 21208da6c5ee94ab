"""POST /v1/classify under bad neighbours and overload: one request's text never fails the others
in its batch, and past its capacity the server refuses quickly (503) instead of timing out."""

import asyncio
import http.client
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from serve_support import auth, running_server, settings

import lmforge
from lmforge.bundle import Predictor
from lmforge.serve.billing import keys
from lmforge.serve.billing.database import open_database
from lmforge.serve.engines.classification import ClassificationEngine, Overloaded
from lmforge.serve.metrics import ServeMetrics

VALID = ["这个 产品 很好", "很差 失望", "物流很快 推荐", "质量 一般", "不错 喜欢", "退货 垃圾"]
SURROGATE = '{"model": "reviews", "input": ["很好", "坏\\ud800"]}'  # JSON escape, not UTF-8


@pytest.fixture(scope="module")
def bundle(tiny_classifier):
    return tiny_classifier


@pytest.fixture(scope="module")
def db_url(sqlite_url):
    return sqlite_url


@pytest.fixture(scope="module")
def key(db_url):
    return keys.create_key(open_database(db_url), "main")


@pytest.fixture(scope="module")
def alone(bundle):
    """What the bundle predicts for each valid text on its own."""
    predictor = lmforge.load(bundle)
    return {text: predictor.predict([text])[0] for text in VALID}


def post_all(url: str, key: str, bodies: list[str]) -> list[tuple[httpx.Response, float]]:
    """Send every body at once (one thread each, released together): (response, seconds)."""
    start = threading.Barrier(len(bodies))
    headers = {**auth(key), "Content-Type": "application/json"}

    def post(body: str) -> tuple[httpx.Response, float]:
        start.wait()
        began = time.monotonic()
        response = httpx.post(
            url + "/v1/classify", content=body.encode(), headers=headers, timeout=120
        )
        return response, time.monotonic() - began

    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(post, bodies))


def body_of(text: str) -> str:
    return f'{{"model": "reviews", "input": "{text}"}}'


def assert_as_alone(response: httpx.Response, text: str, alone: dict) -> None:
    assert response.status_code == 200, response.text
    (row,) = response.json()["data"]
    assert row["label"] == alone[text]["label"]
    assert row["probs"] == pytest.approx(alone[text]["probs"], abs=1e-5)


def test_a_lone_surrogate_is_422_naming_the_input(bundle, db_url, key):
    with running_server(settings(bundle, db_url)) as url:
        ((response, _),) = post_all(url, key, [SURROGATE])
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["param"] == "input"
    assert error["code"] == "invalid_request"
    assert "input[1]" in error["message"]


def test_bad_text_beside_valid_requests_fails_only_itself(bundle, db_url, key, alone):
    # A long wait to fill the batch: the bad requests share batches with the valid ones.
    gathering = settings(bundle, db_url, max_batch_size=64, max_wait_ms=300)
    texts: list[str | None] = [VALID[i % len(VALID)] for i in range(40)]
    for at in (3, 17, 29, 38):
        texts.insert(at, None)  # a request with a lone surrogate
    bodies = [SURROGATE if text is None else body_of(text) for text in texts]
    with running_server(gathering) as url:
        answers = post_all(url, key, bodies)
    for text, (response, _) in zip(texts, answers, strict=True):
        if text is None:
            assert response.status_code == 422, response.text
        else:
            assert_as_alone(response, text, alone)


@pytest.mark.parametrize("step", ["encode", "predict_batch"])
def test_a_text_that_breaks_the_model_fails_its_own_request_only(
    bundle, db_url, key, alone, monkeypatch, step
):
    original = getattr(Predictor, step)
    poisoned_batches: list[int] = []

    def breaks_on_poison(self, texts, *args, **kwargs):
        if any("POISON" in text for text in texts):
            poisoned_batches.append(len(texts))
            raise ValueError("the tokenizer cannot read this text (simulated)")
        return original(self, texts, *args, **kwargs)

    monkeypatch.setattr(Predictor, step, breaks_on_poison)
    gathering = settings(bundle, db_url, max_batch_size=64, max_wait_ms=300)
    texts = [VALID[i % len(VALID)] for i in range(30)]
    texts.insert(11, "POISON 很好")
    with running_server(gathering) as url:
        answers = post_all(url, key, [body_of(text) for text in texts])
    assert max(poisoned_batches) > 1, "the poisoned text never shared a batch"
    for text, (response, _) in zip(texts, answers, strict=True):
        if text.startswith("POISON"):
            assert response.status_code == 500, response.text
            assert response.json()["error"]["code"] == "server_error"
            assert "ValueError" in response.json()["error"]["message"]
        else:
            assert_as_alone(response, text, alone)


def test_past_capacity_requests_are_refused_at_once_not_timed_out(bundle, db_url, key, monkeypatch):
    original = Predictor.predict_batch

    def slow(self, texts, *args, **kwargs):
        time.sleep(0.4)  # 2 texts a batch: 5 texts/s, 50 within the 10 s timeout
        return original(self, texts, *args, **kwargs)

    monkeypatch.setattr(Predictor, "predict_batch", slow)
    timeout_s = 10.0
    slow_model = settings(bundle, db_url, max_batch_size=2, max_wait_ms=1, timeout_s=timeout_s)
    with running_server(slow_model) as url:
        answers = post_all(url, key, [body_of(VALID[i % len(VALID)]) for i in range(90)])
    statuses = [response.status_code for response, _ in answers]
    assert 504 not in statuses
    assert set(statuses) == {200, 503}, statuses
    # Some are served (how many depends on the machine's speed at warm-up): the rest refused.
    assert statuses.count(200) >= 2
    for response, seconds in answers:
        assert seconds < timeout_s, (response.status_code, seconds)
        if response.status_code == 503:
            assert response.json()["error"]["code"] == "overloaded"
            assert int(response.headers["retry-after"]) >= 1


def post_headers_only(url: str, key: str) -> tuple[http.client.HTTPResponse, dict]:
    """POST /v1/classify announcing a 1,000-byte body and never sending it: (response, error)."""
    connection = http.client.HTTPConnection("127.0.0.1", int(url.rsplit(":", 1)[1]), timeout=60)
    connection.putrequest("POST", "/v1/classify")
    for name, value in {**auth(key), "Content-Type": "application/json"}.items():
        connection.putheader(name, value)
    connection.putheader("Content-Length", "1000")
    connection.endheaders()
    response = connection.getresponse()
    error = json.loads(response.read())["error"]
    connection.close()
    return response, error


def test_a_saturated_model_refuses_before_the_body_is_read(bundle, db_url, key, monkeypatch):
    original = Predictor.predict_batch
    running, release = threading.Event(), threading.Event()

    def held(self, texts, *args, **kwargs):
        if texts == ["warm-up"]:
            time.sleep(0.2)  # measured at 0.2 s a text: 8 texts running fill the 1 s admitted
        else:
            running.set()
            release.wait(60)
        return original(self, texts, *args, **kwargs)

    monkeypatch.setattr(Predictor, "predict_batch", held)
    eight = json.dumps({"model": "reviews", "input": VALID + VALID[:2]})
    with running_server(settings(bundle, db_url, timeout_s=2.0)) as url:
        with ThreadPoolExecutor() as pool:
            pool.submit(post_all, url, key, [eight])
            running.wait(60)
            refused, error = post_headers_only(url, key)
            metrics = httpx.get(url + "/metrics").text
            release.set()
        ((after, _),) = post_all(url, key, [body_of(VALID[0])])
    assert refused.status == 503
    assert int(refused.getheader("Retry-After")) >= 1
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["param"], error["code"]) == ("server_error", None, "overloaded")
    assert "model 'reviews'" in error["message"]
    assert 'lmforge_requests_total{route="/v1/classify",status="503"} 1.0' in metrics
    assert after.status_code == 200, after.text  # idle again: admitted


def test_a_request_whose_deadline_passed_while_queued_is_dropped_not_run(bundle):
    predictor = lmforge.load(bundle)
    seen: list[str] = []
    release = threading.Event()
    original = predictor.predict_batch

    def holds_the_first_batch(texts, *args):
        seen.extend(texts)
        if "很好 先" in texts:
            release.wait(30)
        return original(texts, *args)

    predictor.predict_batch = holds_the_first_batch

    async def scenario() -> None:
        batcher = ClassificationEngine("reviews", predictor, 1, 0.0, 10, ServeMetrics())
        batcher.start()
        first = asyncio.create_task(batcher.classify(["很好 先"], False, 60))
        while "很好 先" not in seen:
            await asyncio.sleep(0.01)
        late = asyncio.create_task(batcher.classify(["失望 后"], False, 0.2))
        patient = asyncio.create_task(batcher.classify(["不错 最后"], False, 60))
        await asyncio.sleep(0.5)  # past the late request's deadline, still behind the first
        release.set()
        assert (await first).rows[0]["label"] in ("pos", "neg")
        with pytest.raises(TimeoutError):
            await late
        assert (await patient).rows[0]["label"] in ("pos", "neg")
        await batcher.stop()

    asyncio.run(scenario())
    assert "失望 后" not in seen


def test_when_the_model_slows_down_the_newest_requests_are_refused_early(bundle):
    predictor = lmforge.load(bundle)
    delay_s = [0.0]
    original = predictor.predict_batch

    def slows(texts, *args):
        time.sleep(delay_s[0])
        return original(texts, *args)

    predictor.predict_batch = slows

    async def scenario() -> list:
        batcher = ClassificationEngine("reviews", predictor, 1, 0.0, 1000, ServeMetrics())
        batcher.start()
        await batcher.classify(["很好"], False, 60)  # measured fast: 60 texts fit in 2 s
        delay_s[0] = 0.3  # then 0.3 s a text: most of them cannot be answered within 2 s
        calls = [batcher.classify([VALID[i % len(VALID)]], False, 2.0) for i in range(60)]
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        await batcher.stop()
        return outcomes

    outcomes = asyncio.run(scenario())
    refused = [outcome for outcome in outcomes if isinstance(outcome, Overloaded)]
    assert len(refused) >= 30, outcomes
    assert all(error.retry_after_s >= 1 for error in refused)
