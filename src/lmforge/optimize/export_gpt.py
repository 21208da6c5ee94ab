"""Export a generation bundle of lmforge's GPT to ONNX with its KV cache as inputs and outputs,
check ONNX Runtime against PyTorch before writing it, and measure both.

One graph, whose past keys and values have a dynamic length (zero for a prompt), runs the prompt
and every one-token step (models.onnx_generation). Two graphs (prefill, and a step with past)
would hold the weights twice, on disk and in memory, and open two sessions; ONNX Runtime runs
the single graph's empty past (a Concat with a zero-length tensor) at no measurable cost.

The checks: the logits of left-padded prompts of several lengths without a cache; the logits of
the same prompts run half as a prompt and then one token at a time through the cache; and greedy
continuations, token for token, through the decoder `lmforge generate` uses. The result is a
bundle (tokenizer, lmforge.json with "runtime": "onnx") that `lmforge.load` opens as a Generator.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from lmforge.bundle import Generator, load, read_meta
from lmforge.decoding import Sampling, decode_tokens, left_padded
from lmforge.errors import LmforgeError
from lmforge.files import staged_dir, write_json_atomic
from lmforge.models import GPT
from lmforge.models.onnx_generation import (
    ATTENTION_MASK,
    INPUT_IDS,
    LOGITS,
    OnnxGPT,
    past_names,
    present_names,
)
from lmforge.optimize.bundles import REPORT_FILE, write_meta
from lmforge.optimize.export import ONNX_FILE, trace_onnx
from lmforge.optimize.report import bundle_size_mb, count_params
from lmforge.tasks import recipe_of

MAX_ABS_DIFF = 1e-4  # fp32 logits, PyTorch vs ONNX Runtime, per unit of the largest |logit|
CHECK_PROMPTS = 4  # random prompts of different lengths, left-padded into one batch
GREEDY_TOKENS = 16  # new tokens per prompt compared token for token
TIMED_PROMPT, TIMED_TOKENS = 32, 64  # the speed test: batch 1, a prompt, then greedy tokens


class PastCache:
    """What GPT.forward (and the encoder–decoder's decode) takes as its cache while it is traced:
    each layer's keys and values are the past's (graph inputs) and the new ones concatenated,
    kept as the graph's outputs."""

    def __init__(self, past: tuple[torch.Tensor, ...], length: Any) -> None:
        self.past, self.length, self.present = past, length, []

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
        k = torch.cat([self.past[2 * layer], k], dim=2)
        v = torch.cat([self.past[2 * layer + 1], v], dim=2)
        self.present += [k, v]
        return k, v


class GPTWithPast(nn.Module):
    """The GPT's own forward pass with the cache as explicit tensors:
    (input_ids, attention_mask, past...) -> (logits, present...)."""

    def __init__(self, gpt: GPT) -> None:
        super().__init__()
        self.gpt = gpt

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *past: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        cache = PastCache(past, attention_mask.shape[1] - input_ids.shape[1])
        logits = self.gpt(input_ids, attention_mask, cache)
        return (logits, *cache.present)


def export_gpt(gpt: GPT, path: Path, opset: int) -> None:
    """Trace the GPT once (TorchScript exporter) with dynamic batch, new-token and past axes."""
    cfg = gpt.config
    B, P, T, hs = 2, 3, 4, cfg.d_model // cfg.n_heads
    ids = torch.randint(0, cfg.vocab_size, (B, T), generator=torch.Generator().manual_seed(0))
    mask = torch.ones((B, P + T), dtype=torch.long)
    mask[1, :2] = 0  # the graph sees left padding
    past = tuple(torch.zeros(B, cfg.n_heads, P, hs) for _ in range(2 * cfg.n_layers))
    axes = {INPUT_IDS: {0: "batch", 1: "new"}, ATTENTION_MASK: {0: "batch", 1: "total"},
            LOGITS: {0: "batch", 1: "new"}}
    axes.update({name: {0: "batch", 2: "past"} for name in past_names(cfg.n_layers)})
    axes.update({name: {0: "batch", 2: "total"} for name in present_names(cfg.n_layers)})
    trace_onnx(GPTWithPast(gpt.cpu().eval()), (ids, mask, *past), path,
               [INPUT_IDS, ATTENTION_MASK, *past_names(cfg.n_layers)],
               [LOGITS, *present_names(cfg.n_layers)], axes, opset, "the GPT")


def share_tied_embedding(path: Path, name: str = "gpt.tok_emb.weight") -> None:
    """The output layer is the token embedding, which the exporter stores a second time,
    transposed: store it once, and transpose it in the graph (ONNX Runtime folds the Transpose
    when the session opens, so no step pays for it)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    tables = {t.name: t for t in graph.initializer}
    if name not in tables:
        return
    embedding = numpy_helper.to_array(tables[name])
    for table in list(graph.initializer):
        if list(table.dims) == list(embedding.shape[::-1]) and (
            numpy_helper.to_array(table) == embedding.T
        ).all():
            graph.initializer.remove(table)
            graph.node.insert(0, helper.make_node("Transpose", [name], [table.name], perm=[1, 0]))
    onnx.save(model, str(path))


def check_prompts(vocab: int, context: int, seed: int = 0) -> list[list[int]]:
    """CHECK_PROMPTS random prompts of different lengths, leaving room for GREEDY_TOKENS."""
    longest = max(2, min(context - GREEDY_TOKENS, 48))
    rng = torch.Generator().manual_seed(seed)
    lengths = [max(1, longest * (i + 1) // CHECK_PROMPTS) for i in range(CHECK_PROMPTS)]
    return [torch.randint(0, vocab, (n,), generator=rng).tolist() for n in lengths]


def _max_diff(a: torch.Tensor, b: torch.Tensor, real: torch.Tensor) -> float:
    """Max |a - b| over the real (not padding) positions of (B, T, vocab) logits."""
    return float((a - b).abs().amax(-1)[real].max())


def compare(gpt: GPT, onnx: OnnxGPT, prompts: list[list[int]], context: int) -> dict[str, Any]:
    """The three checks of the module's docstring; an LmforgeError if any fails."""
    ids, key_mask = left_padded(prompts, torch.device("cpu"))
    with torch.no_grad():
        reference = gpt(ids, key_mask)
    whole = _max_diff(reference, onnx(ids, key_mask), key_mask)
    half = ids.shape[1] // 2
    cache = onnx.new_cache(len(ids), ids.shape[1])
    steps = [onnx(ids[:, :half], key_mask[:, :half], cache)]
    for t in range(half, ids.shape[1]):
        steps.append(onnx(ids[:, t : t + 1], key_mask[:, : t + 1], cache))
    cached = _max_diff(reference, torch.cat(steps, 1), key_mask)
    greedy = Sampling(temperature=0)
    tokens = [torch.stack(list(decode_tokens(m, prompts, GREEDY_TOKENS, context, greedy,
                                             torch.Generator()))) for m in (gpt, onnx)]
    differ = int((tokens[0] != tokens[1]).any(0).sum())
    # fp32 rounding grows with the logits: a model whose logits reach 100 may differ by 1e-2
    allowed = MAX_ABS_DIFF * max(1.0, float(reference[key_mask.bool()].abs().max()))
    check = {"prompts": len(prompts), "prompt_tokens": [len(p) for p in prompts],
             "max_abs_logit_diff": whole, "max_abs_logit_diff_cached": cached,
             "allowed_abs_logit_diff": allowed,
             "greedy_tokens": int(tokens[0].numel()), "greedy_prompts_differ": differ}
    if max(whole, cached) > allowed or differ:
        raise LmforgeError(
            f"ONNX Runtime disagrees with PyTorch on {len(prompts)} random prompts: max |logit "
            f"difference| {whole:.2e} without the cache and {cached:.2e} with it (allowed "
            f"{allowed:.1e}); greedy continuations differ for {differ} of them; "
            "nothing was written"
        )
    return check


def paired_speed(models: list[nn.Module], prompt: list[int], new_tokens: int, context: int,
                 min_rounds: int = 3, budget_s: float = 3.0) -> list[dict[str, float]]:
    """Batch 1: milliseconds to the first token (the prompt's pass) and tokens per second after
    it, median over rounds in which the models take turns (load from other processes falls on
    all alike), through the decoder `lmforge generate` uses."""
    greedy = Sampling(temperature=0)
    times: list[list[tuple[float, float]]] = [[] for _ in models]
    started, rounds = time.perf_counter(), 0
    while rounds < min_rounds or (time.perf_counter() - started < budget_s and rounds < 20):
        for model, bucket in zip(models, times, strict=True):
            t0 = time.perf_counter()
            first = None
            for _ in decode_tokens(model, [prompt], new_tokens, context, greedy,
                                   torch.Generator()):
                first = first or time.perf_counter()
            bucket.append((first - t0, time.perf_counter() - first))
        rounds += 1
    return [{"first_token_ms_b1": round(1000 * statistics.median(t for t, _ in bucket), 3),
             "tokens_per_s_b1": round((new_tokens - 1) / statistics.median(s for _, s in bucket),
                                      1)}
            for bucket in times]


def refuse(meta: dict[str, Any], bundle_dir: Path) -> None:
    """A pretrained (Hugging Face) causal LM or an adapter is not lmforge's GPT."""
    if meta.get("arch") == "pretrained" or "adapter" in meta:
        raise LmforgeError(
            f"{bundle_dir} holds a pretrained causal LM ({meta.get('base_model') or 'Hugging Face'}"
            "); ONNX export with the KV cache covers lmforge's own GPT (model.arch gpt) only. "
            "Generate with the bundle as it is, or export the model with Hugging Face's own tools"
        )
    if meta.get("arch") != "gpt":
        raise LmforgeError(f"{bundle_dir}: cannot export a generation model of arch "
                           f"'{meta.get('arch')}' to ONNX")


def held_out(bundle_dir: Path, run_dir: Path | None, data: str | Path | None,
             models: list[Any], figures: Callable[[dict[str, Any]], dict[str, Any]],
             size: str) -> dict[str, Any] | None:
    """`figures` of each model's evaluation (the original's, the export's) on the run's test
    split (or `data`'s file), as `lmforge evaluate` computes it, and the report's `size` (how
    much was scored); None with neither."""
    if run_dir is None and data is None:
        return None
    recipe = recipe_of(models[0].meta)
    where = f"test split of {run_dir}" if data is None else str(data)
    scored, data = [], None if data is None else str(data)
    for model in models:
        try:
            report = recipe.evaluate(model, bundle_dir, run_dir, data)
        except LmforgeError as error:  # the run's data gone, say: the export stands without it
            if data is not None:
                raise
            return {"data": where, "not_measured": str(error)}
        scored.append(figures(report))
    return {"data": where, size: report[size], "original": scored[0], "result": scored[1]}


def held_out_loss(bundle_dir: Path, run_dir: Path | None, data: str | Path | None,
                  generators: list[Generator]) -> dict[str, Any] | None:
    """Test loss and perplexity of each generator on the run's test split (or `data`'s
    documents)."""
    return held_out(bundle_dir, run_dir, data, generators,
                    lambda report: {key: report[key] for key in ("test_loss", "perplexity")},
                    "n_tokens")


def export_gpt_bundle(bundle_dir: Path, run_dir: Path | None, out: Path, opset: int,
                      data: str | Path | None = None) -> dict[str, Any]:
    """`lmforge export --format onnx` of a generation bundle: the GPT checked against PyTorch,
    written as a bundle beside compress_report.json (speed, and with a run or `data`, the test
    loss of both)."""
    meta = read_meta(bundle_dir)
    if meta.get("runtime") == "onnx":
        raise LmforgeError(f"{bundle_dir} is already an ONNX bundle")
    refuse(meta, bundle_dir)
    generator = load(bundle_dir, device="cpu")
    gpt, context = generator.model, generator.max_length
    prompts = check_prompts(gpt.config.vocab_size, context)
    with staged_dir(out) as tmp:
        path = tmp / ONNX_FILE
        export_gpt(gpt, path, opset)
        share_tied_embedding(path)
        check = compare(gpt, OnnxGPT(path, meta["architecture"]), prompts, context)
        timed_prompt = check_prompts(gpt.config.vocab_size, context, seed=1)[-1][:TIMED_PROMPT]
        new_tokens = min(TIMED_TOKENS, context - len(timed_prompt))
        threads = torch.get_num_threads()
        speed = paired_speed([gpt, OnnxGPT(path, meta["architecture"], threads)], timed_prompt,
                             new_tokens, context)
        generator.tokenizer.save(tmp)
        write_meta(tmp, {**meta, "runtime": "onnx",
                         "onnx": {"file": ONNX_FILE, "opset": opset, "weights": "fp32",
                                  "kv_cache": "inputs and outputs, one graph"},
                         "derived_from": {"bundle": str(bundle_dir.resolve()),
                                          "operation": "export"}})
        report = {
            "operation": "export to ONNX",
            "original": {"bundle": str(bundle_dir), "size_mb": round(bundle_size_mb(bundle_dir), 3),
                         "params": count_params(gpt), **speed[0]},
            "result": {"bundle": str(out), "size_mb": round(bundle_size_mb(tmp), 3),
                       "params": count_params(OnnxGPT(path, meta["architecture"])),
                       **speed[1]},
            "check": check,
            "threads": threads,
            "latency": (f"batch 1, greedy: a prompt of {len(timed_prompt)} tokens, then "
                        f"{new_tokens} new tokens through the KV cache; median of paired runs"),
        }
        report["eval"] = held_out_loss(bundle_dir, run_dir, data, [generator, load(tmp)])
        write_json_atomic(tmp / REPORT_FILE, report)
    return report


def runtimes_table(report: dict[str, Any], rows: list[tuple[str, str, str]]) -> Table:
    """PyTorch beside ONNX Runtime: a row (name, key, format) of each side's figure."""
    table = Table(title=f"{report['operation']} ({report['threads']} threads; "
                        f"{report['latency']})")
    for column in ("", "PyTorch", "ONNX Runtime"):
        table.add_column(column, justify="left" if not column else "right")
    original, result = report["original"], report["result"]
    for name, key, fmt in rows:
        table.add_row(name, fmt.format(original[key]), fmt.format(result[key]))
    return table


def render_held_out(held_out: dict[str, Any] | None, console: Console, what: str,
                    line: Callable[[dict[str, Any]], str]) -> None:
    """held_out's figures as `line` says them, or why `what` was not measured."""
    if held_out and "not_measured" in held_out:
        console.print(f"{what} not measured: {held_out['not_measured']}", markup=False)
    elif held_out:
        console.print(line(held_out), markup=False)


def render_gpt_report(report: dict[str, Any], console: Console) -> None:
    console.print(runtimes_table(report, [
        ("size (MB)", "size_mb", "{:.2f}"), ("parameters", "params", "{:,}"),
        ("first token (ms)", "first_token_ms_b1", "{:.2f}"),
        ("tokens/s after it", "tokens_per_s_b1", "{:.1f}")]))
    result = report["result"]
    check = report["check"]
    console.print(
        f"ONNX Runtime vs PyTorch (fp32) on {check['prompts']} prompts: max |logit difference| "
        f"{check['max_abs_logit_diff']:.1e} without the KV cache, "
        f"{check['max_abs_logit_diff_cached']:.1e} with it; greedy continuations "
        f"({check['greedy_tokens']} tokens) differ for {check['greedy_prompts_differ']} prompts",
        markup=False)
    render_held_out(report.get("eval"), console, "test loss", lambda held_out: (
        f"{held_out['data']} ({held_out['n_tokens']} tokens): test loss "
        f"{held_out['original']['test_loss']:.4f} (PyTorch), "
        f"{held_out['result']['test_loss']:.4f} (ONNX Runtime)"))
    console.print(f"bundle written to {result['bundle']}", markup=False)
