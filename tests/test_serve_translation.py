"""POST /v1/translations as a client meets it: the bundle's translations, keyed and metered in
tokens; a malformed request is a 422 that never touches the requests served beside it."""

import json
import threading

import pytest
from serve_support import app_client, auth, settings
from translation_support import random_translation_bundle

import lmforge
from lmforge.serve.billing import keys, ledger
from lmforge.serve.billing.database import open_database

pytestmark = pytest.mark.usefixtures("one_thread")
SOURCES = ["我每天早上喝咖啡。", "他们明天去北京。", "这本书很有意思。", "你好"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return random_translation_bundle(tmp_path_factory.mktemp("translation") / "model")


@pytest.fixture(scope="module")
def served(bundle, tiny_classifier, sqlite_url):
    secret = keys.create_key(open_database(sqlite_url), "translator")
    serve = settings(bundle, sqlite_url, f"reviews={tiny_classifier}", max_batch_size=16)
    serve = serve.model_copy(update={"models": [f"zh-en={bundle}", f"reviews={tiny_classifier}"]})
    with app_client(serve) as client:
        yield client, secret


def translate(client, secret, **body):
    # json.dumps escapes a lone surrogate ("\ud800"), as a client's JSON may
    return client.post("/v1/translations", content=json.dumps({"model": "zh-en", **body}),
                       headers=auth(secret) | {"Content-Type": "application/json"})


def test_translations_are_the_bundles_and_are_billed_in_tokens(served, bundle):
    client, secret = served
    translator = lmforge.load(bundle)
    for beam in (1, 3):
        response = translate(client, secret, input=SOURCES, beam_size=beam)
        assert response.status_code == 200, response.text
        body = response.json()
        expected = translator.translate(SOURCES, beam_size=beam)
        assert [row["text"] for row in body["data"]] == [t.text for t in expected]
        assert [row["index"] for row in body["data"]] == list(range(len(SOURCES)))
        usage = body["usage"]
        assert usage["prompt_tokens"] == sum(translator.count_tokens(SOURCES))
        assert usage["completion_tokens"] == sum(t.output_tokens for t in expected)
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    one = translate(client, secret, input=SOURCES[0]).json()["data"]
    assert [row["text"] for row in one] == [translator.translate(SOURCES[:1])[0].text]


def test_a_request_sets_the_repetition_block_as_the_cli_does(served, bundle):
    """no_repeat_ngram per request: the bundle's translations under that setting (an untrained
    model loops, so the block changes them); unset is the bundle's own."""
    client, secret = served
    translator = lmforge.load(bundle)
    got = {}
    for n in (0, 1, None):
        response = translate(client, secret, input=SOURCES, no_repeat_ngram=n)
        assert response.status_code == 200, response.text
        got[n] = [row["text"] for row in response.json()["data"]]
        assert got[n] == [t.text for t in translator.translate(SOURCES, no_repeat_ngram=n)]
    assert got[0] != got[1]
    assert got[None] == [t.text for t in translator.translate(SOURCES)]


@pytest.mark.parametrize(("body", "status"), [
    ({"input": []}, 422),
    ({"input": ["你好"] * 257}, 422),
    ({"input": "长" * 5000}, 422),
    ({"input": ["ok", "\ud800"]}, 422),
    ({"input": 5}, 422),
    ({}, 422),
    ({"input": "你好", "beam_size": 0}, 422),
    ({"input": "你好", "beam_size": 17}, 422),
    ({"input": "你好", "length_penalty": -1}, 422),
    ({"input": "你好", "max_new_tokens": 100000}, 422),
    ({"input": "你好", "no_repeat_ngram": -1}, 422),
    ({"input": "你好", "no_repeat_ngram": 17}, 422),
    ({"input": "你好", "temperature": 0.5}, 422),
    ({"input": "你好", "model": "reviews"}, 400),
    ({"input": "你好", "model": "nope"}, 404),
])
def test_malformed_requests_are_refused_with_4xx(served, body, status):
    client, secret = served
    response = translate(client, secret, **body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["message"]


def test_a_request_without_a_key_is_refused(served):
    client, _ = served
    response = client.post("/v1/translations", json={"model": "zh-en", "input": "你好"})
    assert response.status_code == 401


def test_bad_requests_beside_good_ones_leave_them_untouched(served, bundle):
    client, secret = served
    translator = lmforge.load(bundle)
    expected = {beam: [t.text for t in translator.translate(SOURCES, beam_size=beam)]
                for beam in (1, 2, 4)}
    results, errors = {}, []

    def good(i: int) -> None:
        beam = (1, 2, 4)[i % 3]
        response = translate(client, secret, input=SOURCES, beam_size=beam)
        results[i] = (beam, response.status_code, [row["text"] for row in
                                                   response.json().get("data", [])])

    def bad(i: int) -> None:
        response = translate(client, secret, input=["你好", "\udfff"], beam_size=2)
        errors.append(response.status_code)

    threads = [threading.Thread(target=good if i % 2 else bad, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [422] * 6
    for beam, status, texts in results.values():
        assert status == 200 and texts == expected[beam]


def test_every_call_is_recorded_once(bundle, tiny_classifier, tmp_path):
    db_url = f"sqlite:///{tmp_path / 'usage.db'}"
    secret = keys.create_key(open_database(db_url), "metered")
    with app_client(settings(bundle, db_url)) as client:
        name = bundle.parent.name
        bodies = [translate(client, secret, model=name, input=SOURCES[:k]).json()
                  for k in (1, 2, 3)]
        assert translate(client, secret, model=name, input=[]).status_code == 422
    (usage,) = ledger.usage_summary(open_database(db_url), key="metered")
    assert usage.prompt_tokens == sum(b["usage"]["prompt_tokens"] for b in bodies)
    assert usage.completion_tokens == sum(b["usage"]["completion_tokens"] for b in bodies)
    assert usage.requests >= 3
