"""`lmforge export BUNDLE --merge`: an adapter bundle's LoRA weights folded into its base's, as a
standalone bundle that `transformers` loads as it is (and that export, compress and serve take
like any pretrained model's bundle)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmforge.bundle import check_bundle, read_meta, save_bundle
from lmforge.errors import LmforgeError
from lmforge.models.adapters import load_adapter_model, merged
from lmforge.tokenization import TextTokenizer


def refuse_adapter(bundle_dir: Path, what: str) -> None:
    """An adapter bundle holds no whole model for `what` (ONNX export, int8, pruning)."""
    meta = read_meta(bundle_dir)
    if "adapter" in meta:
        raise LmforgeError(
            f"{bundle_dir} holds an adapter over {meta['adapter']['base']['name']}, not a whole "
            f"model, which {what} needs: merge it first (`lmforge export {bundle_dir} --merge "
            "--out DIR`) and give it the merged bundle"
        )


def merge_bundle(bundle_dir: Path, out: Path) -> dict[str, Any]:
    """Write the merged bundle at `out`; returns its lmforge.json."""
    meta = read_meta(bundle_dir)
    if "adapter" not in meta:
        raise LmforgeError(f"{bundle_dir} holds no adapter (its lmforge.json has no 'adapter'); "
                           "--merge folds an adapter bundle into its base")
    check_bundle(bundle_dir)  # its task's checks: lmforge.json, tokenizer, peft's files
    model = merged(load_adapter_model(bundle_dir, meta, quantized=False))
    merged_meta = {key: value for key, value in meta.items()
                   if key not in ("adapter", "lmforge_version")}
    merged_meta["merged_from"] = {"bundle": str(bundle_dir.resolve()),
                                  "adapter": meta["adapter"]}
    save_bundle(out, model, TextTokenizer.load(bundle_dir), merged_meta)
    return merged_meta
