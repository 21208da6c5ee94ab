"""Shared fixtures: tiny labelled data written in the test, and an isolated token cache."""

import random

import pytest

POS = ["很好", "不错", "喜欢", "满意", "推荐", "great", "love it", "excellent"]
NEG = ["很差", "失望", "难用", "退货", "垃圾", "awful", "broken", "terrible"]


def make_reviews(n: int = 240, seed: int = 0) -> list[tuple[str, str]]:
    """Short distinct reviews whose label is given by the sentiment word they contain."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        word = rng.choice(POS if label == "pos" else NEG)
        filler = " ".join(
            rng.choice(["这个", "产品", "物流", "包装", "价格", "the", "item"])
            for _ in range(rng.randint(1, 5))
        )
        rows.append((f"{filler} {word} #{i}", label))
    return rows


@pytest.fixture
def reviews_csv(tmp_path):
    import csv

    path = tmp_path / "reviews.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "review", "sentiment"])
        for i, (text, label) in enumerate(make_reviews()):
            writer.writerow([i, text, label])
    return path


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Runs in tests never touch the user's ~/.cache."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def tiny_config(data_path, **train) -> dict:
    """A config small enough to train in a few seconds on one CPU core."""
    return {
        "data": {"path": str(data_path), "text_column": "review", "label_column": "sentiment"},
        "tokenizer": {"vocab_size": 120},
        "model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64, "max_length": 24},
        "train": {"max_steps": 40, "batch_size": 16, "lr": 3e-3, "eval_every": 20, **train},
        "eval": {"bootstrap": 50},
    }


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and lose much on a busy machine. A test module
    asks for it with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def lmforge_cli(monkeypatch, capsys, *args, stdin: str | None = None) -> tuple[int, str, str]:
    """Run the command line in this process, `stdin` as its standard input if given:
    (exit code, stdout, stderr)."""
    import io
    import sys

    from lmforge.cli import main

    monkeypatch.setattr(sys, "argv", ["lmforge", *map(str, args)])
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    with pytest.raises(SystemExit) as exit_info:
        main()
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    """A user mistake as the command line reports it: exit 2 and one `error: ...` line on
    stderr, naming each fragment, and no traceback."""
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory):
    """One few-second classifier bundle ('reviews'), trained once for the tests that only read
    it (the serving tests)."""
    from serve_support import train_tiny_bundle

    return train_tiny_bundle(tmp_path_factory.mktemp("tiny-classifier"))


@pytest.fixture(scope="module")
def sqlite_url(tmp_path_factory):
    """A fresh SQLite database of keys and usage for one test module."""
    return f"sqlite:///{tmp_path_factory.mktemp('db') / 'serve.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def any_db_url(request, tmp_path):
    """The database of keys and usage: a fresh SQLite file, then the test PostgreSQL (skipped,
    saying why, when scripts/test-services.sh could not start one)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'usage.db'}"
    from serve_support import postgres_url

    url, reason = postgres_url()
    if url is None:
        pytest.skip(f"PostgreSQL test skipped: {reason}")
    return url
