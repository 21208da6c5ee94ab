"""Random JSON bodies (wrong types, huge numbers, NaN, odd Unicode, missing fields) posted to
every keyed route: never a 5xx, and every 4xx in the OpenAI error shape."""

import json
from urllib.parse import quote

import pytest
from generation_support import random_bundle
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serve_support import app_client, auth, train_tiny_bundle
from serve_support import settings as serve_settings

from lmforge.serve.billing import keys
from lmforge.serve.billing.database import open_database

# Any code point, and often a lone surrogate (json.dumps writes it as a \ud800 escape).
ANY_TEXT = st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF, categories=None),
                   max_size=12)
ODD_TEXT = st.one_of(
    st.sampled_from(["\ud800", "a\udfffb", "\x00", "\ufffd", "🙂", "物流很快", "z" * 3000, ""]),
    ANY_TEXT,
    ANY_TEXT.map(lambda text: text + "\ud800"),
)
NUMBERS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, -1, 2**63 - 1, 2**63, 2**64, 1e-40, 1e-300, 1e300]),
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, ODD_TEXT)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ODD_TEXT, inner, max_size=4),
    max_leaves=8,
)

def plausible():
    """Per field, a value of about the right type (odd in its content), or any JSON value."""
    texts = st.one_of(ODD_TEXT, st.lists(ODD_TEXT, max_size=3))
    small = st.integers(min_value=-2, max_value=10)
    by_field = {
        "input": texts, "prompt": texts, "stop": texts, "truncate": st.booleans(),
        "max_tokens": small, "max_completion_tokens": small, "n": small, "top_k": NUMBERS,
        "temperature": NUMBERS, "top_p": NUMBERS, "repetition_penalty": NUMBERS,
        "seed": NUMBERS, "stream": st.booleans(),
        "stream_options": st.fixed_dictionaries({}, optional={"include_usage": VALUES}),
    }
    return {name: st.one_of(value, VALUES) for name, value in by_field.items()}


ROUTE_FIELDS = {
    "/v1/classify": ["input", "truncate"],
    "/v1/completions": ["prompt", "max_tokens", "max_completion_tokens", "stream",
                        "stream_options", "n", "temperature", "top_p", "top_k",
                        "repetition_penalty", "stop", "seed", "truncate"],
}
ROUTE_FIELDS["/v1/chat/completions"] = ["messages", *ROUTE_FIELDS["/v1/completions"][1:]]


def bodies(path, model_names):
    """Objects with some of the route's fields (a served model's name most of the time, its
    main field most of the time), sometimes with an unknown field or not an object at all."""
    content = st.one_of(
        ODD_TEXT, st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": VALUES})),
        VALUES,
    )
    messages = st.lists(
        st.fixed_dictionaries({"role": st.one_of(st.just("user"), VALUES)},
                              optional={"content": content}),
        max_size=3,
    )
    values = plausible() | {"messages": st.one_of(messages, VALUES)}
    main, *others = ROUTE_FIELDS[path]
    fields = st.fixed_dictionaries(
        {"model": st.one_of(st.sampled_from(model_names), VALUES), main: values[main]},
        optional={name: values[name] for name in others} | {"extra": VALUES},
    )
    return st.one_of(fields, fields, fields, VALUES)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-fuzz")
    classifier = train_tiny_bundle(root)
    story = random_bundle(root / "story" / "model", context=48)
    db_url = f"sqlite:///{root / 'fuzz.db'}"
    secret = keys.create_key(open_database(db_url), "fuzzer")
    serve = serve_settings(classifier, db_url, f"story={story}", max_tokens_cap=8, timeout_s=20)
    with app_client(serve) as client:
        yield client, secret


def assert_no_server_error(response):
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        error = response.json()["error"]
        assert isinstance(error["message"], str) and error["message"]
        assert isinstance(error["type"], str)
        assert "param" in error and "code" in error


@pytest.mark.timeout(600)
@pytest.mark.parametrize("path", ["/v1/classify", "/v1/completions", "/v1/chat/completions"])
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_bodies_never_get_a_server_error(served, path, data):
    client, secret = served
    body = data.draw(bodies(path, ["reviews", "story"]))
    content = json.dumps(body, allow_nan=True).encode()
    headers = {**auth(secret), "Content-Type": "application/json"}
    assert_no_server_error(client.post(path, content=content, headers=headers))


@pytest.mark.timeout(300)
@settings(max_examples=60, deadline=None)
@given(name=st.text(max_size=12), query=st.dictionaries(st.sampled_from(["key", "x"]),
                                                         st.text(max_size=12)))
def test_random_names_and_queries_on_get_routes(served, name, query):
    client, secret = served
    for path in ("/v1/models", "/v1/usage", "/v1/models/" + quote(name, safe="")):
        assert_no_server_error(client.get(path, params=query, headers=auth(secret)))
