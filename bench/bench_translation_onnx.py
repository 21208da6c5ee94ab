"""lmforge's encoder–decoder through ONNX Runtime (`lmforge export`: an encoder graph and a
decoder graph with its KV cache) beside PyTorch, on a small model trained on the built-in
Chinese–English sentences: test sentences per second at batch 1 and 8, greedy and beam search,
on one thread, the two runtimes taking turns so that load from other processes falls on both
alike; whether the translations of the test sentences are the same; and the same for int8
(`lmforge compress --quantize int8`: ONNX Runtime's dynamic quantization of both graphs).

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_translation_onnx.py [--bundle DIR]
        [--epochs 6] [--sentences 64] [--threads 1]

Without --bundle it trains the quickstart's model (`train.epochs` set by --epochs) first.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

import lmforge
import lmforge.pipeline as pipeline
from lmforge.data.pairs import prepare_pairs
from lmforge.errors import LmforgeError
from lmforge.models.onnx_translation import DECODER_FILE, ENCODER_FILE, OnnxEncoderDecoder
from lmforge.optimize.export_translation import paired_speed
from lmforge.tasks.translation import Translator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bundle", default=None, help="a trained translation bundle")
    parser.add_argument("--epochs", type=int, default=6, help="training epochs without --bundle")
    parser.add_argument("--sentences", type=int, default=64, help="test sentences timed")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--budget", type=float, default=20.0, help="seconds of timing per case")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    folder = Path(tempfile.mkdtemp(prefix="bench-translation-onnx-"))
    bundle = Path(args.bundle) if args.bundle else train(folder, args.epochs)
    original = lmforge.load(bundle, device="cpu")
    translators = {"PyTorch": original}
    for name, make in (("ONNX fp32", lambda out: lmforge.export(bundle, out=out, force=True)),
                       ("ONNX int8", lambda out: lmforge.compress(bundle, quantize="int8",
                                                                  out=out, force=True))):
        started = time.perf_counter()
        try:
            check = make(folder / name.split()[1])["check"]
        except LmforgeError as error:
            print(f"{name}: refused: {error}")
            continue
        print(f"{name}: written and checked in {time.perf_counter() - started:.1f} s; max "
              f"|logit difference| {check['max_abs_logit_diff_cached']:.1e} (allowed "
              f"{check['allowed_abs_logit_diff']:.1e})")
        model = OnnxEncoderDecoder(folder / name.split()[1] / ENCODER_FILE,
                                   folder / name.split()[1] / DECODER_FILE,
                                   original.model.config, args.threads)
        translators[name] = Translator(model, original.tokenizer, original.meta)
    data = prepare_pairs(pipeline.quickstart_config(False, task="translation").data, 9.0)
    sentences = data.test.sources[:args.sentences]
    print(f"{len(sentences)} test sentences, {args.threads} thread(s) for every runtime")
    for beam in (1, 4):
        for translator in translators.values():
            translator.defaults = {**translator.defaults, "beam_size": beam}
        outputs = {name: [t.text for t in translator.translate(sentences)]
                   for name, translator in translators.items()}
        speeds = dict(zip(translators, paired_speed(list(translators.values()), sentences,
                                                    budget_s=args.budget), strict=True))
        for size in (1, 8):
            key = f"sentences_per_s_b{size}"
            print(f"beam {beam}, batch {size}: " + ", ".join(
                f"{name} {speed[key]:.1f}/s ({speed[key] / speeds['PyTorch'][key]:.2f}x)"
                for name, speed in speeds.items()))
        for name in list(translators)[1:]:
            same = sum(a == b for a, b in zip(outputs[name], outputs["PyTorch"], strict=True))
            print(f"beam {beam}, {name}: {same} of {len(sentences)} translations as PyTorch's")


def train(folder: Path, epochs: int) -> Path:
    config = pipeline.quickstart_config(False, task="translation")
    started = time.perf_counter()
    result = pipeline.train(config, out=folder / "run", overrides=[f"train.epochs={epochs}"],
                            force=True, show_progress=False)
    model = result.eval_report["model"]
    print(f"trained {result.steps} steps in {time.perf_counter() - started:.0f} s: test BLEU "
          f"{model['bleu']:.2f}, chrF {model['chrf']:.2f}")
    return result.bundle_dir


if __name__ == "__main__":
    main()
