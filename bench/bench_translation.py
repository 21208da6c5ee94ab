"""The translation quickstart on 2 CPU cores: lmforge's encoder–decoder trained on the built-in
Chinese–English sentences (builtin:hsk-zh-en) with translation's defaults, its test BLEU and
chrF (beam search) beside copying the source and TF-IDF retrieval, the training time, and
decoding speed: greedy with and without the KV cache, and beam search.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_translation.py [--fast] [--out DIR] [--set K=V]

(torch takes its threads from OMP_NUM_THREADS: on a machine busy with other jobs one thread can
be faster than two.)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import lmforge
import lmforge.pipeline as pipeline
from lmforge.data.pairs import prepare_pairs
from lmforge.decoding import greedy_search
from lmforge.tasks.classification import pad_batch
from lmforge.tasks.translation import encode_sources


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fast", action="store_true", help="the quickstart's --fast schedule")
    parser.add_argument("--out", default=None, help="the run directory (default: a temp one)")
    parser.add_argument("--set", action="append", default=[], help="config overrides")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="bench-translation-")) / "run"
    config = pipeline.quickstart_config(args.fast, task="translation")
    started = time.perf_counter()
    result = pipeline.train(config, out=out, overrides=args.set, force=True, show_progress=False)
    train_seconds = time.perf_counter() - started
    report = result.eval_report
    print(f"\ntrained {result.steps} steps in {train_seconds:.0f} s")
    for name, scores in [("model", report["model"]), *report["baselines"].items()]:
        ci = scores["ci95"]
        print(f"{name:12s} BLEU {scores['bleu']:6.2f} [{ci['bleu'][0]:.2f}, {ci['bleu'][1]:.2f}]"
              f"  chrF {scores['chrf']:6.2f} [{ci['chrf'][0]:.2f}, {ci['chrf'][1]:.2f}]")
    retrieval = report["baselines"]["retrieval"]["ci95"]["bleu"]
    above = report["model"]["ci95"]["bleu"][0] > retrieval[1]
    print(f"model's BLEU interval above retrieval's: {above}")
    decoding(result.bundle_dir, report)
    (out / "bench.json").write_text(json.dumps({"train_seconds": train_seconds, **report},
                                               ensure_ascii=False, indent=1))


def decoding(bundle_dir: Path, report: dict) -> None:
    """Test sentences per second: greedy with the KV cache against without, and beam 4."""
    translator = lmforge.load(bundle_dir)
    data = prepare_pairs(pipeline.quickstart_config(False, task="translation").data, 9.0)
    sources = data.test.sources[:200]
    ids = encode_sources(translator.tokenizer, sources, translator.max_length)
    batch = pad_batch(ids, translator.tokenizer.pad_id)
    timings = {}
    for name, use_cache in (("greedy, KV cache", True), ("greedy, no cache", False)):
        started = time.perf_counter()
        greedy_search(translator.model, batch["input_ids"], batch["attention_mask"], 64,
                      use_cache=use_cache)
        timings[name] = time.perf_counter() - started
    started = time.perf_counter()
    translator.translate(sources, beam_size=4)
    timings["beam 4, KV cache (batches of 32)"] = time.perf_counter() - started
    for name, seconds in timings.items():
        print(f"{name:34s} {len(sources) / seconds:7.1f} sentences/s")
    ratio = timings["greedy, no cache"] / timings["greedy, KV cache"]
    print(f"KV cache speed-up (greedy, {len(sources)} sentences in one batch): {ratio:.2f}x")


if __name__ == "__main__":
    main()
