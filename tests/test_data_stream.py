"""Generation corpora read as a stream (data.stream): the compact deduplication table, the split
by document hash, and a streamed run whose token files are exactly what tokenizing the same
split documents in memory gives."""

import json
import random

import numpy as np
import pytest
from generation_support import tiny_generation_config, write_corpus

import lmforge
from lmforge.config import load_config
from lmforge.data.records import Records
from lmforge.data.stream import HashSet, StreamReport, split_of, stream_documents
from lmforge.tokenization import TokenFiles, document_stream

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_hash_table_is_a_set_through_its_growth():
    rng = random.Random(0)
    values = [rng.getrandbits(64) for _ in range(5000)]
    values += values[:700]  # repeats
    table, reference = HashSet(capacity=8), set()
    for value in values:
        assert table.add(value) == ((value | 1) not in reference)
        reference.add(value | 1)
    assert table.size == len(reference) and len(table.slots) >= 2 * table.size


def test_a_document_split_depends_on_its_text_alone():
    counts = {"train": 0, "val": 0, "test": 0}
    for key in range(100_000):
        counts[split_of(key * 7919, 0.1, 0.1)] += 1
    assert counts == {"train": 80_000, "val": 10_000, "test": 10_000}


@pytest.mark.timeout(300)
def test_a_streamed_run_tokenizes_each_split_as_memory_would_and_counts_what_it_drops(tmp_path):
    corpus = write_corpus(tmp_path / "corpus.txt")
    lines = corpus.read_bytes().splitlines()
    extra = [lines[3], lines[3], b"", b"   ", b"caf\xe9 latin-1 line here"]
    corpus.write_bytes(b"\n".join(lines + extra) + b"\n")
    cfg = tiny_generation_config(corpus, tmp_path / "cache")
    cfg["data"]["stream"] = "on"

    result = lmforge.train(cfg, out=tmp_path / "run", show_progress=False)

    report = json.loads((result.run_dir / "data_report.json").read_text())
    assert report["streamed"] and report["split_by"] == "document hash"
    assert report["dropped"]["duplicate"] == 2 and report["blank_lines"] == 2
    assert report["undecodable"]["rows"] == 1
    assert sum(report["split_sizes"].values()) == report["documents_kept"]
    assert min(report["split_sizes"].values()) > 0

    # the same documents, split the same way, tokenized in memory: the same token files
    loaded = load_config(cfg)
    splits = {"train": [], "val": [], "test": []}
    for split, text in stream_documents(loaded.data, StreamReport(Records("x", "stream"))):
        splits[split].append(text)
    tokenizer = lmforge.load(result.bundle_dir).tokenizer
    key_files = TokenFiles(tmp_path / "cache").root
    (folder,) = [p for p in key_files.iterdir() if p.is_dir()]
    for name, documents in splits.items():
        stored = np.fromfile(folder / f"{name}.bin", dtype=np.uint16)
        expected = np.concatenate(list(document_stream(tokenizer, documents)))
        assert np.array_equal(stored, expected), name

    evaluation = json.loads((result.run_dir / "eval.json").read_text())
    again = lmforge.evaluate(result.run_dir, show=False)
    assert again["test_loss"] == pytest.approx(evaluation["test_loss"])
    assert again["data_check"]["changed_since_training"] is False
