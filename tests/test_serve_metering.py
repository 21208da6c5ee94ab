"""Metering as a bill relies on it: every call of many concurrent ones is recorded exactly once,
with the tokenizer's token counts, on SQLite and on a real PostgreSQL server."""

import asyncio
import uuid

import httpx
import pytest
from serve_support import auth, running_server, settings

import lmforge
from lmforge.serve.billing import keys, ledger
from lmforge.serve.billing.database import open_database

N_REQUESTS = 64
TEXTS = ["很好", "这个 产品 物流 很差 失望", "great item the", "包装 价格 不错 推荐 " * 8]


@pytest.fixture(scope="module")
def bundle(tiny_classifier):
    return tiny_classifier


@pytest.fixture
def db_url(any_db_url):
    return any_db_url


def request_inputs(i):
    """Request i's input: one text or a few, some past max_length (sent with truncate)."""
    if i % 3 == 0:
        return TEXTS[i % len(TEXTS)]
    return [TEXTS[(i + j) % len(TEXTS)] + f" #{i}" for j in range(1 + i % 3)]


def as_list(inputs):
    return [inputs] if isinstance(inputs, str) else inputs


async def fire(url, secrets):
    limits = httpx.Limits(max_connections=N_REQUESTS)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        calls = [
            client.post(
                "/v1/classify",
                json={"model": "reviews", "input": request_inputs(i), "truncate": True},
                headers=auth(secrets[i % len(secrets)]),
            )
            for i in range(N_REQUESTS)
        ]
        return await asyncio.gather(*calls)


def test_concurrent_calls_are_metered_exactly(bundle, db_url):
    engine = open_database(db_url)
    run = uuid.uuid4().hex[:8]  # a shared PostgreSQL keeps earlier runs' keys and records
    names = [f"alice-{run}", f"bob-{run}"]
    secrets = [keys.create_key(engine, name) for name in names]

    serve = settings(bundle, db_url, max_batch_size=8, max_wait_ms=20)
    with running_server(serve) as url:
        responses = asyncio.run(fire(url, secrets))

    assert [r.status_code for r in responses] == [200] * N_REQUESTS
    predictor = lmforge.load(bundle)
    for k, name in enumerate(names):
        mine = [i for i in range(N_REQUESTS) if i % len(names) == k]
        texts = [
            t for i in mine for t in ([request_inputs(i)] if i % 3 == 0 else request_inputs(i))
        ]
        expected_tokens = sum(len(ids) for ids in predictor.encode(texts).ids)
        billed = sum(responses[i].json()["usage"]["prompt_tokens"] for i in mine)
        (usage,) = ledger.usage_summary(engine, key=name)
        assert usage.requests == len(mine) and usage.errors == 0
        assert usage.prompt_tokens == billed == expected_tokens
        assert usage.completion_tokens == 0
