"""`lmforge evaluate` of a generation run after its corpus was edited: the run's own test
documents (splits.json) or a clear refusal, and never a document the model trained on."""

import json
import sys

import pytest
from generation_support import corpus_lines, tiny_generation_config, write_corpus

import lmforge
from lmforge.cli import main
from lmforge.config import load_config
from lmforge.data.documents import prepare_documents

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("generation")
    corpus = write_corpus(root / "corpus.txt")
    cfg = tiny_generation_config(corpus, root / "cache", max_steps=20, eval_every=10)
    run = lmforge.train(cfg, out=root / "run", show_progress=False).run_dir
    return run, corpus, prepare_documents(load_config(cfg).data)


@pytest.fixture
def corpus(trained):
    """The run's corpus, put back as it was after the test edits it."""
    _, path, _ = trained
    original = path.read_bytes()
    yield path
    path.write_bytes(original)


def test_evaluate_after_documents_are_added_scores_the_original_test_split(trained, corpus):
    run, _, data = trained
    before = json.loads((run / "eval.json").read_text())
    lines = corpus_lines() + [f"{line} more" for line in corpus_lines(40, seed=3)]
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    report = lmforge.evaluate(run, show=False)
    assert report["n_tokens"] == before["n_tokens"]
    assert report["test_loss"] == pytest.approx(before["test_loss"], rel=1e-6)
    assert report["data_check"]["changed_since_training"]
    assert report["data_check"]["test_texts"] == len(data.test.texts) == 30


def test_evaluate_refuses_when_test_documents_were_edited_away(
    trained, corpus, monkeypatch, capsys
):
    run, _, data = trained
    gone = set(data.test.texts[:3])
    lines = [f"{line} edited" if line in gone else line for line in corpus_lines()]
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", ["lmforge", "evaluate", str(run)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    [line] = err.strip().splitlines()
    assert line.startswith(f"error: {corpus} changed since training (sha256 "), line
    assert "3 of the 30 test texts are missing; evaluate with --data FILE" in line


def test_evaluate_on_a_file_leaves_out_the_documents_the_model_trained_on(
    trained, tmp_path
):
    run, _, data = trained
    new = [f"{line} new" for line in corpus_lines(20, seed=9)]
    other = tmp_path / "holdout.txt"
    other.write_text("\n".join(data.train.texts[:4] + data.val.texts[:1] + new) + "\n",
                     encoding="utf-8")
    report = lmforge.evaluate(run, data=other, show=False)
    assert report["data_check"]["dropped_seen_in_training"] == 5
    only_new = tmp_path / "only_new.txt"
    only_new.write_text("\n".join(new) + "\n", encoding="utf-8")
    assert lmforge.evaluate(run, data=only_new, show=False)["n_tokens"] == report["n_tokens"]
