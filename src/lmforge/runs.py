"""The run directory: creating it, the files every task writes there (JSON reports, the run's
own tokenizer, splits.json), and the check that an evaluation scores only texts the model never
trained on."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lmforge.config import Config
from lmforge.data.split import SplitRecord
from lmforge.errors import LmforgeError
from lmforge.files import PREVIOUS, STAGED, write_json_atomic
from lmforge.tokenization import (
    TextTokenizer,
    TokenCache,
    auto_kind,
    build_tokenizer,
    unspaced_share,
)
from lmforge.training import distributed
from lmforge.training.checkpoint import last_step

TOKENIZER_DIR = "tokenizer"
SPLITS_FILE = "splits.json"  # which texts each split held: see SplitRecord

Log = Callable[[str], None]  # where a verb's progress notes go (one line each)


def default_run_dir(config: Any) -> Path:
    if isinstance(config, (str, Path)):
        return Path("runs") / Path(config).stem
    return Path("runs") / "run"


def free_run_dir(base: Path) -> Path:
    """`base`, or `base-2`, `base-3`, ... if taken: a new run never overwrites an old one."""
    if not base.exists():
        return base
    n = 2
    while base.with_name(f"{base.name}-{n}").exists():
        n += 1
    return base.with_name(f"{base.name}-{n}")


def has_checkpoint(run_dir: Path) -> bool:
    return last_step(run_dir) is not None


# What a run writes in its directory (a folder being swapped in also as <name>.tmp, <name>.prev;
# a file being written as a hidden .<name>.<random>.tmp): see DESIGN.md, "The run directory".
RUN_ENTRIES = {"config.yaml", "data_report.json", "splits.json", TOKENIZER_DIR, "checkpoints",
               "pretrain", "metrics.jsonl", "tb", "eval.json", "test_predictions.jsonl",
               "provenance.json", "model", "cv", "cv.json"}


def is_unfinished_start(run_dir: Path) -> bool:
    """A run directory lmforge began and nothing came of: its config.yaml and only what a run
    writes, but no checkpoint (of training or pre-training) and no bundle. A failed start (a
    wrong column, a config edited after) leaves one; rerunning may replace it."""
    entries = {entry.name for entry in run_dir.iterdir()}
    ours = {name for name in entries if name.removesuffix(STAGED).removesuffix(PREVIOUS)
            in RUN_ENTRIES or (name.startswith(".") and name.endswith(STAGED))}
    bundle = any((run_dir / f"model{suffix}" / "lmforge.json").is_file()
                 for suffix in ("", STAGED, PREVIOUS))
    return ("config.yaml" in entries and ours == entries and not bundle
            and last_step(run_dir) is None and last_step(run_dir / "pretrain") is None)


def create_run_dir(run_dir: Path, resume: bool, force: bool, log: Log) -> None:
    """Make the run's directory: empty, or the existing one when resuming. An existing run is
    replaced only with `force`, unless it is an unfinished start (is_unfinished_start)."""
    if resume:
        if not has_checkpoint(run_dir):
            raise LmforgeError(f"--resume given but {run_dir} has no checkpoint to resume from")
        return
    if run_dir.exists() and any(run_dir.iterdir()):
        if not force and not is_unfinished_start(run_dir):
            raise LmforgeError(
                f"run directory {run_dir} already exists; pass --resume to continue it or "
                "--force to replace it"
            )
        if not force:
            log(f"note: {run_dir} holds a run that stopped before its first checkpoint; "
                "starting it again")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)


def tokenizer_for_run(
    cfg: Config, train_texts: list[str], data_hash: str, run_dir: Path, resume: bool, log: Log
) -> TextTokenizer:
    """Train (or load) the run's tokenizer on the training texts only, once for all ranks: rank
    0 makes it, every rank loads the run's copy, so a resume never retrains a different one."""

    def make() -> None:
        saved = run_dir / TOKENIZER_DIR
        if resume and saved.exists():
            return
        pretrained = cfg.model.pretrained if cfg.model.arch == "pretrained" else None
        cache = Path(cfg.data.cache_dir).expanduser() / "tokenizers"
        settings = cfg.tokenizer
        if settings.kind == "auto" and pretrained is None and settings.pretrained is None:
            share = unspaced_share(train_texts)
            settings = settings.model_copy(update={"kind": auto_kind(share)})
            log(f"tokenizer: {settings.kind} (tokenizer.kind auto; {share:.0%} of the text is in "
                "Chinese or Japanese script)")
        key = TokenCache.key(data_hash, cfg.data.clean, cfg.data.split, cfg.tokenizer, pretrained,
                             settings.kind)
        cached = cache / key
        if pretrained is None and cfg.tokenizer.pretrained is None and cached.exists():
            log(f"tokenizer: reusing the one trained earlier on this data ({cached})")
            tokenizer = TextTokenizer.load(cached)
        else:
            tokenizer = build_tokenizer(settings, train_texts, pretrained,
                                        cfg.model.revision, cfg.model.trust_remote_code)
            if tokenizer.hf is None:
                tokenizer.save(cached)
        tokenizer.save(saved)

    distributed.on_main(make)
    distributed.barrier()
    return TextTokenizer.load(run_dir / TOKENIZER_DIR)


def write_split_record(run_dir: Path, data_hash: str, splits: dict[str, list[str]]) -> None:
    write_json_atomic(run_dir / SPLITS_FILE, SplitRecord.of(data_hash, splits).to_json())


def read_split_record(run_dir: Path | None) -> SplitRecord | None:
    """The run's splits.json; None without a run, or for a run written before it existed."""
    path = run_dir / SPLITS_FILE if run_dir is not None else None
    if path is None or not path.is_file():
        return None
    try:
        return SplitRecord.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, KeyError, TypeError) as error:
        raise LmforgeError(f"{path} is damaged ({type(error).__name__}: {error}); evaluate "
                           "with --data FILE") from None


# --- the data check of an evaluation (report["data_check"]) -----------------------------------


def unrecorded_check(run_dir: Path, source: str, data_hash: str) -> dict[str, Any]:
    """The data check of a run written before splits.json: its data is split again, which is
    the same split only if the data has not changed since provenance.json recorded its hash."""
    provenance_file = run_dir / "provenance.json"
    recorded = (json.loads(provenance_file.read_text(encoding="utf-8"))
                if provenance_file.is_file() else {})
    trained = recorded.get("data", {}).get("sha256")
    return {"source": source, "data_hash": data_hash, "split_record": False,
            "changed_since_training": trained is not None and trained != data_hash,
            "trained_data_hash": trained}


def recorded_check(
    record: SplitRecord, source: str, data_hash: str, missing: int, dropped: int
) -> dict[str, Any]:
    return {"source": source, "data_hash": data_hash, "split_record": True,
            "changed_since_training": data_hash != record.data_hash,
            "trained_data_hash": record.data_hash, "test_texts": len(record.keys["test"]),
            "test_texts_missing": missing, "dropped_seen_in_training": dropped}


def refuse_changed_test_split(check: dict[str, Any]) -> None:
    if check.get("test_texts_missing"):
        raise LmforgeError(
            f"{check['source']} changed since training (sha256 {check['data_hash'][:12]}, was "
            f"{check['trained_data_hash'][:12]}): {check['test_texts_missing']} of the "
            f"{check['test_texts']} test texts are missing; evaluate with --data FILE for a new "
            "test set"
        )


def leak_check(
    texts: list[str], record: SplitRecord, source: str, run_dir: Path
) -> tuple[list[int], dict[str, Any]]:
    """(indices of the texts the run did not train on (train or val), the data check)."""
    unseen = record.unseen(texts)
    if not unseen:
        raise LmforgeError(f"{source}: all {len(texts)} texts were in the training data of "
                           f"{run_dir}; nothing is left to evaluate on")
    return unseen, {"source": source, "split_record": True,
                    "dropped_seen_in_training": len(texts) - len(unseen)}


def data_check_notes(check: dict[str, Any]) -> list[str]:
    """What the user should know about the data evaluated on, one line each."""
    notes = []
    if check.get("changed_since_training") and check["split_record"]:
        notes.append(f"{check['source']} changed since training: the {check['test_texts']} "
                     "texts of the run's test split were found in it and scored")
    elif check.get("changed_since_training"):
        notes.append(f"warning: {check['source']} changed since training (sha256 "
                     f"{check['data_hash'][:12]}, was {check['trained_data_hash'][:12]}) and the "
                     "run has no splits.json: it was split again, so the test split differs and "
                     "may hold texts the model trained on")
    if check.get("dropped_seen_in_training"):
        notes.append(f"{check['dropped_seen_in_training']} texts were not scored: the model "
                     "trained on them (train or val split)")
    return notes
