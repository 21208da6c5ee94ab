"""Quotas that hold under bursts, across server processes sharing one database, and billing
that charges a client for what it received: a call reserves its largest cost when it is
admitted and settles to its real count when its usage record is written."""

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from datetime import timedelta

import httpx
import pytest
from generation_support import random_bundle
from serve_support import REPO, auth, postgres_url, running_server, settings, wait_until_ready
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from lmforge.decoding import DecodeBatch
from lmforge.serve.billing import keys, ledger
from lmforge.serve.billing.database import (
    QuotaBalance,
    QuotaReservation,
    UsageRecord,
    open_database,
    utcnow,
)
from lmforge.serve.billing.quota import Balance, period_start, reserve_tokens

TEXT = "这个 产品 很好 推荐"


@pytest.fixture(scope="module")
def bundle(tiny_classifier):
    return tiny_classifier


@pytest.fixture(scope="module")
def story(tmp_path_factory):
    return random_bundle(tmp_path_factory.mktemp("serve-quota-gen") / "story", context=64)


@pytest.fixture
def db_url(any_db_url):
    return any_db_url


def new_key(db_url, quota):
    name = f"burst-{uuid.uuid4().hex[:8]}"  # the PostgreSQL database outlives a test
    return name, keys.create_key(open_database(db_url), name, quota_tokens=quota)


async def burst(urls, path, body, secret, n):
    """n concurrent calls, spread over the servers at `urls`: their responses."""
    async with httpx.AsyncClient(timeout=60) as client:
        calls = [
            client.post(urls[i % len(urls)] + path, json=body, headers=auth(secret))
            for i in range(n)
        ]
        return await asyncio.gather(*calls)


def recorded(db_url, name):
    with Session(open_database(db_url)) as session:
        return session.scalars(select(UsageRecord).where(UsageRecord.key_name == name)).all()


def assert_quota_held(responses, db_url, name, quota):
    statuses = {r.status_code for r in responses}
    assert statuses <= {200, 429}, statuses
    ok = [r for r in responses if r.status_code == 200]
    assert ok, "no call fitted the quota"
    billed = sum(r.json()["usage"]["total_tokens"] for r in ok)
    records = recorded(db_url, name)
    assert len(records) == len(responses)  # every call recorded, refused ones too
    assert sum(r.prompt_tokens + r.completion_tokens for r in records) == billed <= quota
    for response in responses:
        if response.status_code == 429:
            assert response.json()["error"]["code"] == "insufficient_quota"
            assert int(response.headers["retry-after"]) >= 1


def test_a_burst_of_calls_cannot_pass_the_quota(bundle, db_url):
    name, secret = new_key(db_url, quota=50)
    with running_server(settings(bundle, db_url)) as url:
        body = {"model": "reviews", "input": TEXT}
        responses = asyncio.run(burst([url], "/v1/classify", body, secret, 200))
    assert_quota_held(responses, db_url, name, 50)


def test_a_burst_of_completions_reserves_max_tokens(story, db_url):
    name, secret = new_key(db_url, quota=100)
    serve = settings(story, db_url, max_tokens_cap=16)
    with running_server(serve) as url:
        body = {"model": "story", "prompt": "the cat sat", "max_tokens": 12, "temperature": 0}
        responses = asyncio.run(burst([url], "/v1/completions", body, secret, 40))
    assert_quota_held(responses, db_url, name, 100)


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def server_process(bundle, db_url, log):
    """`lmforge serve` in a process of its own; yields its URL once it is ready."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "lmforge", "serve", str(bundle), "--db", db_url,
               "--port", str(port)]
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, 120, process)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.timeout(400)
def test_two_server_processes_on_one_postgresql_hold_one_quota(bundle, tmp_path):
    db_url, reason = postgres_url()
    if db_url is None:
        pytest.skip(f"PostgreSQL test skipped: {reason}")
    name, secret = new_key(db_url, quota=60)
    with open(tmp_path / "servers.log", "w") as log:
        with server_process(bundle, db_url, log) as one, server_process(bundle, db_url, log) as two:
            body = {"model": "reviews", "input": TEXT}
            responses = asyncio.run(burst([one, two], "/v1/classify", body, secret, 160))
    assert_quota_held(responses, db_url, name, 60)


def test_a_reservation_left_by_a_dead_server_is_released_when_it_expires(tmp_path):
    engine = open_database(f"sqlite:///{tmp_path / 'held.db'}")
    held = reserve_tokens(engine, "k", quota=100, tokens=80, hold_s=3600)
    assert isinstance(held, int)
    refused = reserve_tokens(engine, "k", quota=100, tokens=30, hold_s=3600)
    assert refused == Balance(used=0, reserved=80)
    # The server that held 80 died without settling: once its hold expires, the tokens are free.
    with engine.begin() as connection:
        connection.execute(
            update(QuotaReservation).values(
                expires_at=utcnow() - timedelta(seconds=1)
            )
        )
    assert isinstance(reserve_tokens(engine, "k", 100, 30, 3600), int)


def test_settling_counts_what_was_used_and_frees_what_was_held(tmp_path):
    engine = open_database(f"sqlite:///{tmp_path / 'settle.db'}")
    held = reserve_tokens(engine, "k", quota=100, tokens=90, hold_s=3600)
    call = ledger.Call("k", "m", "completions", 7, 3, 1.0, 200, reservation=held)
    ledger.record_calls(engine, [call])
    ledger.record_calls(engine, [call])  # settled twice (a retry): held once, freed once
    with Session(engine) as session:
        balance = session.scalars(select(QuotaBalance)).one()
    assert (balance.used, balance.reserved) == (20, 0)
    assert ledger.tokens_used(engine, "k", period_start(utcnow())) == 20


def test_a_reply_that_was_not_delivered_is_not_billed(story, tmp_path, monkeypatch):
    """A non-streamed call that times out (504) is recorded with its status and no tokens."""
    db_url = f"sqlite:///{tmp_path / 'billing.db'}"
    name, secret = new_key(db_url, quota=None)
    advance = DecodeBatch.advance

    def slow(self):
        time.sleep(0.05)
        advance(self)

    monkeypatch.setattr(DecodeBatch, "advance", slow)
    serve = settings(story, db_url, timeout_s=0.5, max_tokens_cap=64)
    with running_server(serve) as url:
        body = {"model": "story", "prompt": "the cat sat", "max_tokens": 60}
        response = httpx.post(url + "/v1/completions", json=body, headers=auth(secret),
                              timeout=30)
    assert response.status_code == 504
    (record,) = recorded(db_url, name)
    assert record.status == 504
    assert (record.prompt_tokens, record.completion_tokens) == (0, 0)


def test_malformed_calls_are_recorded_with_no_tokens(bundle, tmp_path):
    db_url = f"sqlite:///{tmp_path / 'malformed.db'}"
    name, secret = new_key(db_url, quota=None)
    with running_server(settings(bundle, db_url)) as url:
        bad = [
            {"model": "reviews"},  # no input
            {"model": "reviews", "input": 12},
            {"model": "reviews", "input": "很好", "truncate": "maybe"},
        ]
        for body in bad:
            response = httpx.post(url + "/v1/classify", json=body, headers=auth(secret))
            assert response.status_code == 422
        response = httpx.post(url + "/v1/classify", content=b"{not json",
                              headers={**auth(secret), "Content-Type": "application/json"})
        assert response.status_code == 422
    records = recorded(db_url, name)
    assert [r.status for r in records] == [422] * 4
    assert all(r.prompt_tokens == r.completion_tokens == 0 for r in records)
    assert [r.endpoint for r in records] == ["classify"] * 4
    assert records[0].model == "reviews"
    summary = ledger.usage_summary(open_database(db_url), name)[0]
    assert (summary.requests, summary.errors, summary.total_tokens) == (4, 4, 0)

