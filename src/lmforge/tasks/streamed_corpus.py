"""Generation on a corpus read as a stream (data.stream; lmforge.data.stream): the tokenizer
learns from a sample of the training documents, then one pass cleans, deduplicates, splits and
tokenizes every document straight into the token files (memory-mapped while training). Memory
holds one chunk of documents and the deduplication table, whatever the corpus's size.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

import lmforge.render as render
import lmforge.runs as runs
from lmforge.config import Config
from lmforge.data.records import Records
from lmforge.data.stream import StreamReport, file_hash, stream_documents
from lmforge.files import write_json_atomic
from lmforge.tasks.recipe import Log, Prepared
from lmforge.tokenization import TextTokenizer, TokenCache, TokenFiles
from lmforge.training import distributed

SPLITS = ["train", "val", "test"]
TOKENIZER_SAMPLE_CHARS = 50_000_000  # characters of training documents a tokenizer learns from
CHUNK = 10_000  # documents encoded at a time


def prepare_streamed(cfg: Config, run_dir: Path, resume: bool, log: Log) -> Prepared:
    """A generation run's data from a corpus read as a stream: no document list is kept, so
    split_texts is empty; parts["tokens"] are the memory-mapped token files."""
    data_hash = file_hash(cfg.data.path)
    sample_report = StreamReport(Records(source=cfg.data.path, format="stream"))
    sample = [text for _, text in stream_documents(
        cfg.data, sample_report, limit_chars=TOKENIZER_SAMPLE_CHARS, only="train")]
    tokenizer = runs.tokenizer_for_run(cfg, sample, data_hash, run_dir, resume, log)
    del sample
    made = distributed.on_main(lambda: streamed_tokens(cfg, tokenizer, data_hash, log))
    distributed.barrier()
    tokens, report = made or streamed_tokens(cfg, tokenizer, data_hash, lambda _: None)
    log(f"{render.data_summary(report, 'documents')} (read as a stream, split by document "
        "hash)")
    report = report | {"tokens": {name: len(ids) for name, ids in tokens.items()},
                       "token_dtype": tokens["train"].dtype.name,
                       "vocab_size": tokenizer.vocab_size}
    empty: dict[str, list[str]] = {name: [] for name in SPLITS}
    return Prepared(cfg, data_hash, tokenizer, empty, report,
                    {"tokens": tokens, "streamed": True})


def streamed_tokens(
    cfg: Config, tokenizer: TextTokenizer, data_hash: str, log: Log
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(token files of every split, the data report): from the cache when the same corpus was
    streamed with the same cleaning, split and tokenizer before, else streamed now."""
    files = TokenFiles(cfg.data.cache_dir)
    key = TokenCache.key("generation-stream", data_hash, cfg.data.format,
                         cfg.data.text_column, cfg.data.clean, cfg.data.split,
                         tokenizer.fingerprint())
    report_file = files.root / f"{key}.report.json"
    tokens = files.load(key)
    if tokens is not None and report_file.is_file():
        log(f"tokenization: cache hit, not tokenizing again ({files.root / key})")
        return tokens, json.loads(report_file.read_text(encoding="utf-8"))
    progress = StreamReport(Records(source=cfg.data.path, format="stream", data_hash=data_hash))
    pieces = _pieces(stream_documents(cfg.data, progress), tokenizer)
    tokens = files.save_pieces(key, pieces, SPLITS, tokenizer.vocab_size)
    report = progress.as_dict(cfg.data.clean.redact_pii)
    write_json_atomic(report_file, report)
    return tokens, report


def _pieces(documents: Iterator[tuple[str, str]],
            tokenizer: TextTokenizer) -> Iterator[tuple[str, np.ndarray]]:
    """(split, token ids) in generation's layout per split: end-of-text, a document,
    end-of-text, ..., end-of-text; CHUNK documents of a split encoded at a time."""
    waiting: dict[str, list[str]] = {name: [] for name in SPLITS}
    used = set()
    for split, text in documents:
        waiting[split].append(text)
        if len(waiting[split]) >= CHUNK:
            used.add(split)
            yield from ((split, ids) for ids in tokenizer.encode_documents(waiting[split]))
            waiting[split] = []
    eos = np.array([tokenizer.eos_id], dtype=np.int64)
    for split, texts in waiting.items():
        if texts:
            used.add(split)
            yield from ((split, ids) for ids in tokenizer.encode_documents(texts))
        if split in used:
            yield split, eos


def streamed_run_tokens(
    cfg: Config, tokenizer: TextTokenizer, record_hash: str | None
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A streamed run's token files again (for `lmforge evaluate`), and the data check: a
    document's split is a function of its text, so an edited corpus keeps every document that
    was tested in test and never moves one into it from training."""
    data_hash = file_hash(cfg.data.path)
    tokens, _ = streamed_tokens(cfg, tokenizer, data_hash, lambda _: None)
    return tokens, {"source": cfg.data.path, "split_by": "document hash",
                    "changed_since_training": record_hash is not None and record_hash != data_hash}
