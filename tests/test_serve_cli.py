"""`lmforge serve`, `lmforge keys` and `lmforge usage` as a user runs them."""

import json
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
from conftest import assert_one_line_error
from serve_support import auth, train_tiny_bundle
from typer.testing import CliRunner

from lmforge.cli import app
from lmforge.errors import LmforgeError


def lmforge(*args):
    """The real command in a subprocess: for what only a process shows (exit code, signals)."""
    return subprocess.run(
        [sys.executable, "-m", "lmforge", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def cli(*args):
    """The same command in this process (faster): LmforgeError is what main() prints as error."""
    return CliRunner().invoke(app, [str(arg) for arg in args])


def assert_user_error(result, *fragments):
    if isinstance(result, subprocess.CompletedProcess):
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        message = result.stderr.strip().splitlines()[-1]
        assert message.startswith("error: ")
    else:
        assert isinstance(result.exception, LmforgeError), result.output
        message = str(result.exception)
    for fragment in fragments:
        assert fragment in message, message


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return train_tiny_bundle(tmp_path_factory.mktemp("serve-cli"))


@pytest.fixture
def db(tmp_path):
    return f"sqlite:///{tmp_path / 'cli.db'}"


def test_keys_create_prints_the_key_alone_once_and_list_never_shows_it(db):
    created = cli("keys", "create", "acme", "--quota-tokens", "5000", "--rpm", "60", "--db", db)
    assert created.exit_code == 0, created.output
    secret = created.stdout.strip()
    assert created.stdout == secret + "\n" and secret.startswith("lmf-") and len(secret) > 40
    listing = cli("keys", "list", "--db", db)
    assert "acme" in listing.stdout and "5,000" in listing.stdout and "active" in listing.stdout
    assert secret not in listing.stdout and secret[:8] in listing.stdout
    assert_user_error(cli("keys", "create", "acme", "--db", db), "exists already")
    assert cli("keys", "revoke", "acme", "--db", db).exit_code == 0
    assert "revoked" in cli("keys", "list", "--db", db).stdout
    assert_user_error(cli("keys", "revoke", "nobody", "--db", db), "no key named 'nobody'")


def test_keys_and_usage_share_a_default_database(isolated_cache, monkeypatch):
    # HOME is a temporary folder here: the default file lands under it.
    monkeypatch.delenv("LMFORGE_DB", raising=False)
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    assert cli("keys", "create", "default-db").exit_code == 0
    assert (isolated_cache / ".local/share/lmforge/lmforge.db").is_file()
    assert "default-db" in cli("keys", "list").stdout
    assert json.loads(cli("usage", "--json", "--key", "default-db").stdout)[0]["requests"] == 0


def test_usage_flags_and_mistakes(db):
    assert cli("keys", "create", "acme", "--db", db).exit_code == 0
    assert json.loads(cli("usage", "--json", "--db", db).stdout) == []
    assert "no usage recorded" in cli("usage", "--db", db).stdout
    assert_user_error(cli("usage", "--since", "last week", "--db", db), "--since")
    assert_user_error(cli("usage", "--key", "nobody", "--db", db), "no key named")
    assert_user_error(cli("keys", "list", "--db", "nonsense"), "--db")


def test_serve_refuses_what_is_not_a_bundle(tmp_path, bundle, db):
    assert_user_error(lmforge("serve", tmp_path, "--db", db), "not an lmforge bundle")
    assert_user_error(cli("serve", bundle, bundle, "--db", db), "two models are named")


def test_serve_on_a_port_in_use_is_one_line_and_exit_2(bundle, db):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = lmforge("serve", bundle, "--port", port, "--db", db)
    assert_one_line_error(result.returncode, result.stderr, f"port {port}", "in use", "--port")


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(condition, what, timeout_s=60.0):
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def ready(url):
    try:
        return httpx.get(url + "/readyz").status_code == 200
    except httpx.TransportError:
        return False


def queued(url):
    text = httpx.get(url + "/metrics").text
    return 'lmforge_queue_depth{model="reviews"} 1.0' in text


def test_serve_names_models_meters_them_and_drains_on_sigterm(bundle, db):
    key = cli("keys", "create", "ops", "--db", db).stdout.strip()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # A batch waits up to 2 s to fill: the request below is still in flight at SIGTERM.
    server = subprocess.Popen(
        [sys.executable, "-m", "lmforge", "serve", bundle.parent, f"alias={bundle}",
         "--port", str(port), "--db", db, "--max-batch-size", "64", "--max-wait-ms", "2000"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        wait_for(lambda: ready(url), "the server to be ready")
        models = httpx.get(url + "/v1/models", headers=auth(key)).json()["data"]
        assert [m["id"] for m in models] == ["reviews", "alias"]
        answer = {}
        body = {"model": "reviews", "input": "很好"}
        in_flight = threading.Thread(
            target=lambda: answer.update(
                response=httpx.post(url + "/v1/classify", json=body, headers=auth(key), timeout=60)
            )
        )
        in_flight.start()
        wait_for(lambda: queued(url), "the request to be queued")
        server.send_signal(signal.SIGTERM)
        in_flight.join(timeout=60)
        assert answer["response"].status_code == 200
        assert answer["response"].json()["data"][0]["label"] == "pos"
        # uvicorn re-raises the signal once drained, as process managers expect: -SIGTERM.
        assert server.wait(timeout=60) in (0, -signal.SIGTERM)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    log = server.stdout.read()
    assert "Finished server process" in log and "Traceback" not in log
    (usage,) = json.loads(cli("usage", "--json", "--db", db).stdout)
    assert usage["key"] == "ops" and usage["requests"] == 1 and usage["prompt_tokens"] > 0
    table = cli("usage", "--key", "ops", "--since", "2000-01-01", "--db", db).stdout
    assert "ops" in table and "prompt tokens" in table
