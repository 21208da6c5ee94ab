"""`lmforge ensemble`: one bundle from several classification bundles of the same labels, their
probabilities averaged with weights fitted on a validation split (evaluation/fusion.py), each
member scored beside the ensemble."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmforge.bundle import BundleLocation, load, locate_bundle, read_meta
from lmforge.config import CleanConfig, DataConfig, load_config, read_config_file
from lmforge.data import Split, read_labelled
from lmforge.errors import LmforgeError
from lmforge.evaluation.fusion import ROUNDS, fit_weights, fuse
from lmforge.evaluation.leaderboard import scores
from lmforge.evaluation.metrics import encode_labels
from lmforge.runs import read_split_record
from lmforge.tasks.classifiers import check_members, member_name, save_ensemble_bundle

METHOD = ("greedy ensemble selection with replacement on validation log loss "
          f"(Caruana et al. 2004), {ROUNDS} rounds")


def ensemble_bundles(
    targets: list[str | Path], out: Path, data: str | Path | None = None,
    force: bool = False, bootstrap: int = 1000,
) -> dict[str, Any]:
    """Fit the weights on the members' shared validation split (or on `data`: labelled texts
    none of them trained on), write the ensemble bundle at `out`, and return its lmforge.json
    (its "fusion" holds the leaderboard: each member and the ensemble, on val and test)."""
    if len(targets) < 2:
        raise LmforgeError("give two or more runs or bundles to fuse")
    where = [locate_bundle(target) for target in targets]
    names = _unique_names([member_name(w.bundle_dir) for w in where])
    check_members([(str(t), read_meta(w.bundle_dir)) for t, w in zip(targets, where, strict=True)])
    if out.exists() and not force:
        raise LmforgeError(f"{out} already exists; pass --force to replace it, or --out DIR")
    if any(out.resolve() == w.bundle_dir.resolve() for w in where):
        raise LmforgeError(f"--out {out} is one of the members; choose another folder")
    meta = read_meta(where[0].bundle_dir)
    if data is not None:
        val, test, fitted_on, run = _file_split(str(data), meta), None, str(data), None
    else:
        val, test, run = _shared_splits(targets, where)
        fitted_on = f"val split of {where[0].run_dir}"
    labels = meta["labels"]
    predictors = [load(w.bundle_dir, device="cpu") for w in where]
    val_probs = [p.probabilities(val.texts)[0] for p in predictors]
    weights = fit_weights(val_probs, encode_labels(val.labels, labels, f"{fitted_on} labels"))
    test_probs = [p.probabilities(test.texts)[0] for p in predictors] if test else None
    rows = []
    for i, name in enumerate([*names, "ensemble"]):
        member = i < len(names)
        row: dict[str, Any] = {"name": name, "weight": float(weights[i]) if member else 1.0,
                               "val": scores(val.labels, val_probs[i] if member
                                             else fuse(val_probs, weights), labels)}
        if test is not None:
            probs = test_probs[i] if member else fuse(test_probs, weights)
            row["test"] = scores(test.labels, probs, labels, bootstrap)
        rows.append(row)
    rows[-1]["shipped"] = True
    extra = {"fusion": {"method": METHOD, "fitted_on": fitted_on, "n": len(val.texts),
                        "leaderboard": rows}}
    if run is not None:
        extra["run"] = run
    if test is not None:
        extra["metrics"] = {"n": len(test.texts), "accuracy": rows[-1]["test"]["accuracy"],
                            "f1_macro": rows[-1]["test"]["f1_macro"]}
    members = [(name, w.bundle_dir) for name, w in zip(names, where, strict=True)]
    return save_ensemble_bundle(out, members, list(weights), extra)


def _unique_names(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return out


def _file_split(data: str, meta: dict[str, Any]) -> Split:
    cfg = DataConfig(text_column=meta["text_column"], label_column=meta["label_column"],
                     clean=CleanConfig(**meta["clean"]))
    split, _ = read_labelled(data, cfg)
    unknown = sorted(set(split.labels) - set(meta["labels"]))
    if unknown:
        raise LmforgeError(f"{data} holds labels the members do not know: {unknown[:5]} "
                           f"(their labels: {meta['labels']})")
    return split


def _shared_splits(
    targets: list[str | Path], where: list[BundleLocation]
) -> tuple[Split, Split | None, dict[str, Any]]:
    """(val, test, the first member's run) of the split every member's run recorded; refused
    when a member has no run, or the runs split the data differently (the val split of one
    would hold texts another trained on)."""
    records = []
    for target, w in zip(targets, where, strict=True):
        record = read_split_record(w.run_dir)
        if record is None:
            raise LmforgeError(f"{target} has no run directory with splits.json to fit the "
                               "weights on its validation split; pass --data FILE (labelled "
                               "texts none of the members trained on)")
        records.append(record)
    for target, record in zip(targets[1:], records[1:], strict=True):
        if record.keys.get("val") != records[0].keys.get("val") or \
                record.keys.get("test") != records[0].keys.get("test"):
            raise LmforgeError(f"{target} and {targets[0]} were trained on different splits; "
                               "fuse runs of the same data and split, or pass --data FILE")
    run_dir = where[0].run_dir
    cfg = load_config(read_config_file(run_dir / "config.yaml"))
    rows, _ = read_labelled(cfg.data.path, cfg.data)
    found = {}
    for name in ("val", "test"):
        indices, missing = records[0].locate(name, rows.texts)
        if missing:
            raise LmforgeError(f"{cfg.data.path} changed since {run_dir} was trained: {missing} "
                               f"texts of its {name} split are missing; pass --data FILE")
        found[name] = rows.take(indices)
    if not found["val"].texts:
        raise LmforgeError(f"run {run_dir} has no val split (data.split.val is 0); pass "
                           "--data FILE to fit the weights on")
    return found["val"], found["test"] if found["test"].texts else None, \
        read_meta(where[0].bundle_dir).get("run", {"dir": str(run_dir.resolve())})
