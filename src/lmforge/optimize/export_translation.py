"""Export a translation bundle of lmforge's encoder–decoder to ONNX: an encoder graph that
returns the cross-attention keys and values of every decoder layer, and a decoder graph with the
self-attention KV cache as inputs and outputs (models.onnx_translation), checked against PyTorch
before it is written, and measured beside it.

The checks, on sample sentences (random token sequences of several lengths): the decoder's
logits for a target run whole and one token at a time through the cache; and the greedy and beam
translations, token for token, through the search `lmforge translate` uses. The result is a
bundle (tokenizer, lmforge.json with "runtime": "onnx") that `lmforge.load` opens as a
Translator.

int8 (`lmforge compress --quantize int8`: ONNX Runtime's dynamic quantization of both graphs,
after the fp32 export passed its checks) is checked the same way with a stated tolerance: logits
within INT8_MAX_DIFF of the largest |logit|, and the greedy and beam translations of at least
INT8_AGREEMENT of the sources PyTorch's token for token; a model that int8 changes more is
refused, and nothing is written.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from torch import nn

from lmforge.bundle import load, read_meta
from lmforge.decoding import beam_search, greedy_search
from lmforge.errors import LmforgeError
from lmforge.files import staged_dir, write_json_atomic
from lmforge.models import EncoderDecoder
from lmforge.models.onnx_generation import INPUT_IDS, LOGITS, past_names, present_names
from lmforge.models.onnx_translation import (
    DECODER_FILE,
    ENCODER_FILE,
    SOURCE_IDS,
    SOURCE_MASK,
    OnnxEncoderDecoder,
    cross_names,
)
from lmforge.optimize.bundles import REPORT_FILE, write_meta
from lmforge.optimize.export import trace_onnx
from lmforge.optimize.export_gpt import (
    MAX_ABS_DIFF,
    PastCache,
    held_out,
    render_held_out,
    runtimes_table,
    share_tied_embedding,
)
from lmforge.optimize.quantize import quantize_int8
from lmforge.optimize.report import bundle_size_mb, count_params
from lmforge.tasks.classification import pad_batch
from lmforge.tasks.translation import Translator

CHECK_SOURCES = 8  # random sources of different lengths, right-padded into one batch
INT8_MAX_DIFF = 0.05  # int8 logits vs PyTorch's, per unit of the largest |logit|
INT8_AGREEMENT = 7 / 8  # the least share of sources that int8 must translate as PyTorch does
CHECK_TOKENS = 16  # new tokens at most per translation compared token for token
BATCH_SIZES = (1, 8)  # the speed test: sentences per second translating this many at a time


class EncoderWithMemoryKV(nn.Module):
    """(source_ids, source_mask) -> each decoder layer's cross-attention keys and values."""

    def __init__(self, model: EncoderDecoder) -> None:
        super().__init__()
        self.model = model

    def forward(self, src_ids: torch.Tensor, src_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        memory_kv = self.model.memory_kv(self.model.encode(src_ids, src_mask))
        return tuple(t for kv in memory_kv for t in kv)


class DecoderWithPast(nn.Module):
    """The decoder's own pass with the cross keys and values and the cache as explicit tensors:
    (input_ids, source_mask, cross..., past...) -> (logits, present...)."""

    def __init__(self, model: EncoderDecoder) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, src_mask: torch.Tensor, *tensors: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        n = 2 * self.model.config.n_layers
        cross, past = tensors[:n], tensors[n:]
        cache = PastCache(past, past[0].shape[2])
        memory_kv = list(zip(cross[0::2], cross[1::2], strict=True))
        logits = self.model.decode(input_ids, memory_kv, src_mask, cache)
        return (logits, *cache.present)


def export_encoder_decoder(model: EncoderDecoder, directory: Path, opset: int) -> None:
    """Trace the encoder and decoder graphs into `directory` (ENCODER_FILE, DECODER_FILE) with
    dynamic batch, source, new-token and past axes."""
    model = model.cpu().eval()
    cfg = model.config
    B, S, P, T, hs = 2, 5, 3, 2, cfg.d_model // cfg.n_heads
    rng = torch.Generator().manual_seed(0)
    src = torch.randint(0, cfg.vocab_size, (B, S), generator=rng)
    src_mask = torch.ones((B, S), dtype=torch.long)
    src_mask[1, -2:] = 0  # the graphs see source padding
    names = cross_names(cfg.n_layers)
    trace_onnx(EncoderWithMemoryKV(model), (src, src_mask), directory / ENCODER_FILE,
               [SOURCE_IDS, SOURCE_MASK], names,
               {SOURCE_IDS: {0: "batch", 1: "source"}, SOURCE_MASK: {0: "batch", 1: "source"},
                **{name: {0: "batch", 2: "source"} for name in names}},
               opset, "the encoder of the encoder–decoder")
    with torch.no_grad():
        cross = EncoderWithMemoryKV(model)(src, src_mask)
    past = tuple(torch.zeros(B, cfg.n_heads, P, hs) for _ in range(2 * cfg.n_layers))
    ids = torch.randint(0, cfg.vocab_size, (B, T), generator=rng)
    axes = {INPUT_IDS: {0: "batch", 1: "new"}, SOURCE_MASK: {0: "batch", 1: "source"},
            LOGITS: {0: "batch", 1: "new"}}
    axes.update({name: {0: "batch", 2: "source"} for name in names})
    axes.update({name: {0: "batch", 2: "past"} for name in past_names(cfg.n_layers)})
    axes.update({name: {0: "batch", 2: "total"} for name in present_names(cfg.n_layers)})
    path = directory / DECODER_FILE
    trace_onnx(DecoderWithPast(model), (ids, src_mask, *cross, *past), path,
               [INPUT_IDS, SOURCE_MASK, *names, *past_names(cfg.n_layers)],
               [LOGITS, *present_names(cfg.n_layers)], axes, opset,
               "the decoder of the encoder–decoder")
    share_tied_embedding(path, "model.encoder.tok_emb.weight")


def check_sources(config: Any, seed: int = 0) -> list[list[int]]:
    """CHECK_SOURCES random sources of different lengths, without padding or end tokens."""
    rng = torch.Generator().manual_seed(seed)
    longest = max(2, min(config.max_length, 32))
    lengths = [max(1, longest * (i + 1) // CHECK_SOURCES) for i in range(CHECK_SOURCES)]
    special = torch.tensor([config.pad_id, config.eos_id, config.bos_id])
    sources = []
    for n in lengths:
        ids = torch.randint(0, config.vocab_size, (n,), generator=rng)
        sources.append(torch.where(torch.isin(ids, special), (ids + 3) % config.vocab_size,
                                   ids).tolist())
    return sources


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def compare(model: EncoderDecoder, onnx: OnnxEncoderDecoder, sources: list[list[int]],
            beam_size: int, length_penalty: float, weights: str = "fp32") -> dict[str, Any]:
    """The checks of the module's docstring, with fp32's or int8's tolerance; an LmforgeError
    if any fails."""
    cfg = model.config
    batch = pad_batch([np.array(s) for s in sources], cfg.pad_id)
    src, mask = batch["input_ids"], batch["attention_mask"]
    rng = torch.Generator().manual_seed(1)
    length = min(cfg.max_length, CHECK_TOKENS)
    targets = torch.randint(0, cfg.vocab_size, (len(sources), length), generator=rng)
    targets[:, 0] = cfg.bos_id
    with torch.no_grad():
        reference = model(src, mask, targets)
    whole = _max_diff(reference, onnx(src, mask, targets))
    memory_kv, cache = onnx.encode(src, mask), onnx.new_cache(len(sources), length)
    steps = [onnx.decode(targets[:, t:t + 1], memory_kv, mask, cache) for t in range(length)]
    cached = _max_diff(reference, torch.cat(steps, 1))
    differ = {}
    for name, search, args in (("greedy", greedy_search, ()),
                               ("beam", beam_search, (beam_size, length_penalty))):
        outputs = [search(m, src, mask, CHECK_TOKENS, *args) for m in (model, onnx)]
        differ[name] = sum(a.tokens != b.tokens for a, b in zip(*outputs, strict=True))
    # fp32 rounding grows with the logits: a model whose logits reach 100 may differ by 1e-2
    int8 = weights == "int8"
    allowed = (INT8_MAX_DIFF if int8 else MAX_ABS_DIFF) * max(1.0, float(reference.abs().max()))
    allowed_differ = round(len(sources) * (1 - INT8_AGREEMENT)) if int8 else 0
    check = {"weights": weights, "sources": len(sources),
             "source_tokens": [len(s) for s in sources],
             "max_abs_logit_diff": whole, "max_abs_logit_diff_cached": cached,
             "allowed_abs_logit_diff": allowed, "max_new_tokens": CHECK_TOKENS,
             "beam_size": beam_size, "greedy_sources_differ": differ["greedy"],
             "beam_sources_differ": differ["beam"], "allowed_sources_differ": allowed_differ}
    if max(whole, cached) > allowed or max(differ.values()) > allowed_differ:
        advice = "; int8 changes this model too much: export it as fp32 (`lmforge export " \
                 "--format onnx`)" if int8 else ""
        raise LmforgeError(
            f"ONNX Runtime ({weights}) disagrees with PyTorch on {len(sources)} random sources: "
            f"max |logit difference| {whole:.2e} without the cache and {cached:.2e} with it "
            f"(allowed {allowed:.1e}); greedy translations differ for {differ['greedy']} of "
            f"them, beam translations ({beam_size} beams) for {differ['beam']} (allowed "
            f"{allowed_differ}){advice}; nothing was written"
        )
    return check


def paired_speed(translators: list[Translator], texts: list[str],
                 batch_sizes: tuple[int, ...] = BATCH_SIZES, min_rounds: int = 2,
                 budget_s: float = 3.0) -> list[dict[str, float]]:
    """Sentences per second translating `texts` (the translators' own decoding settings) at each
    batch size, median over rounds in which the translators take turns (load from other
    processes falls on all alike)."""
    times: list[dict[int, list[float]]] = [{b: [] for b in batch_sizes} for _ in translators]
    started, rounds = time.perf_counter(), 0
    while rounds < min_rounds or (time.perf_counter() - started < budget_s and rounds < 20):
        for translator, bucket in zip(translators, times, strict=True):
            for size in batch_sizes:
                t0 = time.perf_counter()
                translator.translate(texts, batch_size=size)
                bucket[size].append(time.perf_counter() - t0)
        rounds += 1
    return [{f"sentences_per_s_b{size}": round(len(texts) / statistics.median(bucket[size]), 2)
             for size in batch_sizes} for bucket in times]


def refuse(meta: dict[str, Any], bundle_dir: Path) -> None:
    """A pretrained (Hugging Face) seq2seq model is not lmforge's encoder–decoder."""
    if meta.get("arch") == "pretrained" or "adapter" in meta:
        base = meta.get("base_model") or "Hugging Face"
        raise LmforgeError(
            f"{bundle_dir} holds a pretrained seq2seq model ({base}); ONNX export covers "
            "lmforge's own encoder–decoder (model.arch transformer) "
            "only. Translate with the bundle as it is, or export the model with Hugging Face's "
            "own tools (optimum)"
        )
    if meta.get("arch") != "transformer":
        raise LmforgeError(f"{bundle_dir}: cannot export a translation model of arch "
                           f"'{meta.get('arch')}' to ONNX")


def export_translation_bundle(bundle_dir: Path, run_dir: Path | None, out: Path, opset: int,
                              data: str | Path | None = None, int8: bool = False
                              ) -> dict[str, Any]:
    """`lmforge export --format onnx` of a translation bundle (with `int8`, `lmforge compress
    --quantize int8`): the encoder–decoder checked against PyTorch, written as a bundle beside
    compress_report.json (its speed and PyTorch's, and with a run or `data`, the test BLEU and
    chrF of both)."""
    meta = read_meta(bundle_dir)
    if meta.get("runtime") == "onnx":
        raise LmforgeError(f"{bundle_dir} is already an ONNX bundle")
    refuse(meta, bundle_dir)
    translator = load(bundle_dir, device="cpu")
    model, settings = translator.model, translator.defaults
    sources = check_sources(model.config)
    texts = [translator.tokenizer.decode(ids) for ids in sources]
    beam_size = max(2, int(settings.get("beam_size", 4)))
    length_penalty = float(settings.get("length_penalty", 1))
    files = {"file": ENCODER_FILE, "decoder_file": DECODER_FILE}
    threads = torch.get_num_threads()
    with staged_dir(out) as tmp:
        def exported() -> OnnxEncoderDecoder:
            return OnnxEncoderDecoder(tmp / ENCODER_FILE, tmp / DECODER_FILE, model.config,
                                      threads)

        export_encoder_decoder(model, tmp, opset)
        checks = [compare(model, exported(), sources, beam_size, length_penalty)]
        onnx = {**files, "opset": opset, "weights": "fp32",
                "kv_cache": "self-attention: inputs and outputs of the decoder; "
                            "cross-attention: the encoder's outputs"}
        if int8:
            for name in files.values():
                quantize_int8(tmp / name, tmp / f"int8-{name}")
                (tmp / f"int8-{name}").replace(tmp / name)
            checks.append(compare(model, exported(), sources, beam_size, length_penalty,
                                  "int8"))
            onnx.update(weights="int8",
                        quantization="dynamic int8 (onnxruntime quantize_dynamic, QInt8 weights)")
        speed = paired_speed([translator, Translator(exported(), translator.tokenizer, meta)],
                             texts)
        translator.tokenizer.save(tmp)
        operation = "quantize int8" if int8 else "export"
        write_meta(tmp, {**meta, "runtime": "onnx", "onnx": onnx,
                         "derived_from": {"bundle": str(bundle_dir.resolve()),
                                          "operation": operation}})
        report = {
            "operation": "quantize to int8 (ONNX Runtime)" if int8 else "export to ONNX",
            "original": {"bundle": str(bundle_dir), "size_mb": round(bundle_size_mb(bundle_dir), 3),
                         "params": count_params(model), **speed[0]},
            "result": {"bundle": str(out), "size_mb": round(bundle_size_mb(tmp), 3),
                       **speed[1]},
            "check": checks[-1],
            "threads": threads,
            "latency": (f"{len(texts)} random sentences, the bundle's decoding (beam size "
                        f"{settings.get('beam_size', 4)}); median of paired runs"),
        }
        if int8:
            report["check_fp32"] = checks[0]
        report["eval"] = held_out(
            bundle_dir, run_dir, data, [translator, load(tmp, device="cpu")],
            lambda scored: {"bleu": scored["model"]["bleu"], "chrf": scored["model"]["chrf"],
                            "seconds": scored["seconds"]}, "n")
        write_json_atomic(tmp / REPORT_FILE, report)
    return report


def render_translation_report(report: dict[str, Any], console: Console) -> None:
    speeds = sorted((k for k in report["original"] if k.startswith("sentences_per_s_b")),
                    key=lambda k: int(k.rpartition("_b")[2]))
    console.print(runtimes_table(report, [
        ("size (MB)", "size_mb", "{:.2f}"),
        *((f"sentences/s, batch {k.rpartition('_b')[2]}", k, "{:.1f}") for k in speeds)]))
    for check in filter(None, (report.get("check_fp32"), report["check"])):
        console.print(
            f"ONNX Runtime ({check['weights']}) vs PyTorch on {check['sources']} sources: max "
            f"|logit difference| {check['max_abs_logit_diff']:.1e} without the KV cache, "
            f"{check['max_abs_logit_diff_cached']:.1e} with it (allowed "
            f"{check['allowed_abs_logit_diff']:.1e}); translations (up to "
            f"{check['max_new_tokens']} tokens) differ for {check['greedy_sources_differ']} "
            f"sources greedy, {check['beam_sources_differ']} with {check['beam_size']} beams",
            markup=False)
    render_held_out(report.get("eval"), console, "test BLEU", lambda scored: (
        f"{scored['data']} ({scored['n']} sentences): " + "; ".join(
            f"BLEU {side['bleu']:.2f}, chrF {side['chrf']:.2f} in {side['seconds']:.1f} s "
            f"({runtime})" for runtime, side in (("PyTorch", scored["original"]),
                                                  ("ONNX Runtime", scored["result"])))))
    console.print(f"bundle written to {report['result']['bundle']}", markup=False)
