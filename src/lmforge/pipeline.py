"""The verbs as Python functions: train, evaluate, predict, init, quickstart.

Each composes the stages (data, tokenization, task, training, evaluation, bundle); the CLI and
users' scripts both call these.
"""

from __future__ import annotations

import io
import json
import shutil
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from lmforge import provenance
from lmforge.bundle import META_FILE, Predictor, load, read_meta, save_bundle
from lmforge.config import (
    CleanConfig,
    Config,
    DataConfig,
    GenerateConfig,
    dump_config,
    load_config,
    read_config_file,
)
from lmforge.data import (
    PreparedData,
    Split,
    detect_columns,
    prepare_classification_data,
    read_labelled,
    read_texts,
)
from lmforge.data.documents import (
    PreparedDocuments,
    detect_text_column,
    prepare_documents,
    read_eval_documents,
)
from lmforge.data.split import SplitRecord
from lmforge.errors import LmforgeError
from lmforge.evaluation import (
    build_eval_report,
    perplexity,
    render_table,
    token_counts,
    token_nll,
    unigram_nll,
)
from lmforge.models.transformer import EncoderForMaskedLM
from lmforge.tasks import classification as task
from lmforge.tasks import generation
from lmforge.tasks.pretraining import make_mlm_collate, mlm_loss
from lmforge.tokenization import (
    TextTokenizer,
    TokenCache,
    TokenFiles,
    build_tokenizer,
    document_stream,
)
from lmforge.training import distributed, fit, seed_everything
from lmforge.training.checkpoint import find_checkpoint, load_checkpoint

TOKENIZER_DIR = "tokenizer"
SPLITS_FILE = "splits.json"  # which texts each split held: see SplitRecord


@dataclass
class RunResult:
    run_dir: Path
    bundle_dir: Path
    eval_report: dict[str, Any] | None
    resumed_from: int | None
    steps: int


def _console() -> Console:
    return Console(stderr=True, width=max(120, Console(stderr=True).width))


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def _prepare_run_dir(run_dir: Path, resume: bool, force: bool) -> None:
    if resume:
        if find_checkpoint(run_dir / "checkpoints" / "last") is None:
            raise LmforgeError(f"--resume given but {run_dir} has no checkpoint to resume from")
        return
    if run_dir.exists() and any(run_dir.iterdir()):
        if not force:
            raise LmforgeError(
                f"run directory {run_dir} already exists; pass --resume to continue it or "
                "--force to replace it"
            )
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)


def _write_split_record(run_dir: Path, data: PreparedData | PreparedDocuments) -> None:
    splits = {"train": data.train.texts, "val": data.val.texts, "test": data.test.texts}
    _write_json(run_dir / SPLITS_FILE, SplitRecord.of(data.data_hash, splits).to_json())


def _read_split_record(run_dir: Path | None) -> SplitRecord | None:
    """The run's splits.json; None without a run, or for a run written before it existed."""
    path = run_dir / SPLITS_FILE if run_dir is not None else None
    if path is None or not path.is_file():
        return None
    try:
        return SplitRecord.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, KeyError, TypeError) as error:
        raise LmforgeError(f"{path} is damaged ({type(error).__name__}: {error}); evaluate "
                           "with --data FILE") from None


def _quantiles(values: Iterable[int]) -> dict[str, float]:
    arr = np.fromiter(values, dtype=np.int64)
    if arr.size == 0:
        return {}
    q = np.quantile(arr, [0.5, 0.9, 0.99])
    return {
        "min": int(arr.min()),
        "p50": float(q[0]),
        "p90": float(q[1]),
        "p99": float(q[2]),
        "max": int(arr.max()),
    }


def _tokenizer_for_run(
    cfg: Config, data: PreparedData | PreparedDocuments, run_dir: Path, resume: bool,
    console: Console,
) -> TextTokenizer:
    """The run keeps its own tokenizer copy, so a resume never retrains a different one."""
    saved = run_dir / TOKENIZER_DIR
    if resume and saved.exists():
        return TextTokenizer.load(saved)
    pretrained = cfg.model.pretrained if cfg.model.arch == "pretrained" else None
    cache = Path(cfg.data.cache_dir).expanduser() / "tokenizers"
    key = TokenCache.key(data.data_hash, cfg.data.clean, cfg.data.split, cfg.tokenizer, pretrained)
    cached = cache / key
    if pretrained is None and cfg.tokenizer.pretrained is None and cached.exists():
        console.print(f"tokenizer: reusing the one trained earlier on this data ({cached})")
        tokenizer = TextTokenizer.load(cached)
    else:
        tokenizer = build_tokenizer(
            cfg.tokenizer,
            data.train.texts,
            pretrained,
            cfg.model.revision,
            cfg.model.trust_remote_code,
        )
        if tokenizer.hf is None:
            tokenizer.save(cached)
    tokenizer.save(saved)
    return tokenizer


def _encode_splits(
    cfg: Config, data: PreparedData, tokenizer: TextTokenizer, console: Console
) -> tuple[dict[str, task.TokenizedSplit], dict[str, int]]:
    cache = TokenCache(cfg.data.cache_dir)
    key = cache.key(
        data.data_hash,
        cfg.data.clean,
        cfg.data.split,
        tokenizer.fingerprint(),
        cfg.model.max_length,
        data.label_names,
    )
    splits = {"train": data.train, "val": data.val, "test": data.test}
    hit = cache.load(key)
    if hit is not None:
        ids, truncated = hit
        console.print(f"tokenization: cache hit, not tokenizing again ({cache.root / key}.npz)")
    else:
        ids, truncated = {}, {}
        for name, split in splits.items():
            encoded = tokenizer.encode(split.texts, cfg.model.max_length)
            ids[name], truncated[name] = encoded.ids, encoded.n_truncated
        cache.save(key, ids, truncated)
    index = {label: i for i, label in enumerate(data.label_names)}
    out = {}
    for name, split in splits.items():
        labels = np.array([index[label] for label in split.labels], dtype=np.int64)
        out[name] = task.TokenizedSplit(ids[name], labels)
    return out, truncated


def _bundle_meta(cfg: Config, data: PreparedData, model: Any, run_dir: Path) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "task": cfg.task,
        "arch": cfg.model.arch,
        "labels": data.label_names,
        "text_column": cfg.data.text_column,
        "label_column": cfg.data.label_column,
        "clean": cfg.data.clean.model_dump(),
        "max_length": cfg.model.max_length,
        "run": {"dir": str(run_dir.resolve()), "data": cfg.data.path, "data_hash": data.data_hash},
    }
    if cfg.model.arch == "transformer":
        meta["architecture"] = model.config.to_dict()
    else:
        meta["pretrained"] = {"name": cfg.model.pretrained, "revision": cfg.model.revision}
    return meta


def _evaluate_split(
    predictor: Predictor, split: Split, train: Split | None, cfg: Config, seed: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Metrics on `split` beside the baselines (fitted on `train`), and per-text predictions."""
    predictions = predictor.predict_batch(split.texts)
    probs = np.array(
        [[row["probs"][label] for label in predictor.labels] for row in predictions.rows]
    )
    use_baselines = cfg.eval.baselines and train is not None
    report = build_eval_report(
        gold=split.labels,
        pred=[row["label"] for row in predictions.rows],
        probs=probs,
        labels=predictor.labels,
        train_texts=train.texts if train else [],
        train_labels=train.labels if train else [],
        test_texts=split.texts,
        config=cfg.eval.model_copy(update={"baselines": use_baselines}),
        seed=seed,
    )
    rows = [
        {"text": row["text"], "gold": gold, "predicted": row["label"], "probs": row["probs"]}
        for row, gold in zip(predictions.rows, split.labels, strict=True)
    ]
    return report, rows


def _default_run_dir(config: Any) -> Path:
    if isinstance(config, (str, Path)):
        return Path("runs") / Path(config).stem
    return Path("runs") / "run"


@dataclass
class _Prepared:
    """What a run trains on: the resolved config, data, tokenizer and encoded splits."""

    cfg: Config
    data: PreparedData
    tokenizer: TextTokenizer
    splits: dict[str, task.TokenizedSplit]


def _prepare(cfg: Config, run_dir: Path, resume: bool, console: Console) -> _Prepared:
    """Data, tokenizer and token ids; rank 0 writes, other ranks read what it wrote."""
    data = prepare_classification_data(cfg.data)
    console.print(
        f"data: {data.report['rows_read']} rows read, {len(data.train.texts)} train / "
        f"{len(data.val.texts)} val / {len(data.test.texts)} test, labels {data.label_names}"
    )
    distributed.on_main(lambda: _tokenizer_for_run(cfg, data, run_dir, resume, console))
    distributed.barrier()
    tokenizer = TextTokenizer.load(run_dir / TOKENIZER_DIR)
    encoded = distributed.on_main(lambda: _encode_splits(cfg, data, tokenizer, console))
    splits, truncated = encoded or _encode_splits(cfg, data, tokenizer, Console(quiet=True))
    report = dict(data.report)
    report["length_tokens"] = _quantiles(len(x) for s in splits.values() for x in s.ids)
    report["truncated_to_max_length"] = truncated
    if distributed.is_main():
        _write_json(run_dir / "data_report.json", report)
        _write_split_record(run_dir, data)
    return _Prepared(cfg, data, tokenizer, splits)


def _fit_classifier(
    run: _Prepared, run_dir: Path, resume: bool, show_progress: bool, console: Console
) -> tuple[Any, Any]:
    cfg, splits = run.cfg, run.splits
    seed_everything(cfg.train.seed)
    model = task.build_model(cfg.model, run.tokenizer, run.data.label_names)
    seed_everything(cfg.train.seed + distributed.rank())  # distinct dropout per rank
    if cfg.classification.pretrain_steps and cfg.model.arch == "transformer":
        _pretrain(run, model, run_dir / "pretrain", resume, show_progress, console)
    weights = None
    if cfg.classification.class_weights == "balanced":
        weights = task.balanced_class_weights(splits["train"].labels, len(run.data.label_names))
    pad = run.tokenizer.pad_id
    result = fit(
        model,
        splits["train"],
        task.make_collate(pad, run.tokenizer.mask_id, cfg.classification.token_dropout,
                          run.tokenizer.special_ids),
        task.make_loss(weights),
        task.make_val_metrics(splits["val"], pad) if len(splits["val"]) else None,
        cfg.train,
        run_dir,
        resume=resume,
        metric_mode="min" if "loss" in cfg.train.early_stopping_metric else "max",
        show_progress=show_progress,
        lengths=np.array([len(x) for x in splits["train"].ids]),
    )
    if result.best_dir is not None:
        load_checkpoint(result.best_dir, model, with_state=False)
        console.print(
            f"best checkpoint: step {result.state.best_step} "
            f"(val {cfg.train.early_stopping_metric} {result.state.best_metric:.4f})"
        )
    return model, result


def _pretrain(
    run: _Prepared, model: Any, pretrain_dir: Path, resume: bool, show_progress: bool,
    console: Console,
) -> None:
    """Masked-LM pre-training of `model`'s encoder on the training texts (never val or test).

    It is a run of its own under run_dir/pretrain, with checkpoints, so a resume finishes it
    or skips it when it is complete.
    """
    cfg, own, tokenizer = run.cfg.train, run.cfg.classification, run.tokenizer
    if tokenizer.mask_id is None:
        raise LmforgeError("classification.pretrain_steps needs a tokenizer with a [MASK] token")
    mlm = EncoderForMaskedLM(model.encoder, model.config)
    pretrain_cfg = cfg.model_copy(update={
        "max_steps": own.pretrain_steps, "lr": own.pretrain_lr or cfg.lr,
        "eval_every": max(1, own.pretrain_steps // 5), "early_stopping_patience": None,
    })
    last = pretrain_dir / "checkpoints" / "last"
    found = find_checkpoint(last) if resume else None
    if found is not None and found[1] >= own.pretrain_steps:
        load_checkpoint(last, mlm, with_state=False)
        console.print(f"pre-training: complete in {pretrain_dir}, not repeated")
        return
    console.print(f"pre-training: {own.pretrain_steps} masked-LM steps on the training texts")
    if distributed.is_main():
        pretrain_dir.mkdir(parents=True, exist_ok=True)
    train_ids = run.splits["train"]
    collate = make_mlm_collate(tokenizer.pad_id, tokenizer.mask_id, tokenizer.vocab_size,
                               [tokenizer.pad_id, tokenizer.mask_id, *tokenizer.special_ids])
    fit(mlm, train_ids, collate, mlm_loss, None, pretrain_cfg, pretrain_dir,
        resume=found is not None, show_progress=show_progress,
        lengths=np.array([len(x) for x in train_ids.ids]))


def _finish(run: _Prepared, model: Any, run_dir: Path, console: Console) -> dict | None:
    """Test evaluation, predictions, bundle and provenance: rank 0 only."""
    cfg, data = run.cfg, run.data
    meta = _bundle_meta(cfg, data, model, run_dir)
    eval_report = None
    if data.test.texts:
        predictor = Predictor(model, run.tokenizer, meta)
        eval_report, rows = _evaluate_split(predictor, data.test, data.train, cfg, cfg.train.seed)
        _write_json(run_dir / "eval.json", eval_report)
        with open(run_dir / "test_predictions.jsonl", "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        meta["metrics"] = {k: eval_report[k] for k in ("n", "accuracy", "f1_macro")}
    save_bundle(run_dir / "model", model, run.tokenizer, meta)
    _write_json(run_dir / "provenance.json", provenance.collect(cfg.data.path, data.data_hash))
    if eval_report is not None:
        render_table(eval_report, console, title=f"Test split of {run_dir}")
    else:
        console.print(
            "no test split (data.split.test is 0): evaluate with "
            f"`lmforge evaluate {run_dir} --data FILE`"
        )
    console.print(f"run written to {run_dir}; bundle at {run_dir / 'model'}")
    return eval_report


def train(
    config: str | Path | dict[str, Any] | Config,
    out: str | Path | None = None,
    overrides: list[str] | None = None,
    resume: bool = False,
    force: bool = False,
    show_progress: bool = True,
) -> RunResult:
    """Train a model from a config (a path, a mapping or a Config) into a run directory.

    Under torchrun every rank calls this; rank 0 alone writes files and prints. When torchrun
    restarts failed workers (--max-restarts), the run resumes from its last checkpoint.
    """
    cfg = load_config(config, overrides)
    run_dir = Path(out) if out else _default_run_dir(config)
    distributed.init(cfg.train.device)
    console = _console() if distributed.is_main() else Console(quiet=True)
    if distributed.restart_count() > 0 and find_checkpoint(run_dir / "checkpoints" / "last"):
        resume, force = True, False
        console.print(f"restarted by torchrun (restart {distributed.restart_count()}): resuming")

    def create_run_dir() -> None:
        _prepare_run_dir(run_dir, resume, force)
        (run_dir / "config.yaml").write_text(dump_config(cfg), encoding="utf-8")

    distributed.on_main(create_run_dir)
    if cfg.task == "generation":
        return _train_generation(cfg, run_dir, resume, show_progress, console)
    run = _prepare(cfg, run_dir, resume, console)
    model, result = _fit_classifier(run, run_dir, resume, show_progress, console)
    eval_report = distributed.on_main(lambda: _finish(run, model, run_dir, console))
    distributed.shutdown()
    return RunResult(run_dir, run_dir / "model", eval_report, result.resumed_from,
                     result.state.step)


def _locate(target: str | Path) -> tuple[Path, Path | None]:
    """(bundle dir, run dir or None) from a run directory or a bundle."""
    target = Path(target)
    if not target.exists():
        raise LmforgeError(f"not found: {target}")
    if (target / META_FILE).is_file():
        run = Path(read_meta(target).get("run", {}).get("dir", ""))
        return target, run if (run / "config.yaml").is_file() else None
    if (target / "model" / META_FILE).is_file():
        return target / "model", target
    raise LmforgeError(f"{target} is neither a run directory nor a bundle (no {META_FILE})")


def _unrecorded_check(run_dir: Path, source: str, data_hash: str) -> dict[str, Any]:
    """The data check of a run written before splits.json: its data is split again, which is
    the same split only if the data has not changed since provenance.json recorded its hash."""
    provenance_file = run_dir / "provenance.json"
    recorded = (json.loads(provenance_file.read_text(encoding="utf-8"))
                if provenance_file.is_file() else {})
    trained = recorded.get("data", {}).get("sha256")
    return {"source": source, "data_hash": data_hash, "split_record": False,
            "changed_since_training": trained is not None and trained != data_hash,
            "trained_data_hash": trained}


def _recorded_check(
    record: SplitRecord, source: str, data_hash: str, missing: int, dropped: int
) -> dict[str, Any]:
    return {"source": source, "data_hash": data_hash, "split_record": True,
            "changed_since_training": data_hash != record.data_hash,
            "trained_data_hash": record.data_hash, "test_texts": len(record.keys["test"]),
            "test_texts_missing": missing, "dropped_seen_in_training": dropped}


def _refuse_changed_test_split(check: dict[str, Any]) -> None:
    if check.get("test_texts_missing"):
        raise LmforgeError(
            f"{check['source']} changed since training (sha256 {check['data_hash'][:12]}, was "
            f"{check['trained_data_hash'][:12]}): {check['test_texts_missing']} of the "
            f"{check['test_texts']} test texts are missing; evaluate with --data FILE for a new "
            "test set"
        )


def _data_check_notes(check: dict[str, Any]) -> list[str]:
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


def _classification_run_splits(
    cfg: Config, run_dir: Path, record: SplitRecord | None, need_test: bool
) -> tuple[Split, Split, dict[str, Any]]:
    """(train, test, data check) of a run as at training time. With splits.json: the rows of
    the run's data whose texts each split held, in split order, and no text of train or val
    in test; refused (with need_test) when test texts are missing. Without it (older runs):
    the data split again."""
    source = cfg.data.path
    if record is None:
        prepared = prepare_classification_data(cfg.data)
        return (prepared.train, prepared.test,
                _unrecorded_check(run_dir, source, prepared.data_hash))
    rows, report = read_labelled(source, cfg.data)
    test_rows, missing = record.locate("test", rows.texts)
    test = rows.take(test_rows)
    unseen = record.unseen(test.texts)
    check = _recorded_check(record, source, report["data_hash"], missing,
                            len(test.texts) - len(unseen))
    if need_test:
        _refuse_changed_test_split(check)
    return rows.take(record.locate("train", rows.texts)[0]), test.take(unseen), check


def _leak_check(
    texts: list[str], record: SplitRecord, source: str, run_dir: Path
) -> tuple[list[int], dict[str, Any]]:
    """(indices of the texts the run did not train on (train or val), the data check)."""
    unseen = record.unseen(texts)
    if not unseen:
        raise LmforgeError(f"{source}: all {len(texts)} texts were in the training data of "
                           f"{run_dir}; nothing is left to evaluate on")
    return unseen, {"source": source, "split_record": True,
                    "dropped_seen_in_training": len(texts) - len(unseen)}


def evaluate(
    target: str | Path, data: str | Path | None = None, show: bool = True
) -> dict[str, Any]:
    """Re-evaluate a run's model on its test split, or on a new labelled file (`data`).

    The run's test split is the one it was trained beside (splits.json), even if its data file
    was edited since; texts the model trained on are never scored (report["data_check"])."""
    bundle_dir, run_dir = _locate(target)
    if read_meta(bundle_dir).get("task") == "generation":
        return _evaluate_generation(bundle_dir, run_dir, data, show)
    predictor = load(bundle_dir)
    cfg = load_config(read_config_file(run_dir / "config.yaml")) if run_dir else Config()
    record = _read_split_record(run_dir)
    train, check = None, {}
    if run_dir is not None:
        train, test, check = _classification_run_splits(cfg, run_dir, record, data is None)
    if data is not None:
        data_cfg = DataConfig(
            text_column=predictor.meta["text_column"],
            label_column=predictor.meta["label_column"],
            clean=CleanConfig(**predictor.meta["clean"]),
        )
        split, _ = read_labelled(str(data), data_cfg)
        check = {"source": str(data), "split_record": record is not None}
        if record is not None:
            unseen, check = _leak_check(split.texts, record, str(data), run_dir)
            split = split.take(unseen)
        out_dir = run_dir or bundle_dir
        out_path = out_dir / f"eval-{Path(data).stem}.json"
        title = str(data)
    else:
        if run_dir is None:
            raise LmforgeError(
                f"{bundle_dir} has no run directory with a test split; "
                "pass --data FILE with labelled texts"
            )
        if not test.texts:
            raise LmforgeError(f"run {run_dir} has no test split; pass --data FILE")
        split, out_path, title = test, None, f"Test split of {run_dir}"
    report, _ = _evaluate_split(predictor, split, train, cfg, cfg.train.seed)
    report["data_check"] = check
    if out_path is not None:
        _write_json(out_path, report)
    if show:
        console = _console()
        for note in _data_check_notes(check):
            console.print(note, markup=False)
        render_table(report, console, title=title)
        if out_path is not None:
            console.print(f"written to {out_path}")
    return report


def predict(
    bundle: str | Path, input: str | Path, output: str | Path | None = None
) -> dict[str, int]:
    """Predict every text of `input` ('-' for stdin) into JSONL at `output` (stdout if None)."""
    predictor = load(_locate(bundle)[0])
    if not isinstance(predictor, Predictor):
        raise LmforgeError(f"{bundle} holds a generation model; use `lmforge generate`")
    if str(input) == "-":
        texts = [line.rstrip("\n") for line in sys.stdin]
    else:
        texts, _ = read_texts(str(input), predictor.meta["text_column"])
    predictions = predictor.predict_batch(texts)
    sink = open(output, "w", encoding="utf-8") if output else sys.stdout  # noqa: SIM115
    try:
        for row in predictions.rows:
            sink.write(json.dumps(row, ensure_ascii=False) + "\n")
    finally:
        if output:
            sink.close()
    stats = {"texts": len(texts), "truncated": predictions.n_truncated}
    print(
        f"{stats['texts']} texts predicted; {stats['truncated']} truncated to "
        f"{predictor.max_length} tokens",
        file=sys.stderr,
    )
    return stats


def init_config(task_name: str, data: str | Path) -> str:
    """A starter config (YAML) for `data`, with its text and label columns detected."""
    if task_name == "generation":
        corpus = DataConfig(path=str(data), **detect_text_column(str(data)))
        header = f"# lmforge config: `lmforge train {Path(data).stem}.yaml`\n"
        return header + dump_config(Config(task="generation", data=corpus))
    if task_name != "classification":
        raise LmforgeError(f"unknown task '{task_name}'; available: classification, generation")
    detected = detect_columns(str(data))
    cfg = Config(task=task_name, data=DataConfig(path=str(data), **detected))
    return f"# lmforge config: `lmforge train {Path(data).stem}.yaml`\n" + dump_config(cfg)


def quickstart_config(fast: bool = False) -> Config:
    """The built-in sentiment corpus, lmforge's encoder, a schedule that fits the time budget.

    The encoder is narrower than the general default (128 wide, dropout 0.2): on these ~14,000
    short reviews the 256-wide one overfits within two epochs; see bench/RESULTS.md.
    """
    steps = 400 if fast else 1500
    return load_config({
        "model": {"d_model": 128, "d_ff": 512, "n_heads": 4, "n_layers": 2, "dropout": 0.2},
        "train": {"max_steps": steps, "eval_every": steps // 5, "batch_size": 32},
    })


def _free_run_dir(base: Path) -> Path:
    if not base.exists():
        return base
    n = 2
    while base.with_name(f"{base.name}-{n}").exists():
        n += 1
    return base.with_name(f"{base.name}-{n}")


def quickstart(
    out: str | Path | None = None, fast: bool = False, task: str = "classification"
) -> RunResult:
    """The whole pipeline on the built-in dataset; never overwrites an earlier quickstart.
    task generation trains a small GPT on the reviews' texts and prints samples."""
    if task not in ("classification", "generation"):
        raise LmforgeError(f"unknown task '{task}'; available: classification, generation")
    name = "quickstart" if task == "classification" else "quickstart-generation"
    run_dir = Path(out) if out else _free_run_dir(Path("runs") / name)
    if task == "generation":
        return _quickstart_generation(run_dir, fast)
    return train(quickstart_config(fast), out=run_dir)


def export(
    bundle: str | Path,
    format: str = "onnx",
    out: str | Path | None = None,
    opset: int | None = None,
    data: str | Path | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Export a classification bundle to ONNX (a bundle run by ONNX Runtime), checked against
    PyTorch and measured beside it; returns compress_report.json's content."""
    from lmforge import optimize

    if format != "onnx":
        raise LmforgeError(f"unknown export format '{format}'; available: onnx")
    bundle_dir, run_dir = _locate(bundle)
    target = Path(out) if out else optimize.default_out(bundle_dir, "onnx")
    optimize.check_out(target, bundle_dir, force)
    source = optimize.load_source(bundle_dir, run_dir, data)
    report = optimize.export_bundle(source, target, opset or optimize.DEFAULT_OPSET)
    optimize.render_report(report, _console())
    return report


def compress(
    bundle: str | Path,
    quantize: str | None = None,
    prune: float | None = None,
    finetune_steps: int = 0,
    distill: str | Path | dict[str, Any] | None = None,
    out: str | Path | None = None,
    data: str | Path | None = None,
    force: bool = False,
    temperature: float = 2.0,
    alpha: float = 0.5,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Quantize (int8), prune or distill a classification bundle into a new bundle, measured
    beside the original; returns compress_report.json's content."""
    from lmforge import optimize

    given = {"--quantize": quantize, "--prune": prune, "--distill": distill}
    chosen = [flag for flag, value in given.items() if value is not None]
    if len(chosen) != 1:
        got = f" (got {' and '.join(chosen)})" if chosen else ""
        raise LmforgeError(
            f"pass one of --quantize int8, --prune AMOUNT, --distill STUDENT_CONFIG{got}"
        )
    if quantize is not None and quantize != "int8":
        raise LmforgeError(f"--quantize {quantize} is not available; use --quantize int8")
    if prune is not None:
        optimize.check_amount(prune)
    elif finetune_steps:
        raise LmforgeError("--finetune-steps goes with --prune")
    if isinstance(distill, (str, Path)) and not Path(distill).is_file():
        raise LmforgeError(f"student config not found: {distill}")
    bundle_dir, run_dir = _locate(bundle)
    if quantize:
        suffix = "int8"
    else:
        suffix = "distilled" if distill is not None else f"pruned{round(100 * prune)}"
    target = Path(out) if out else optimize.default_out(bundle_dir, suffix)
    optimize.check_out(target, bundle_dir, force)
    source = optimize.load_source(bundle_dir, run_dir, data)
    if quantize:
        report = optimize.quantize_bundle(source, target)
    elif prune is not None:
        report = optimize.prune_bundle(source, target, prune, finetune_steps, show_progress)
    else:
        report = optimize.distill_bundle(source, distill, target, temperature, alpha, show_progress)
    optimize.render_report(report, _console())
    return report


# --- generation: train, evaluate and generate with a causal LM ---------------------------------

QUICKSTART_PROMPTS = ["这本书", "物流很快，", "质量"]


@dataclass
class _PreparedText:
    """What a generation run trains on: the config, documents, tokenizer and token files."""

    cfg: Config
    data: PreparedDocuments
    tokenizer: TextTokenizer
    tokens: dict[str, np.ndarray]  # split -> memory-mapped token ids


def _token_files(
    cfg: Config, data: PreparedDocuments, tokenizer: TextTokenizer, console: Console
) -> dict[str, np.ndarray]:
    files = TokenFiles(cfg.data.cache_dir)
    key = TokenCache.key("generation", data.data_hash, cfg.data.format, cfg.data.text_column,
                         cfg.data.clean, cfg.data.split, tokenizer.fingerprint())
    tokens = files.load(key)
    if tokens is not None:
        console.print(f"tokenization: cache hit, not tokenizing again ({files.root / key})")
        return tokens
    splits = {"train": data.train.texts, "val": data.val.texts, "test": data.test.texts}
    return files.save(key, splits, tokenizer)


def _prepare_generation(
    cfg: Config, run_dir: Path, resume: bool, console: Console
) -> _PreparedText:
    """Documents, tokenizer and token files; rank 0 writes, other ranks read what it wrote."""
    data = prepare_documents(cfg.data)
    sizes = data.report["split_sizes"]
    console.print(
        f"data: {data.report['documents_read']} documents read, {sizes['train']} train / "
        f"{sizes['val']} val / {sizes['test']} test (split by {data.split_by})"
    )
    distributed.on_main(lambda: _tokenizer_for_run(cfg, data, run_dir, resume, console))
    distributed.barrier()
    tokenizer = TextTokenizer.load(run_dir / TOKENIZER_DIR)
    tokens = distributed.on_main(lambda: _token_files(cfg, data, tokenizer, console))
    distributed.barrier()
    tokens = tokens or _token_files(cfg, data, tokenizer, Console(quiet=True))
    window = cfg.model.max_length + 1
    if len(tokens["train"]) < window:
        raise LmforgeError(
            f"{cfg.data.path}: the training split holds {len(tokens['train'])} tokens, fewer "
            f"than one context window of {window} (model.max_length + 1); add text or lower "
            "model.max_length"
        )
    report = data.report | {
        "tokens": {name: len(ids) for name, ids in tokens.items()},
        "token_dtype": tokens["train"].dtype.name,
        "vocab_size": tokenizer.vocab_size,
    }
    if distributed.is_main():
        _write_json(run_dir / "data_report.json", report)
        _write_split_record(run_dir, data)
    return _PreparedText(cfg, data, tokenizer, tokens)


def _fit_generator(
    run: _PreparedText, run_dir: Path, resume: bool, show_progress: bool, console: Console
) -> tuple[Any, Any]:
    cfg, context = run.cfg, run.cfg.model.max_length
    seed_everything(cfg.train.seed)
    model = generation.build_model(cfg.model, run.tokenizer)
    seed_everything(cfg.train.seed + distributed.rank())  # distinct dropout per rank
    train_ids, val_ids = run.tokens["train"], run.tokens["val"]
    metric = cfg.train.early_stopping_metric
    result = fit(
        model,
        generation.TokenWindows(train_ids, context),
        generation.make_collate(train_ids, context),
        generation.lm_loss,
        generation.make_val_metrics(val_ids, context, cfg.eval.val_tokens)
        if len(val_ids) > 1 else None,
        cfg.train,
        run_dir,
        resume=resume,
        metric_mode="min" if "loss" in metric or "perplexity" in metric else "max",
        show_progress=show_progress,
    )
    if result.best_dir is not None:
        load_checkpoint(result.best_dir, model, with_state=False)
        console.print(f"best checkpoint: step {result.state.best_step} "
                      f"({metric} {result.state.best_metric:.4f})")
    return model, result


def _lm_report(
    model: Any, tokens: dict[str, np.ndarray], train_counts: np.ndarray | None, context: int
) -> dict[str, Any]:
    """eval.json of generation: val and test loss, test perplexity, and the same for a smoothed
    unigram model (fitted on the training tokens) on the same test tokens."""
    scored = {name: token_nll(model, ids, context)
              for name, ids in tokens.items() if len(ids) > 1}
    loss = {name: total / count for name, (total, count) in scored.items()}
    test = tokens.get("test")
    report: dict[str, Any] = {
        "n_tokens": scored["test"][1] if "test" in scored else 0,
        "val_loss": loss.get("val"),
        "test_loss": loss.get("test"),
        "perplexity": perplexity(*scored["test"]) if "test" in scored else None,
        "baselines": {},
    }
    if train_counts is not None and test is not None and len(test) > 1:
        total, count = unigram_nll(train_counts, test)
        report["baselines"]["unigram"] = {
            "test_loss": total / count, "perplexity": perplexity(total, count)
        }
    return report


def _render_lm_report(report: dict[str, Any], console: Console, title: str) -> None:
    from rich.table import Table

    table = Table(title=title)
    for column in ("model", "val loss", "test loss", "perplexity"):
        table.add_column(column, justify="left" if column == "model" else "right")

    def number(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}" if value < 1000 else f"{value:,.0f}"

    table.add_row("this model", number(report["val_loss"]), number(report["test_loss"]),
                  number(report["perplexity"]))
    unigram = report["baselines"].get("unigram")
    if unigram:
        table.add_row("unigram baseline", "-", number(unigram["test_loss"]),
                      number(unigram["perplexity"]))
    console.print(table)
    console.print(f"{report['n_tokens']:,} test tokens; loss is nats per token")


def _generation_meta(cfg: Config, run: _PreparedText, model: Any, run_dir: Path) -> dict:
    meta: dict[str, Any] = {
        "task": "generation",
        "arch": cfg.model.arch,
        "text_column": cfg.data.text_column,
        "clean": cfg.data.clean.model_dump(),
        "max_length": cfg.model.max_length,
        "generate": cfg.generate.model_dump(),
        "run": {"dir": str(run_dir.resolve()), "data": cfg.data.path,
                "data_hash": run.data.data_hash},
    }
    if cfg.model.arch == "gpt":
        meta["architecture"] = model.config.to_dict()
    else:
        meta["pretrained"] = {"name": cfg.model.pretrained, "revision": cfg.model.revision}
    return meta


def _finish_generation(run: _PreparedText, model: Any, run_dir: Path, console: Console) -> dict:
    """Test evaluation beside the unigram baseline, bundle and provenance: rank 0 only."""
    cfg = run.cfg
    counts = None
    if cfg.eval.baselines:
        counts = token_counts(run.tokens["train"], run.tokenizer.vocab_size)
    report = _lm_report(model, run.tokens, counts, cfg.model.max_length)
    _write_json(run_dir / "eval.json", report)
    meta = _generation_meta(cfg, run, model, run_dir)
    meta["metrics"] = {k: report[k] for k in ("n_tokens", "test_loss", "perplexity")}
    save_bundle(run_dir / "model", model, run.tokenizer, meta)
    _write_json(run_dir / "provenance.json", provenance.collect(cfg.data.path, run.data.data_hash))
    if report["test_loss"] is not None:
        _render_lm_report(report, console, f"Test split of {run_dir}")
    else:
        console.print("no test split (data.split.test is 0): evaluate with "
                      f"`lmforge evaluate {run_dir} --data FILE`")
    console.print(f"run written to {run_dir}; bundle at {run_dir / 'model'}")
    return report


def _train_generation(
    cfg: Config, run_dir: Path, resume: bool, show_progress: bool, console: Console
) -> RunResult:
    run = _prepare_generation(cfg, run_dir, resume, console)
    model, result = _fit_generator(run, run_dir, resume, show_progress, console)
    eval_report = distributed.on_main(lambda: _finish_generation(run, model, run_dir, console))
    distributed.shutdown()
    return RunResult(run_dir, run_dir / "model", eval_report, result.resumed_from,
                     result.state.step)


def _token_ids(tokenizer: TextTokenizer, documents: list[str]) -> np.ndarray:
    """The token stream of `documents`, as the token files hold it."""
    pieces = list(document_stream(tokenizer, documents))
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)


def _generation_run_tokens(
    cfg: Config, run_dir: Path, record: SplitRecord | None, tokenizer: TextTokenizer,
    need_test: bool,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Token ids of a run's splits as at training time, and the data check: as
    _classification_run_splits, by document."""
    quiet = Console(quiet=True)
    data = prepare_documents(cfg.data)
    if record is None:
        return (_token_files(cfg, data, tokenizer, quiet),
                _unrecorded_check(run_dir, cfg.data.path, data.data_hash))
    documents = {"train": data.train.texts, "val": data.val.texts, "test": data.test.texts}
    tokens, missing = None, 0
    if data.data_hash == record.data_hash:
        tokens = _token_files(cfg, data, tokenizer, quiet)
    else:  # edited since: the documents each split held, wherever they are now
        every, _ = read_eval_documents(cfg.data.path, cfg.data)
        for name in documents:
            found, lost = record.locate(name, every)
            documents[name] = [every[i] for i in found]
            missing = lost if name == "test" else missing
    test = documents["test"]
    unseen = record.unseen(test)
    check = _recorded_check(record, cfg.data.path, data.data_hash, missing,
                            len(test) - len(unseen))
    if need_test:
        _refuse_changed_test_split(check)
    if tokens is None:
        tokens = {name: _token_ids(tokenizer, docs) for name, docs in documents.items()}
    if len(unseen) < len(test):
        tokens["test"] = _token_ids(tokenizer, [test[i] for i in unseen])
    return tokens, check


def _evaluate_generation(
    bundle_dir: Path, run_dir: Path | None, data: str | Path | None, show: bool
) -> dict[str, Any]:
    """Loss and perplexity on the run's val/test splits, or on the documents of `data`."""
    generator = load(bundle_dir)
    meta, tokenizer = generator.meta, generator.tokenizer
    record = _read_split_record(run_dir)
    run_tokens, counts, check = None, None, {}
    if run_dir is not None:
        cfg = load_config(read_config_file(run_dir / "config.yaml"))
        run_tokens, check = _generation_run_tokens(cfg, run_dir, record, tokenizer, data is None)
        if cfg.eval.baselines:
            counts = token_counts(run_tokens["train"], tokenizer.vocab_size)
    if data is not None:
        data_cfg = DataConfig(text_column=meta["text_column"], clean=CleanConfig(**meta["clean"]))
        documents, _ = read_eval_documents(str(data), data_cfg)
        check = {"source": str(data), "split_record": record is not None}
        if record is not None:
            unseen, check = _leak_check(documents, record, str(data), run_dir)
            documents = [documents[i] for i in unseen]
        tokens, title = {"test": _token_ids(tokenizer, documents)}, str(data)
        out_path = (run_dir or bundle_dir) / f"eval-{Path(data).stem}.json"
    elif run_tokens is None:
        raise LmforgeError(f"{bundle_dir} has no run directory with a test split; "
                           "pass --data FILE with texts")
    else:
        tokens = {"val": run_tokens["val"], "test": run_tokens["test"]}
        out_path, title = None, f"Test split of {run_dir}"
        if len(tokens["test"]) <= 1:
            raise LmforgeError(f"run {run_dir} has no test split; pass --data FILE")
    report = _lm_report(generator.model, tokens, counts, generator.max_length)
    report["data_check"] = check
    if out_path is not None:
        _write_json(out_path, report)
    if show:
        console = _console()
        for note in _data_check_notes(check):
            console.print(note, markup=False)
        _render_lm_report(report, console, title)
        if out_path is not None:
            console.print(f"written to {out_path}")
    return report


def _read_prompts(input: str | Path) -> list[str]:
    """One prompt per line of a file ('-': stdin); a blank line is an error naming it."""
    if str(input) == "-":
        lines = sys.stdin.read().splitlines()
        where = "stdin"
    else:
        path = Path(input)
        if not path.is_file():
            raise LmforgeError(f"prompt file not found: {input}")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise LmforgeError(f"{input} is not UTF-8 text") from None
        where = str(input)
    if not lines:
        raise LmforgeError(f"{where} holds no prompts")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            raise LmforgeError(f"{where} line {number}: empty prompt")
    return lines


# Every character Python's str.splitlines() breaks a line at, and the backslash, as escapes.
_LINE_ESCAPES = str.maketrans({
    "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\v": "\\v", "\f": "\\f",
    **{c: f"\\x{ord(c):02x}" for c in "\x1c\x1d\x1e\x85"},
    **{c: f"\\u{ord(c):04x}" for c in "\u2028\u2029"},
})


def _one_line(text: str) -> str:
    """A continuation's text kept on its line: line breaks and backslashes escaped."""
    return text.translate(_LINE_ESCAPES)


def _write_in_order(events: Iterator[Any], n: int, sink: Any) -> list[str]:
    """Stream events of n prompts to `sink` in prompt order: the first unfinished prompt's text
    as it comes, the others' kept until their turn; one line per continuation (see _one_line).
    Returns the texts as generated."""
    texts, held, done, current = [""] * n, [[] for _ in range(n)], set(), 0
    for event in events:
        texts[event.index] += event.text
        if event.index == current:
            sink.write(_one_line(event.text))
            sink.flush()
        else:
            held[event.index].append(_one_line(event.text))
        if event.finish_reason is not None:
            done.add(event.index)
        while current in done:
            sink.write("\n")
            current += 1
            if current < n:
                sink.write("".join(held[current]))
            sink.flush()
    return texts


def generate(
    bundle: str | Path,
    prompts: list[str] | None = None,
    input: str | Path | None = None,
    settings: GenerateConfig | None = None,
    truncate: bool = False,
    stream: bool = False,
    **overrides: Any,
) -> list[str]:
    """Continue each prompt (or each line of `input`) with a generation bundle; the
    continuations go to stdout, one per line (streamed with `stream`), timings to stderr.
    `settings` and `overrides` (GenerateConfig's fields) as Generator.generate takes them."""
    if bool(prompts) == (input is not None):
        raise LmforgeError("give --prompt TEXT (one or more) or --input FILE, not both"
                           if prompts else "give --prompt TEXT or --input FILE")
    bundle_dir = _locate(bundle)[0]
    if read_meta(bundle_dir).get("task") != "generation":
        raise LmforgeError(f"{bundle} holds a classification model; use `lmforge predict`")
    prompts = list(prompts) if prompts else _read_prompts(input)
    generator = load(bundle_dir)
    started = time.perf_counter()
    events = generator.stream(prompts, settings, truncate, **overrides)
    counts = [0] * len(prompts)

    def counted(stream_events: Iterator[Any]) -> Iterator[Any]:
        for event in stream_events:
            counts[event.index] = event.completion_tokens
            yield event

    if stream:
        texts = _write_in_order(counted(events), len(prompts), sys.stdout)
    else:
        texts = _write_in_order(counted(events), len(prompts), io.StringIO())
        sys.stdout.write("".join(_one_line(text) + "\n" for text in texts))
        sys.stdout.flush()
    seconds = time.perf_counter() - started
    print(f"{len(prompts)} prompt(s), {sum(counts)} new tokens in {seconds:.2f} s "
          f"({sum(counts) / max(seconds, 1e-9):.1f} tokens/s)", file=sys.stderr)
    return texts


def generation_quickstart_config(fast: bool = False) -> Config:
    """A small GPT on the built-in review corpus, sized for the quickstart's time budget."""
    steps = 300 if fast else 1200
    return load_config({
        "task": "generation",
        "tokenizer": {"vocab_size": 4000},
        "model": {"d_model": 128, "n_layers": 4, "n_heads": 4, "d_ff": 512, "max_length": 64,
                  "dropout": 0.0},
        "train": {"max_steps": steps, "eval_every": steps // 5, "batch_size": 32, "lr": 2e-3},
        "eval": {"val_tokens": 50_000},
    })


def _quickstart_generation(run_dir: Path, fast: bool) -> RunResult:
    result = train(generation_quickstart_config(fast), out=run_dir)
    generator = load(result.bundle_dir)
    console = _console()
    console.print("samples (temperature 0.8, top-k 50, seed 0):")
    for prompt, completion in zip(
        QUICKSTART_PROMPTS, generator.generate(QUICKSTART_PROMPTS, seed=0, max_new_tokens=60),
        strict=True,
    ):
        console.print(f"  [bold]{prompt}[/]{completion.text}")
    console.print(f"more with: lmforge generate {result.bundle_dir} --prompt \"...\"")
    return result
