"""Who calls: API keys (create: the secret is shown once, only its hash is stored; list, revoke,
look up), and the server's cache of the keys it found active."""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from lmforge.errors import LmforgeError
from lmforge.serve.billing.database import ApiKey, utcnow

ANONYMOUS = "anonymous"  # the key name that calls are metered under with --no-auth
KEY_PREFIX = "lmf-"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class KeyInfo:
    name: str
    prefix: str
    quota_tokens: int | None
    rpm: int | None
    created_at: datetime
    revoked_at: datetime | None


def hash_key(secret: str) -> str:
    # Keys are 256 random bits, so a plain SHA-256 cannot be brute-forced; no salt is needed.
    return hashlib.sha256(secret.encode()).hexdigest()


def _info(row: ApiKey) -> KeyInfo:
    return KeyInfo(row.name, row.prefix, row.quota_tokens, row.rpm, row.created_at, row.revoked_at)


def create_key(
    engine: Engine, name: str, quota_tokens: int | None = None, rpm: int | None = None
) -> str:
    """Store a new key named `name` and return its secret (the only time it is seen)."""
    if not NAME_PATTERN.match(name):
        raise LmforgeError(
            f"key name {name!r} is not allowed: use letters, digits, '.', '_' or '-' (max 64)"
        )
    for flag, value in (("--quota-tokens", quota_tokens), ("--rpm", rpm)):
        if value is not None and value < 1:
            raise LmforgeError(f"{flag} must be at least 1 (leave it out for no limit)")
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    with Session(engine) as session:
        if session.scalar(select(ApiKey).where(ApiKey.name == name)) is not None:
            raise LmforgeError(f"a key named {name!r} exists already; choose another name")
        session.add(
            ApiKey(
                name=name,
                key_hash=hash_key(secret),
                prefix=secret[: len(KEY_PREFIX) + 4],
                quota_tokens=quota_tokens,
                rpm=rpm,
                created_at=utcnow(),
            )
        )
        session.commit()
    return secret


def list_keys(engine: Engine) -> list[KeyInfo]:
    with Session(engine) as session:
        return [_info(row) for row in session.scalars(select(ApiKey).order_by(ApiKey.id))]


def revoke_key(engine: Engine, name: str) -> None:
    with Session(engine) as session:
        row = session.scalar(select(ApiKey).where(ApiKey.name == name))
        if row is None:
            known = ", ".join(k.name for k in session.scalars(select(ApiKey))) or "none"
            raise LmforgeError(f"no key named {name!r} (keys: {known})")
        if row.revoked_at is None:
            row.revoked_at = utcnow()
            session.commit()


def find_active_key(engine: Engine, key_hash: str) -> KeyInfo | None:
    """The key with this hash (see hash_key), unless unknown or revoked."""
    with Session(engine) as session:
        row = session.scalar(select(ApiKey).where(ApiKey.key_hash == key_hash))
        return None if row is None or row.revoked_at is not None else _info(row)


def key_exists(engine: Engine, name: str) -> bool:
    with Session(engine) as session:
        return session.scalar(select(ApiKey.id).where(ApiKey.name == name)) is not None


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
