"""Generation served to careless or hostile clients: sampling values out of range, invalid text
and content parts are 422s that name the field; a request whose sampling overflows never fails
the requests decoded beside it; a seeded prompt gets its own text wherever it sits in the batch;
a client that leaves before a non-streamed reply stops its generation; and the call's largest
cost is reserved against the key's quota before it joins the batch."""

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from generation_support import random_bundle
from serve_support import story_server
from sqlalchemy import select
from sqlalchemy.orm import Session

import lmforge
from lmforge.decoding import DecodeBatch, SlotBatch
from lmforge.serve.billing.database import UsageRecord, open_database
from lmforge.serve.billing.metered import MeteredCall
from lmforge.serve.errors import APIError

PROMPT = "the cat sat on"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return random_bundle(tmp_path_factory.mktemp("serve-abuse") / "model", context=64)


@pytest.fixture(scope="module")
def db_url(sqlite_url):
    return sqlite_url


@pytest.fixture(scope="module")
def server(bundle, db_url):
    """(URL, headers with a key) of a real server of the bundle as model "story"."""
    with story_server(bundle, db_url, "tester", max_tokens_cap=64) as (url, secret):
        yield url, {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}


@pytest.fixture(scope="module")
def generator(bundle):
    return lmforge.load(bundle)


def post(server, path, body, timeout=60.0):
    """POST the body as JSON with ASCII escapes, so a lone surrogate travels as "\\ud800"."""
    url, headers = server
    return httpx.post(url + path, content=json.dumps(body), headers=headers, timeout=timeout)


def complete(server, **body):
    reply = post(server, "/v1/completions", {"model": "story", **body})
    assert reply.status_code == 200, reply.text
    return [choice["text"] for choice in reply.json()["choices"]]


def records(db_url):
    with Session(open_database(db_url)) as session:
        return session.scalars(select(UsageRecord).order_by(UsageRecord.id)).all()


def count_steps(monkeypatch, seconds):
    """Every decoding step of the server's batch takes `seconds` longer; returns the list that
    gets an item per step."""
    steps = []
    for layout in (DecodeBatch, SlotBatch):
        advance = layout.advance

        def slow(self, advance=advance):
            time.sleep(seconds)
            steps.append(None)
            advance(self)

        monkeypatch.setattr(layout, "advance", slow)
    return steps


@pytest.mark.parametrize(
    ("field", "value", "param"),
    [
        ("temperature", 2.5, "temperature"),
        ("temperature", -0.1, "temperature"),
        ("top_p", 0, "top_p"),
        ("top_p", 1.5, "top_p"),
        ("top_k", -1, "top_k"),
        ("top_k", 10**7, "top_k"),
        ("repetition_penalty", 1e-300, "repetition_penalty"),
        ("repetition_penalty", 11, "repetition_penalty"),
        ("seed", 2**64, "seed"),
        ("seed", -1, "seed"),
        ("stop", ["a", "b", "c", "d", "e"], "stop"),
        ("stop", "z" * 257, "stop.0"),
        ("stop", ["\n", "z" * 950_000], "stop.1"),
    ],
)
def test_sampling_values_out_of_range_are_a_422_naming_the_field(server, field, value, param):
    reply = post(server, "/v1/completions",
                 {"model": "story", "prompt": PROMPT, "max_tokens": 3, field: value})
    assert reply.status_code == 422, reply.text
    error = reply.json()["error"]
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/completions", {"prompt": "\ud800"}, "prompt"),
        ("/v1/completions", {"prompt": ["the cat", "a \udfff dog"]}, "prompt"),
        ("/v1/completions", {"prompt": PROMPT, "stop": ["\ud800"]}, "stop.0"),
        ("/v1/chat/completions", {"messages": [{"role": "\ud800", "content": "hi"}]},
         "messages.0.role"),
        ("/v1/chat/completions",
         {"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "\ud800"}]},
         "messages.1.content"),
        ("/v1/chat/completions",
         {"messages": [{"role": "user", "content": [{"type": "text", "text": "\ud800"}]}]},
         "messages.0.content"),
        ("/v1/chat/completions",
         {"messages": [{"role": "user", "content": [{"type": "text", "text": 123}]}]},
         "messages.0.content"),
        ("/v1/chat/completions",
         {"messages": [{"role": "user", "content": [
             {"type": "image_url", "image_url": {"url": "http://example.com/a.png"}}]}]},
         "messages.0.content"),
    ],
)
def test_invalid_text_and_content_parts_are_a_422_naming_the_field(server, path, body, param):
    reply = post(server, path, {"model": "story", "max_tokens": 3, **body})
    assert reply.status_code == 422, reply.text
    assert reply.json()["error"]["param"] == param


def test_text_content_parts_are_the_message_text(server):
    def chat(content):
        reply = post(server, "/v1/chat/completions", {
            "model": "story", "max_tokens": 6, "temperature": 0,
            "messages": [{"role": "user", "content": content}],
        })
        assert reply.status_code == 200, reply.text
        return reply.json()["choices"][0]["message"]["content"]

    parts = [{"type": "text", "text": "the dog "}, {"type": "text", "text": "ran"}]
    assert chat(parts) == chat("the dog ran")


def test_a_request_whose_sampling_overflows_fails_none_of_the_others(
    server, generator, monkeypatch
):
    """A temperature of 1e-40 (in range) overflows the scores of its row: that row is decoded
    greedily, and the requests decoded beside it get the text they get alone."""
    innocent = [
        {"prompt": p, "max_tokens": 8, "temperature": 0.9, "seed": i}
        for i, p in enumerate(["the cat", "a big red dog", "under the log", "small blue mat",
                               "the dog ran", "red", "on a mat", "the big log"])
    ]
    extreme = {"prompt": "the dog sat", "max_tokens": 8, "temperature": 1e-40}
    expected = [
        generator.generate([c["prompt"]], max_new_tokens=8, temperature=0.9, seed=c["seed"])[0].text
        for c in innocent
    ]
    greedy = generator.generate([extreme["prompt"]], max_new_tokens=8, temperature=0)[0].text
    count_steps(monkeypatch, 0.03)  # every request is still decoding when the last one arrives
    with ThreadPoolExecutor(len(innocent) + 1) as pool:
        got = list(pool.map(lambda body: complete(server, **body)[0], [extreme, *innocent]))
    assert got == [greedy, *expected]


def test_a_seeded_prompt_gets_its_text_alone_in_a_list_or_joining_late(
    server, generator, monkeypatch
):
    """A prompt's text depends on the prompt, the seed and the settings, never on the prompts
    decoded beside it: alone, among others in one request, or joining a running batch."""
    sampling = {"max_tokens": 12, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "seed": 1}
    (alone,) = complete(server, prompt="物流很快", **sampling)
    (in_python,) = generator.generate(["物流很快"], max_new_tokens=12, temperature=1.0, top_k=0,
                                      top_p=1.0, seed=1)
    assert alone == in_python.text
    others = ["这家酒店", "the cat", "a big red dog ran", "log", "the small blue mat on the",
              "ran under", "big"]
    listed = complete(server, prompt=[*others[:5], "物流很快", *others[5:]], **sampling)
    assert listed[5] == alone
    steps = count_steps(monkeypatch, 0.05)
    running = threading.Thread(target=complete, args=(server,),
                               kwargs={"prompt": others, "max_tokens": 20, "temperature": 1.0})
    running.start()
    deadline = time.monotonic() + 30
    while len(steps) < 3:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    (late,) = complete(server, prompt="物流很快", **sampling)
    running.join()
    assert late == alone


def test_a_client_that_leaves_before_the_reply_stops_its_generation(
    server, db_url, monkeypatch
):
    """Not streamed, a client that hangs up is noticed within a fraction of a second: its rows
    leave the batch, and the call is recorded as a 499."""
    steps = count_steps(monkeypatch, 0.05)  # 50 tokens: 2.5 s
    before = len(records(db_url))
    body = {"model": "story", "prompt": PROMPT, "max_tokens": 50, "temperature": 0}
    with pytest.raises(httpx.ReadTimeout):
        post(server, "/v1/completions", body, timeout=0.4)
    deadline = time.monotonic() + 10
    while len(records(db_url)) == before:
        assert time.monotonic() < deadline, "the abandoned call was not recorded"
        time.sleep(0.05)
    (record,) = records(db_url)[before:]
    assert record.status == 499
    assert record.completion_tokens < 50
    time.sleep(0.3)
    decoded = len(steps)
    assert decoded < 25
    time.sleep(0.3)
    assert len(steps) == decoded  # nothing is decoding any more


def test_the_largest_cost_is_reserved_before_the_request_joins_the_batch(server, monkeypatch):
    """Prompt tokens plus max_tokens for every prompt are held against the quota first; a call
    the quota cannot hold never reaches the model."""
    reserved, added = [], []

    async def refuse(self, tokens):
        reserved.append((self.prompt_tokens, tokens))
        raise APIError(429, "quota", code="insufficient_quota")

    def add(self, *args, add=DecodeBatch.add):
        added.append(args)
        add(self, *args)

    monkeypatch.setattr(MeteredCall, "reserve", refuse)
    monkeypatch.setattr(DecodeBatch, "add", add)
    reply = post(server, "/v1/completions",
                 {"model": "story", "prompt": ["the cat", "a big red dog"], "max_tokens": 7})
    assert reply.status_code == 429
    ((prompt_tokens, tokens),) = reserved
    assert prompt_tokens > 0 and tokens == prompt_tokens + 2 * 7
    assert added == []
