"""The assistant's speed on a synthetic 100,000-entry knowledge base: index build time (the
encoder over every question, BM25 indexing) and per-query latency p50/p99 of the shipped
assistant's `answer` (cleaning, query encoding, BM25, exact dense inner product, fusion,
confidence, top answers), with the query encoder's share and retrieval alone beside it.

The questions are 3 to 8 words drawn from the words (jieba) of the built-in shop FAQ's
questions, a third with a product code, so that BM25 sees a realistic Chinese vocabulary; the
queries are questions of the knowledge base with one word dropped and one replaced.

Wall times depend on what else runs on the machine; CPU times (this process, all its threads)
much less, so both are printed. `--encode-sample N` encodes only N questions for real and
gives the others random unit vectors (the dense search costs the same), and extrapolates the
encoder's build time from the sample: said so in the output.

    OMP_NUM_THREADS=2 .venv/bin/python bench/bench_assistant.py [--entries 100000]
        [--queries 300] [--encoder auto] [--encode-sample 100000]
"""

from __future__ import annotations

import argparse
import os
import time

import jieba
import numpy as np

from lmforge.config import CleanConfig
from lmforge.data.knowledge_bases import SHOP_FAQ, read_builtin_faq
from lmforge.data.records import Records
from lmforge.models.retrieval import sentence_encoder
from lmforge.tasks.assistant import Assistant, KnowledgeBase, choose_encoder


class Clock:
    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def lap(self) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        out = (wall - self.wall, cpu - self.cpu)
        self.wall, self.cpu = wall, cpu
        return out


class TimedEncoder:
    """The assistant's encoder, timing each call (wall and CPU seconds) for its share."""

    def __init__(self, encoder: object) -> None:
        self.encoder, self.seconds, self.cpu_seconds = encoder, 0.0, 0.0

    def encode(self, texts: list[str]) -> np.ndarray:
        clock = Clock()
        out = self.encoder.encode(texts)
        wall, cpu = clock.lap()
        self.seconds += wall
        self.cpu_seconds += cpu
        return out


def synthetic_questions(n: int, rng: np.random.Generator) -> tuple[list[str], list[str]]:
    faq = read_builtin_faq(SHOP_FAQ, Records(source=SHOP_FAQ, format="builtin"))
    words = sorted({w for _, cells in faq.rows for w in jieba.lcut(cells["question"])
                    if w.strip() and not w.isspace()})
    questions = []
    for i in range(n):
        drawn = list(rng.choice(words, int(rng.integers(3, 9))))
        if i % 3 == 0:
            drawn.insert(int(rng.integers(0, len(drawn))), f"型号{rng.integers(1000, 99999)}")
        questions.append("".join(drawn))
    return questions, words


def percentiles(values: list[float]) -> str:
    ms = 1000 * np.array(values)
    return f"p50 {np.percentile(ms, 50):.1f} ms, p99 {np.percentile(ms, 99):.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--encoder", default="auto")
    parser.add_argument("--encode-sample", type=int, default=None,
                        help="encode only this many questions for real (default: all)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    questions, words = synthetic_questions(args.entries, rng)
    name = choose_encoder(args.encoder, questions)
    print(f"{args.entries} entries, encoder {name}, OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS')}, load average {os.getloadavg()}")

    encoder = sentence_encoder(name)
    encoder.encode(questions[:16])  # warm-up: the model's first call
    sample = min(args.encode_sample or args.entries, args.entries)
    clock = Clock()
    vectors = encoder.encode(questions[:sample])
    encode_wall, encode_cpu = clock.lap()
    scale = args.entries / sample
    if sample < args.entries:
        rest = rng.standard_normal((args.entries - sample, vectors.shape[1])).astype(np.float32)
        rest /= np.linalg.norm(rest, axis=1, keepdims=True)
        vectors = np.concatenate([vectors, rest])
    kb = KnowledgeBase(questions, list(range(args.entries)),
                       [f"answer {i}" for i in range(args.entries)],
                       [f"entry-{i}" for i in range(args.entries)])
    meta = {"scoring": {"weight": 0.5, "coef": [4.0, 4.0, 0.5, 8.0, 1.0], "intercept": -6.0,
                        "threshold": 0.5},
            "clean": CleanConfig().model_dump(), "handoff_phrases": ["人工"],
            "max_query_chars": 512}
    clock.lap()
    assistant = Assistant(kb, vectors, TimedEncoder(encoder), meta)
    index_wall, index_cpu = clock.lap()
    said = " (extrapolated from " + f"{sample} questions)" if sample < args.entries else ""
    print(f"build: encoder {encode_wall * scale:.0f} s wall, {encode_cpu * scale:.0f} s CPU"
          f"{said}; BM25 index {index_wall:.0f} s wall, {index_cpu:.0f} s CPU; total "
          f"{encode_wall * scale + index_wall:.0f} s wall")

    queries = []
    for i in rng.choice(args.entries, args.queries, replace=False):
        cut = jieba.lcut(questions[i])
        if len(cut) > 2:
            cut.pop(int(rng.integers(0, len(cut))))
        cut[int(rng.integers(0, len(cut)))] = str(rng.choice(words))
        queries.append("".join(cut))
    assistant.answer(queries[:3])  # warm-up
    total, total_cpu, retrieval, retrieval_cpu = [], [], [], []
    for query in queries:
        assistant.encoder.seconds = assistant.encoder.cpu_seconds = 0.0
        clock.lap()
        assistant.answer([query])
        wall, cpu = clock.lap()
        total.append(wall)
        total_cpu.append(cpu)
        retrieval.append(wall - assistant.encoder.seconds)
        retrieval_cpu.append(cpu - assistant.encoder.cpu_seconds)
    print(f"per query ({args.queries} queries, one at a time): answer {percentiles(total)} "
          f"wall ({percentiles(total_cpu)} CPU); retrieval without the query encoder "
          f"{percentiles(retrieval)} wall ({percentiles(retrieval_cpu)} CPU); load average "
          f"after {os.getloadavg()}")


if __name__ == "__main__":
    main()
