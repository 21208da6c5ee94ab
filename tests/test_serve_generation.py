"""Generation served: the official openai client against a real server on 127.0.0.1, completions
and chat, streamed and not, with the Generator's token counts as usage and a record per call."""

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from generation_support import random_bundle
from serve_support import running_server, settings, story_server
from sqlalchemy import select
from sqlalchemy.orm import Session

import lmforge
from lmforge.decoding import DecodeBatch, SlotBatch
from lmforge.serve.billing import keys
from lmforge.serve.billing.database import UsageRecord, open_database

openai = pytest.importorskip("openai")

PROMPT = "the cat sat on"
MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the dog ran"}]
SAMPLING = {"max_tokens": 8, "temperature": 0, "seed": 3}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return random_bundle(tmp_path_factory.mktemp("serve-generation") / "model", context=64)


@pytest.fixture(scope="module")
def db_url(sqlite_url):
    return sqlite_url


@pytest.fixture(scope="module")
def api(bundle, db_url):
    with story_server(bundle, db_url, "writer", max_tokens_cap=16) as (url, secret):
        yield openai.OpenAI(base_url=url + "/v1", api_key=secret, max_retries=0)


@pytest.fixture(scope="module")
def generator(bundle):
    return lmforge.load(bundle)


def records(db_url):
    with Session(open_database(db_url)) as session:
        return session.scalars(select(UsageRecord).order_by(UsageRecord.id)).all()


def streamed(chunks):
    """(text, finish_reason, usage) of a stream of chunks."""
    text, reason, usage = "", None, None
    for chunk in chunks:
        if chunk.usage is not None:
            assert not chunk.choices
            usage = chunk.usage
        for choice in chunk.choices:
            piece = choice.delta.content if hasattr(choice, "delta") else choice.text
            text += piece or ""
            reason = choice.finish_reason or reason
    return text, reason, usage


def slow_down(monkeypatch, seconds):
    """Every decoding step of the server's batch takes `seconds` longer (on a GPU the server
    decodes in a SlotBatch)."""
    for layout in (DecodeBatch, SlotBatch):
        advance = layout.advance

        def slow(self, advance=advance):
            time.sleep(seconds)
            advance(self)

        monkeypatch.setattr(layout, "advance", slow)


def largest_batch(metrics_text, model):
    """The most prompts decoded in one step, as /metrics tells it (a histogram bucket bound)."""
    bounds = [
        (float(line.split('le="')[1].split('"')[0]), float(line.rsplit(" ", 1)[1]))
        for line in metrics_text.splitlines()
        if line.startswith("lmforge_batch_size_bucket") and f'model="{model}"' in line
    ]
    total = max(count for _, count in bounds)
    return min(bound for bound, count in bounds if count == total)


def test_completions_match_the_generator_streamed_or_not(api, generator, db_url):
    (expected,) = generator.generate([PROMPT], max_new_tokens=8, temperature=0, seed=3)
    before = len(records(db_url))
    whole = api.completions.create(model="story", prompt=PROMPT, **SAMPLING)
    assert whole.object == "text_completion" and whole.model == "story"
    assert whole.choices[0].text == expected.text
    assert whole.choices[0].finish_reason == expected.finish_reason
    assert whole.usage.prompt_tokens == expected.prompt_tokens
    assert whole.usage.completion_tokens == expected.completion_tokens

    stream = api.completions.create(model="story", prompt=PROMPT, stream=True, **SAMPLING)
    text, reason, usage = streamed(stream)
    assert (text, reason) == (expected.text, expected.finish_reason)
    assert usage.prompt_tokens == expected.prompt_tokens
    assert usage.completion_tokens == expected.completion_tokens

    new = records(db_url)[before:]
    assert [(r.endpoint, r.model, r.status, r.key_name) for r in new] == [
        ("completions", "story", 200, "writer")
    ] * 2
    assert [(r.prompt_tokens, r.completion_tokens) for r in new] == [
        (expected.prompt_tokens, expected.completion_tokens)
    ] * 2


def test_chat_renders_messages_and_streams_the_same_text(api, generator, db_url):
    # lmforge's default template, which renders a prompt as the format strings before it did
    assert generator.render_chat(MESSAGES) == (
        "<|endoftext|>system: be brief\nuser: the dog ran\nassistant:")
    (expected,) = generator.generate([MESSAGES], chat=True, max_new_tokens=8, temperature=0,
                                     seed=3)
    (plain,) = generator.generate(["system: be brief\nuser: the dog ran\nassistant:"],
                                  max_new_tokens=8, temperature=0, seed=3)
    assert (expected.text, expected.prompt_tokens) == (plain.text, plain.prompt_tokens)
    before = len(records(db_url))
    whole = api.chat.completions.create(
        model="story", messages=MESSAGES, temperature=0, seed=3, max_completion_tokens=8
    )
    assert whole.object == "chat.completion"
    assert whole.choices[0].message.role == "assistant"
    assert whole.choices[0].message.content == expected.text
    assert whole.usage.prompt_tokens == expected.prompt_tokens
    assert whole.usage.completion_tokens == expected.completion_tokens

    stream = api.chat.completions.create(
        model="story", messages=MESSAGES, stream=True,
        stream_options={"include_usage": True}, **SAMPLING,
    )
    text, reason, usage = streamed(stream)
    assert (text, reason) == (expected.text, expected.finish_reason)
    assert (usage.prompt_tokens, usage.completion_tokens) == (
        expected.prompt_tokens, expected.completion_tokens
    )
    new = records(db_url)[before:]
    assert [(r.endpoint, r.status, r.completion_tokens) for r in new] == [
        ("chat.completions", 200, expected.completion_tokens)
    ] * 2


def test_limits_and_bad_arguments_are_422_and_metered(api, db_url):
    before = len(records(db_url))
    with pytest.raises(openai.UnprocessableEntityError, match="cap of 16"):
        api.completions.create(model="story", prompt=PROMPT, max_tokens=17)
    with pytest.raises(openai.UnprocessableEntityError, match="max_completion_tokens"):
        api.chat.completions.create(model="story", messages=MESSAGES, max_completion_tokens=99)
    with pytest.raises(openai.UnprocessableEntityError, match="temperature"):
        api.completions.create(model="story", prompt=PROMPT, temperature=-1, stream=True)
    with pytest.raises(openai.UnprocessableEntityError, match="at most 32"):
        api.completions.create(model="story", prompt=[PROMPT] * 33, max_tokens=2)
    new = records(db_url)[before:]
    assert [(r.status, r.completion_tokens) for r in new] == [(422, 0)] * 4


def test_several_prompts_are_choices_in_order(api, generator):
    prompts = [PROMPT, "a big red dog"]
    expected = [generator.generate([p], max_new_tokens=8, temperature=0)[0] for p in prompts]
    reply = api.completions.create(model="story", prompt=prompts, max_tokens=8, temperature=0)
    assert [c.index for c in reply.choices] == [0, 1]
    assert reply.usage.prompt_tokens == sum(e.prompt_tokens for e in expected)


def test_a_client_that_leaves_mid_stream_stops_it_and_pays_for_what_it_got(
    api, generator, db_url, monkeypatch
):
    (full,) = generator.generate([PROMPT], max_new_tokens=16, temperature=0)
    assert full.completion_tokens == 16  # a long enough stream to leave in the middle of
    slow_down(monkeypatch, 0.05)
    before = len(records(db_url))
    body = {"model": "story", "prompt": PROMPT, "max_tokens": 16, "temperature": 0, "stream": True}
    headers = {"Authorization": f"Bearer {api.api_key}"}
    with httpx.stream("POST", f"{api.base_url}completions", json=body, headers=headers) as reply:
        next(reply.iter_lines())  # the first chunk, then hang up
    deadline = time.monotonic() + 10
    while len(records(db_url)) == before:
        assert time.monotonic() < deadline, "the abandoned stream was not metered"
        time.sleep(0.05)
    (record,) = records(db_url)[before:]
    assert record.status == 499
    assert 1 <= record.completion_tokens < 16


def test_concurrent_requests_are_decoded_together_each_as_it_would_be_alone(
    api, generator, monkeypatch
):
    """Requests of different prompts, lengths, sampling and endpoints, in flight at once, share
    the model's decoding steps and each still gets exactly the text it gets alone."""
    calls = [
        {"prompt": PROMPT, "max_tokens": 16, "temperature": 0},
        {"prompt": "a big red dog", "max_tokens": 5, "temperature": 0},
        {"prompt": "under the log", "max_tokens": 12, "temperature": 0.9, "seed": 11},
        {"prompt": "small blue mat on the", "max_tokens": 9, "temperature": 0,
         "repetition_penalty": 1.5},
        {"prompt": [PROMPT, "red"], "max_tokens": 7, "temperature": 0, "stream": True},
        {"prompt": "the dog", "max_tokens": 10, "temperature": 0, "stop": ["e"]},
    ]
    expected = []
    for call in calls:
        prompts = call["prompt"] if isinstance(call["prompt"], list) else [call["prompt"]]
        options = {k: v for k, v in call.items() if k not in ("prompt", "max_tokens", "stream")}
        expected.append([c.text for c in generator.generate(
            prompts, max_new_tokens=call["max_tokens"], **options)])

    def complete(call):
        extra = {k: call.pop(k) for k in ("repetition_penalty",) if k in call}
        reply = api.completions.create(model="story", extra_body=extra, **call)
        if not call.get("stream"):
            return [choice.text for choice in reply.choices]
        texts = {}
        for chunk in reply:
            for choice in chunk.choices:
                texts[choice.index] = texts.get(choice.index, "") + choice.text
        return [texts[i] for i in sorted(texts)]

    slow_down(monkeypatch, 0.05)  # every request is still decoding when the last one arrives
    with ThreadPoolExecutor(len(calls)) as pool:
        got = list(pool.map(complete, [dict(call) for call in calls]))
    assert got == expected
    metrics = httpx.get(str(api.base_url).removesuffix("v1/") + "metrics").text
    assert largest_batch(metrics, "story") >= 4  # 7 prompts in all, decoded together


def test_a_request_past_the_timeout_is_a_504_streamed_or_not(bundle, db_url, monkeypatch):
    """--timeout-s bounds the whole request: a stream that runs past it ends with an error
    event (the openai client raises it) and is billed for the tokens it was sent."""
    secret = keys.create_key(open_database(db_url), "hasty")
    serve = settings(bundle, db_url, timeout_s=0.6, max_tokens_cap=16)
    slow_down(monkeypatch, 0.1)  # 16 tokens take 1.5 s
    with running_server(serve) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key=secret, max_retries=0)
        before = len(records(db_url))
        with pytest.raises(openai.InternalServerError, match="0.6s") as raised:
            client.completions.create(model=bundle.parent.name, prompt=PROMPT, max_tokens=16,
                                      temperature=0)  # greedy: no early end of text by chance
        assert raised.value.status_code == 504
        stream = client.completions.create(
            model=bundle.parent.name, prompt=PROMPT, max_tokens=16, temperature=0, stream=True
        )
        text = ""
        with pytest.raises(openai.APIError, match="0.6s"):
            for chunk in stream:
                text += "".join(choice.text for choice in chunk.choices)
        assert text  # it was streaming when the time ran out
        new = [r for r in records(db_url)[before:] if r.key_name == "hasty"]
        assert [r.status for r in new] == [504, 504]
        assert 1 <= new[1].completion_tokens < 16


def test_a_failed_decoding_step_fails_its_requests_and_the_next_ones_run(
    api, generator, monkeypatch
):
    """An error inside decoding (out of GPU memory, say) is a 500 for the requests in the batch;
    the model keeps serving."""
    advances = {layout: layout.advance for layout in (DecodeBatch, SlotBatch)}

    def fail_once(self):
        for layout, advance in advances.items():
            monkeypatch.setattr(layout, "advance", advance)
        raise RuntimeError("CUDA out of memory (simulated)")

    for layout in advances:
        monkeypatch.setattr(layout, "advance", fail_once)
    with pytest.raises(openai.InternalServerError):
        api.completions.create(model="story", prompt=PROMPT, **SAMPLING)
    (expected,) = generator.generate([PROMPT], max_new_tokens=8, temperature=0, seed=3)
    reply = api.completions.create(model="story", prompt=PROMPT, **SAMPLING)
    assert reply.choices[0].text == expected.text
