"""Helpers for the tests of `lmforge serve` (tests/test_serve_*.py): a tiny bundle, an app with
its models loaded, a real uvicorn server on 127.0.0.1, and the PostgreSQL set up for the tests."""

from __future__ import annotations

import contextlib
import csv
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn
from conftest import make_reviews, tiny_config
from fastapi.testclient import TestClient

import lmforge
from lmforge.serve.billing import keys
from lmforge.serve.billing.database import open_database
from lmforge.serve.main import create_app
from lmforge.serve.settings import ServeSettings

REPO = Path(__file__).resolve().parent.parent
SERVICES_DIR = REPO / ".test-services"  # written by scripts/test-services.sh
ARTEFACTS_DIR = REPO / "tests" / "artefacts"


def train_tiny_bundle(directory: Path, name: str = "reviews") -> Path:
    """A few-second classifier (labels 'pos'/'neg', max_length 24) in directory/name/model."""
    data = directory / "reviews.csv"
    with open(data, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "review", "sentiment"])
        writer.writerows((i, text, label) for i, (text, label) in enumerate(make_reviews()))
    cfg = tiny_config(data)
    cfg["data"]["cache_dir"] = str(directory / "cache")
    cfg["eval"] = {"bootstrap": 0, "baselines": False}
    return lmforge.train(cfg, out=directory / name, show_progress=False).bundle_dir


def settings(bundle: Path, db: str, *models: str, **overrides: object) -> ServeSettings:
    return ServeSettings(models=[str(bundle), *models], db=db, **overrides)


def wait_ready(client, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, client.get("/readyz").text
        time.sleep(0.05)


@contextlib.contextmanager
def app_client(serve_settings: ServeSettings) -> Iterator[TestClient]:
    """A TestClient on a fresh app, its models loaded."""
    with TestClient(create_app(serve_settings)) as client:
        wait_ready(client)
        yield client


def wait_until_ready(url: str, timeout_s: float, process: Any = None) -> None:
    """Poll a server's /readyz until 200; fail if `process` (a Popen) exits or time runs out."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url + "/readyz").status_code == 200:
                return
        if process is not None:
            assert process.poll() is None, f"the server exited ({process.returncode})"
        assert time.monotonic() < deadline, "the server did not become ready"
        time.sleep(0.05)


@contextlib.contextmanager
def story_server(bundle: Path, db_url: str, key_name: str, max_tokens_cap: int) -> Iterator:
    """(URL, key) of a real server of a generation bundle served as model "story"."""
    secret = keys.create_key(open_database(db_url), key_name)
    serve = settings(bundle, db_url, max_tokens_cap=max_tokens_cap)
    serve = serve.model_copy(update={"models": [f"story={bundle}"]})
    with running_server(serve) as url:
        yield url, secret


@contextlib.contextmanager
def running_server(serve_settings: ServeSettings) -> Iterator[str]:
    """The app under a real uvicorn on 127.0.0.1 (a free port), in a thread; yields its URL."""
    with running_app(create_app(serve_settings)) as url:
        wait_until_ready(url, 60)
        yield url


@contextlib.contextmanager
def running_app(app: Any, port: int | None = None) -> Iterator[str]:
    """Any ASGI app under a real uvicorn on 127.0.0.1 (`port`, else a free one), in a thread,
    until the block ends; yields its URL once it listens."""
    if port is None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            assert thread.is_alive(), f"the server on port {port} did not start"
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def postgres_url() -> tuple[str | None, str]:
    """(URL of the test PostgreSQL, or None and why not) from the env or the setup script."""
    url = os.environ.get("LMFORGE_TEST_POSTGRES_URL")
    if url:
        return url, ""
    url_file, reason_file = SERVICES_DIR / "postgres.url", SERVICES_DIR / "postgres.skip"
    if url_file.is_file():
        return url_file.read_text().strip(), ""
    if reason_file.is_file():
        return None, reason_file.read_text().strip()
    return None, "no PostgreSQL: run scripts/test-services.sh first (make test does)"


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
