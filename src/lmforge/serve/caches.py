"""What the server keeps from the database for a few seconds, so most requests skip it: the active
keys, and the tokens each key used this month (for quotas)."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from lmforge.serve.keys import KeyInfo, find_active_key, hash_key
from lmforge.serve.metering import Call, tokens_used


class KeyCache:
    """Active keys looked up in the last `ttl_s` seconds, so most requests skip the database.

    Only keys found active are kept: a new key works at once, a revoked one within ttl_s.
    """

    MAX_ENTRIES = 10_000

    def __init__(self, engine: Engine, ttl_s: float, clock: Callable[[], float] = time.monotonic):
        self.engine, self.ttl_s, self.clock = engine, ttl_s, clock
        self._found: dict[str, tuple[KeyInfo, float]] = {}

    async def find(self, secret: str) -> KeyInfo | None:
        digest = hash_key(secret)
        hit = self._found.get(digest)
        if hit is not None and hit[1] > self.clock():
            return hit[0]
        key = await run_in_threadpool(find_active_key, self.engine, digest)
        if key is None:
            self._found.pop(digest, None)
        elif self.ttl_s > 0:
            if len(self._found) >= self.MAX_ENTRIES:
                self._found.clear()
            self._found[digest] = (key, self.clock() + self.ttl_s)
        return key


class TokenLedger:
    """Tokens each key used this period: the database's sum, re-read once older than `ttl_s`,
    plus the tokens of the calls this server recorded since."""

    def __init__(self, engine: Engine, ttl_s: float, clock: Callable[[], float] = time.monotonic):
        self.engine, self.ttl_s, self.clock = engine, ttl_s, clock
        self._used: dict[str, tuple[datetime, int, float]] = {}  # key: (period, tokens, expiry)

    async def used(self, key_name: str, period_start: datetime) -> int:
        entry = self._used.get(key_name)
        if entry is None or entry[0] != period_start or entry[2] <= self.clock():
            tokens = await run_in_threadpool(tokens_used, self.engine, key_name, period_start)
            entry = (period_start, tokens, self.clock() + self.ttl_s)
            self._used[key_name] = entry
        return entry[1]

    def add(self, calls: list[Call]) -> None:
        """Count calls just committed by this server (keys not looked up yet need nothing)."""
        for call in calls:
            entry = self._used.get(call.key_name)
            if entry is not None:
                tokens = call.prompt_tokens + call.completion_tokens
                self._used[call.key_name] = (entry[0], entry[1] + tokens, entry[2])
