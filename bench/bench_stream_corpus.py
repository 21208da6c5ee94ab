"""A generation corpus bigger than memory, prepared as a stream (data.stream): peak RSS and
tokens/s of cleaning, deduplicating, splitting and tokenizing a synthetic corpus of --gb GB
into the token files, beside the same work done in memory (documents read whole, then
tokenized) on a --memory-mb MB slice of it. Each side runs in its own process, so each peak
RSS is its own.

    .venv/bin/python bench/bench_stream_corpus.py [--gb 2] [--memory-mb 200]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = [f"{a}{b}" for a in ("ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "ze", "qu")
         for b in ("n", "r", "st", "la", "mo", "pi", "x", "da", "ke", "wu")]


def write_corpus(path: Path, target_bytes: int, seed: int = 0) -> int:
    """Lines of 10-40 pseudo-words, one in 50 a repeat of an earlier line (dropped as a
    duplicate); returns the number of lines."""
    rng = random.Random(seed)
    written, lines, recent = 0, 0, []
    with open(path, "w", encoding="utf-8") as out:
        while written < target_bytes:
            if recent and rng.random() < 0.02:
                line = rng.choice(recent)
            else:
                line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(10, 40)))
                line += f" {lines}"
                if len(recent) < 1000:
                    recent.append(line)
            out.write(line + "\n")
            written += len(line) + 1
            lines += 1
    return lines


def side(args: argparse.Namespace) -> None:
    """One measured side, in this process: prints a JSON line."""
    from lmforge.config import load_config
    from lmforge.data.documents import prepare_documents
    from lmforge.tasks.streamed_corpus import streamed_tokens
    from lmforge.tokenization import TextTokenizer, TokenFiles

    tokenizer = TextTokenizer.load(Path(args.tokenizer))
    cfg = load_config({"task": "generation", "data": {
        "path": args.corpus, "cache_dir": args.cache,
        "stream": "on" if args.side == "stream" else "off"}})
    start = time.perf_counter()
    if args.side == "stream":
        tokens, _ = streamed_tokens(cfg, tokenizer, f"bench-{time.time()}", lambda _: None)
    else:
        data = prepare_documents(cfg.data)
        splits = {"train": data.train.texts, "val": data.val.texts, "test": data.test.texts}
        tokens = TokenFiles(args.cache).save(f"memory-{time.time()}", splits, tokenizer)
    seconds = time.perf_counter() - start
    n = sum(len(ids) for ids in tokens.values())
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB → MiB
    print(json.dumps({"tokens": n, "seconds": seconds, "peak_rss_mib": rss,
                      "bytes": os.path.getsize(args.corpus)}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gb", type=float, default=2.0)
    parser.add_argument("--memory-mb", type=float, default=200.0)
    parser.add_argument("--side", choices=["stream", "memory"])
    parser.add_argument("--corpus")
    parser.add_argument("--cache")
    parser.add_argument("--tokenizer")
    args = parser.parse_args()
    if args.side:
        side(args)
        return
    from lmforge.tokenization import train_byte_bpe

    root = Path(tempfile.mkdtemp(prefix="lmforge-stream-bench-"))
    big, small = root / "big.txt", root / "small.txt"
    t = time.perf_counter()
    write_corpus(big, int(args.gb * 1e9))
    write_corpus(small, int(args.memory_mb * 1e6))
    print(f"corpora written in {time.perf_counter() - t:.0f} s: {big.stat().st_size / 1e9:.2f} "
          f"GB and {small.stat().st_size / 1e6:.0f} MB", flush=True)
    sample = small.read_text(encoding="utf-8").splitlines()[:20_000]
    tokenizer = train_byte_bpe(sample, 8000)
    tokenizer.save(root / "tokenizer")
    results = {}
    for name, corpus in (("memory", small), ("stream", big)):
        out = subprocess.run(
            [sys.executable, __file__, "--side", name, "--corpus", str(corpus),
             "--cache", str(root / "cache"), "--tokenizer", str(root / "tokenizer")],
            capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
        r = results[name]
        print(f"{name:6s} {r['bytes'] / 1e6:8.0f} MB  {r['tokens'] / 1e6:7.1f} M tokens  "
              f"{r['seconds']:6.0f} s  {r['tokens'] / r['seconds'] / 1e3:7.0f} k tokens/s  "
              f"peak RSS {r['peak_rss_mib']:6.0f} MiB", flush=True)
    ratio = (results["stream"]["tokens"] / results["stream"]["seconds"]) / (
        results["memory"]["tokens"] / results["memory"]["seconds"])
    print(f"stream / memory throughput: {ratio:.2f}; stream peak RSS "
          f"{results['stream']['peak_rss_mib']:.0f} MiB (target under 1024)")


if __name__ == "__main__":
    main()
