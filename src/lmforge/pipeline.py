"""The verbs as Python functions: train, evaluate, predict, generate, init, quickstart, export,
compress. Each looks the task's recipe up (tasks.TASKS) and composes the stages; none knows a
task by name. The CLI and users' scripts both call these; what they show goes through render.
"""

from __future__ import annotations

import io
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lmforge.check as preflight
from lmforge import provenance, render, tracking, tuning
from lmforge.bundle import copy_bundle, load, locate_bundle, read_meta, save_bundle
from lmforge.config import Config, GenerateConfig, dump_config, load_config
from lmforge.cross_validation import cross_validate
from lmforge.data import read_texts
from lmforge.errors import LmforgeError
from lmforge.evaluation.html_report import write_html_report
from lmforge.files import write_atomic, write_json_atomic
from lmforge.runs import (
    create_run_dir,
    data_check_notes,
    default_run_dir,
    free_run_dir,
    has_checkpoint,
    write_split_record,
)
from lmforge.tasks import INPUT_RECIPES, TASKS, TaskRecipe, inputs_of, recipe_for, recipe_of
from lmforge.training import distributed, fit
from lmforge.training.checkpoint import load_checkpoint
from lmforge.training.loop import parameter_counts


@dataclass
class RunResult:
    run_dir: Path
    bundle_dir: Path
    eval_report: dict[str, Any] | None
    resumed_from: int | None
    steps: int
    cv: dict[str, Any] | None = None  # cv.json's content, with --cv
    stopped: bool = False  # on_eval stopped training (a pruned trial): no test, no bundle


def train(
    config: str | Path | dict[str, Any] | Config,
    out: str | Path | None = None,
    overrides: list[str] | None = None,
    resume: bool = False,
    force: bool = False,
    show_progress: bool = True,
    cv: int | None = None,
    on_eval: Callable[[int, dict[str, float]], bool] | None = None,
) -> RunResult:
    """Train a model from a config (a path, a mapping or a Config) into a run directory.

    Under torchrun every rank calls this; rank 0 alone writes files and prints. When torchrun
    restarts failed workers (--max-restarts), the run resumes from its last checkpoint.
    With `cv` (K), K models are first trained and scored on folds of the train and val rows
    (cv.json; see cross_validation.py) and the bundle is refit on all of them. `on_eval` as
    training.fit takes it (True stops training: no test, no bundle).
    """
    cfg = load_config(config, overrides)
    if cv is not None and resume:
        raise LmforgeError("--cv cannot --resume (folds keep no checkpoints); pass --force")
    if cfg.train.tracking == "mlflow":
        tracking.require()
    recipe = recipe_for(cfg.task, inputs_of(cfg))
    run_dir = Path(out) if out else default_run_dir(config)
    distributed.init(cfg.train.device)
    log = render.notes(distributed.is_main())
    if distributed.restart_count() > 0 and has_checkpoint(run_dir):
        resume, force = True, False
        log(f"restarted by torchrun (restart {distributed.restart_count()}): resuming")

    def start() -> None:
        create_run_dir(run_dir, resume, force, log)
        write_atomic(run_dir / "config.yaml", dump_config(cfg))

    distributed.on_main(start)
    run = recipe.prepare(cfg, run_dir, resume, log)
    cv_report = None
    if cv is not None:
        cv_report, run = cross_validate(recipe, run, cv, run_dir, show_progress, log)
        distributed.on_main(lambda: render.cv_table(cv_report, render.console()))
    if distributed.is_main():
        write_json_atomic(run_dir / "data_report.json", run.data_report)
        write_split_record(run_dir, run.data_hash, run.split_texts)
    model = recipe.build_model(run, run_dir, resume, show_progress, log)
    plan = recipe.training(run, model)
    resumed_from, steps = None, 0
    if plan is not None:  # None: build_model made the whole model (an index, a fitted estimator)
        result = fit(model, plan.examples, plan.collate, plan.loss, plan.val_metrics,
                     run.cfg.train, run_dir, resume=resume, metric_mode=plan.metric_mode,
                     show_progress=show_progress, lengths=plan.lengths, on_eval=on_eval)
        resumed_from, steps = result.resumed_from, result.state.step
        if result.stopped:
            distributed.shutdown()
            return RunResult(run_dir, run_dir / "model", None, resumed_from, steps, stopped=True)
        model = result.model  # under FSDP, whole on rank 0 only: the ranks after it hold shards
        if result.best_dir is not None and model is not None:
            load_checkpoint(result.best_dir, model, with_state=False)
            log(f"best checkpoint: step {result.state.best_step} "
                f"(val {cfg.train.early_stopping_metric} {result.state.best_metric:.4f})")
    report = distributed.on_main(lambda: _finish(recipe, run, model, run_dir))
    if cfg.train.tracking == "mlflow":
        distributed.on_main(lambda: tracking.record_run(cfg, run_dir))
    distributed.shutdown()
    return RunResult(run_dir, run_dir / "model", report, resumed_from, steps, cv_report)


def _finish(recipe: TaskRecipe, run: Any, model: Any, run_dir: Path) -> dict | None:
    """The test report beside the baselines, the bundle and provenance: rank 0 only."""
    tested = recipe.test(run, model)
    meta = recipe.bundle_meta(run, model, run_dir)
    if tested is not None:
        write_json_atomic(run_dir / "eval.json", tested.report)
        if tested.rows:
            lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in tested.rows)
            write_atomic(run_dir / "test_predictions.jsonl", lines)
        meta["metrics"] = recipe.summary(tested.report)
    if tested is not None and tested.bundle is not None:
        copy_bundle(tested.bundle, run_dir / "model")
    else:
        save_bundle(run_dir / "model", model, run.tokenizer, meta)
    origin = provenance.collect(run.cfg.data.path, run.data_hash)
    counts = parameter_counts(model)
    if counts is not None:  # an adapter run trains a sliver of them
        origin["parameters"] = counts
    write_json_atomic(run_dir / "provenance.json", origin)
    console = render.console()
    if tested is not None and tested.scored_test:
        recipe.render(tested.report, console, f"Test split of {run_dir}")
    else:
        console.print("no test split (data.split.test is 0): evaluate with "
                      f"`lmforge evaluate {run_dir} --data FILE`")
    write_html_report(run_dir, recipe.report_kind)
    console.print(f"run written to {run_dir}; bundle at {run_dir / 'model'}")
    return tested.report if tested is not None else None


def check(
    config: str | Path | dict[str, Any] | Config,
    overrides: list[str] | None = None,
    gpu_memory: str | None = None,
    show: bool = True,
    gpus: int = 1,
) -> dict[str, Any]:
    """`lmforge check`: a config's pre-flight report (lmforge.check), training nothing, with
    the memory of one of `gpus` GPUs; a bad config or bad data raises the LmforgeError training
    would."""
    report = preflight.check(config, overrides, gpu_memory, gpus)
    if show:
        preflight.render_check(report, render.console())
    return report


def tune(
    config: str | Path | dict[str, Any],
    trials: int,
    out: str | Path | None = None,
    storage: str | None = None,
    study: str | None = None,
    space: str | Path | None = None,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Search hyperparameters with Optuna: `trials` more trials of the study, each a run under
    `out` (default runs/<study>/trial-<n>); best.yaml is the best trial's config (see tuning)."""

    def train_trial(raw: dict[str, Any], run_dir: Path, on_eval: Any) -> RunResult:
        return train(raw, out=run_dir, show_progress=False, on_eval=on_eval)

    report = tuning.tune(config, trials, train_trial, out, storage, study, space, overrides,
                         render.notes())
    render.tune_table(report, render.console())
    return report


def evaluate(
    target: str | Path, data: str | Path | None = None, show: bool = True
) -> dict[str, Any]:
    """Re-evaluate a run's model on its test split, or on a new file (`data`).

    The run's test split is the one it was trained beside (splits.json), even if its data file
    was edited since; texts the model trained on are never scored (report["data_check"])."""
    where = locate_bundle(target)
    predictor = load(where.bundle_dir)
    recipe = recipe_of(predictor.meta)
    source = str(data) if data is not None else None
    report = recipe.evaluate(predictor, where.bundle_dir, where.run_dir, source)
    out_path = None
    if data is not None:
        out_path = (where.run_dir or where.bundle_dir) / f"eval-{Path(data).stem}.json"
        write_json_atomic(out_path, report)
    elif where.run_dir is not None:
        write_html_report(where.run_dir, recipe.report_kind, report)
    if show:
        console = render.console()
        for note in data_check_notes(report.get("data_check", {})):
            console.print(note, markup=False)
        recipe.render(report, console, str(data) if data else f"Test split of {where.run_dir}")
        if out_path is not None:
            console.print(f"written to {out_path}")
    return report


def report(target: str | Path) -> Path:
    """Write a run's report.html (learning curves, the task's views of eval.json, the data
    report, provenance) from its files, and return its path."""
    where = locate_bundle(target)
    if where.run_dir is None:
        raise LmforgeError(f"{target} is a bundle outside a run directory; `lmforge report` "
                           "reads a run's metrics.jsonl, eval.json and data_report.json")
    return write_html_report(where.run_dir, recipe_of(read_meta(where.bundle_dir)).report_kind)


def predict(
    bundle: str | Path, input: str | Path, output: str | Path | None = None,
    explain: bool = False,
) -> dict[str, int]:
    """Predict every text of `input` ('-' for stdin) into JSONL at `output` (stdout if None).
    With `explain` (classification) each row gains its `attributions`, also shown highlighted
    on stderr when stdout is a terminal."""
    predictor = load(_bundle_for(bundle, "predict"))
    task = predictor.meta["task"]
    if explain and not hasattr(predictor, "explain"):  # what its predictor can do, not its name
        raise LmforgeError(f"--explain explains a classifier's labels; this is a '{task}' bundle")
    recipe = recipe_of(predictor.meta)
    read_inputs = getattr(recipe, "read_inputs", None)  # a kind of input other than text
    if read_inputs is not None:
        texts = read_inputs(predictor, str(input))
    elif str(input) == "-":
        texts = [line.rstrip("\n") for line in sys.stdin]
    else:
        texts, _ = read_texts(str(input), predictor.meta["text_column"])
    rows, summary = recipe.predict(predictor, texts)
    if explain:
        for row, found in zip(rows, predictor.explain(texts), strict=True):
            row["attributions"] = found
        if output is None and sys.stdout.isatty():
            render.attributions(rows, render.console())
    lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    if output:
        Path(output).write_text(lines, encoding="utf-8")
    else:
        sys.stdout.write(lines)
    print(summary, file=sys.stderr)
    return {"texts": len(texts), "rows": len(rows)}


def generate(
    bundle: str | Path,
    prompts: list[str] | None = None,
    input: str | Path | None = None,
    settings: GenerateConfig | None = None,
    truncate: bool = False,
    stream: bool = False,
    chat: bool = False,
    system: str | None = None,
    **overrides: Any,
) -> list[str]:
    """Continue each prompt (or each line of `input`) with a generation bundle; the
    continuations go to stdout, one per line (streamed with `stream`), timings to stderr.
    `settings` and `overrides` (GenerateConfig's fields) as Generator.generate takes them.
    With `chat` each prompt is a user's message (after the `system` message, if given) and the
    model replies as the assistant, the conversation rendered with the bundle's chat template."""
    if system is not None and not chat:
        raise LmforgeError("--system goes with --chat")
    if bool(prompts) == (input is not None):
        raise LmforgeError("give --prompt TEXT (one or more) or --input FILE, not both"
                           if prompts else "give --prompt TEXT or --input FILE")
    bundle_dir = _bundle_for(bundle, "generate")
    generator = load(bundle_dir)
    prompts = list(prompts) if prompts else _read_prompts(input)
    if chat:
        opening = [{"role": "system", "content": system}] if system is not None else []
        prompts = [[*opening, {"role": "user", "content": text}] for text in prompts]
    started = time.perf_counter()
    counts = [0] * len(prompts)

    def counted() -> Any:
        for event in generator.stream(prompts, settings, truncate, chat, **overrides):
            counts[event.index] = event.completion_tokens
            yield event

    sink = sys.stdout if stream else io.StringIO()
    texts = render.write_in_order(counted(), len(prompts), sink)
    if not stream:
        sys.stdout.write("".join(render.one_line(text) + "\n" for text in texts))
        sys.stdout.flush()
    seconds = time.perf_counter() - started
    print(f"{len(prompts)} prompt(s), {sum(counts)} new tokens in {seconds:.2f} s "
          f"({sum(counts) / max(seconds, 1e-9):.1f} tokens/s)", file=sys.stderr)
    return texts


def translate(
    bundle: str | Path,
    input: str | Path,
    beam_size: int | None = None,
    length_penalty: float | None = None,
    max_new_tokens: int | None = None,
    chunk: int = 256,
    no_repeat_ngram: int | None = None,
) -> list[str]:
    """Translate each line of `input` ('-' for stdin) with a translation bundle: the
    translations go to stdout as they are done, one plain line per input line in order (line
    breaks inside escaped as `generate` does; a blank line stays blank); progress and timings
    to stderr. Unset settings are the bundle's (its run's `translation` section)."""
    translator = load(_bundle_for(bundle, "translate"))
    lines, _ = _read_lines(input, "sentence")
    started, texts, tokens = time.perf_counter(), [], 0
    for start in range(0, len(lines), chunk):
        done = translator.translate(lines[start:start + chunk], beam_size=beam_size,
                                    length_penalty=length_penalty, max_new_tokens=max_new_tokens,
                                    no_repeat_ngram=no_repeat_ngram)
        sys.stdout.write("".join(render.one_line(t.text) + "\n" for t in done))
        sys.stdout.flush()
        texts += [t.text for t in done]
        tokens += sum(t.output_tokens for t in done)
        if len(lines) > chunk:
            print(f"{len(texts)}/{len(lines)} lines translated", file=sys.stderr)
    seconds = time.perf_counter() - started
    print(f"{len(lines)} line(s), {tokens} tokens out in {seconds:.2f} s "
          f"({len(lines) / max(seconds, 1e-9):.1f} lines/s)", file=sys.stderr)
    return texts


def _bundle_for(target: str | Path, verb: str) -> Path:
    """The bundle of `target`, if `verb` is the one that runs its task's models."""
    bundle_dir = locate_bundle(target).bundle_dir
    meta = read_meta(bundle_dir)
    task, runs_with = meta["task"], recipe_of(meta).runs_with
    if runs_with != verb:
        raise LmforgeError(f"{target} holds a {task} model; use `lmforge {runs_with}`")
    return bundle_dir


def _read_lines(input: str | Path, what: str) -> tuple[list[str], str]:
    """The lines of a file ('-': stdin) and where they came from; no lines is an error."""
    if str(input) == "-":
        lines, where = sys.stdin.read().splitlines(), "stdin"
    else:
        path = Path(input)
        if not path.is_file():
            raise LmforgeError(f"{what} file not found: {input}")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise LmforgeError(f"{input} is not UTF-8 text") from None
        where = str(input)
    if not lines:
        raise LmforgeError(f"{where} holds no {what}s")
    return lines, where


def _read_prompts(input: str | Path) -> list[str]:
    """One prompt per line of a file ('-': stdin); a blank line is an error naming it."""
    lines, where = _read_lines(input, "prompt")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            raise LmforgeError(f"{where} line {number}: empty prompt")
    return lines


def init_config(task_name: str, data: str | Path) -> str:
    """A starter config (YAML) for `data`, with its columns detected: the knobs its task reads,
    at that task's defaults, each section under a comment."""
    cfg = _recipe_for_data(task_name, str(data)).starter_config(str(data))
    return (f"# lmforge config: `lmforge train {Path(data).stem}.yaml`\n"
            + dump_config(cfg, comments=True))


def _recipe_for_data(task: str, data: str) -> TaskRecipe:
    """The recipe of `task` for the kind of input `data` holds (text, a table, images)."""
    return recipe_for(task, inputs_of(load_config({"task": task, "data": {"path": data}})))


def quickstart_task(data: str | None) -> str:
    """The task a quickstart on `data` runs when none is named: the task whose own quickstart
    trains on that built-in dataset (builtin:diabetes: regression; builtin:hsk-zh-en:
    translation), else classification."""
    if data is not None:
        for task, recipe in [*TASKS.items(), *((t, r) for (t, _), r in INPUT_RECIPES.items())]:
            try:
                if recipe.quickstart_config(False).data.path == data:
                    return task
            except LmforgeError:  # a task without built-in data of its own
                continue
    return "classification"


def quickstart_config(
    fast: bool = False, task: str | None = None, data: str | None = None
) -> Config:
    """The quickstart's config: the task's built-in dataset, or `data` (e.g. builtin:NAME);
    with no task, the one `quickstart_task` finds for `data`."""
    task = task or quickstart_task(data)
    if data is None:
        return recipe_for(task).quickstart_config(fast)
    cfg = _recipe_for_data(task, data).quickstart_config(fast)
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"path": data})})


def quickstart(
    out: str | Path | None = None, fast: bool = False, task: str | None = None,
    data: str | None = None,
) -> RunResult:
    """The whole pipeline on a built-in dataset (the task's own, or `data`); never overwrites
    an earlier quickstart."""
    cfg = quickstart_config(fast, task, data)
    recipe = recipe_for(cfg.task, inputs_of(cfg))
    run_dir = Path(out) if out else free_run_dir(Path("runs") / recipe.quickstart_run)
    result = train(cfg, out=run_dir)
    notes = recipe.quickstart_notes(load(result.bundle_dir), result.bundle_dir)
    console = render.console()
    for note in notes:
        console.print(note)
    return result


def ensemble(
    targets: list[str | Path], out: str | Path, data: str | Path | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """One classification bundle at `out` from several runs or bundles of the same labels:
    their probabilities averaged with weights fitted on the validation split they share (or on
    `data`); prints each member beside the ensemble and returns the bundle's lmforge.json."""
    from lmforge.evaluation.leaderboard import render_leaderboard
    from lmforge.optimize.ensemble import ensemble_bundles

    meta = ensemble_bundles(list(targets), Path(out), data, force)
    fusion, console = meta["fusion"], render.console()
    render_leaderboard(fusion["leaderboard"], console, f"Ensemble at {out}: weights fitted on "
                       f"the {fusion['fitted_on']} (n={fusion['n']})")
    console.print(f"bundle written to {out}", markup=False)
    return meta


def export(
    bundle: str | Path,
    format: str = "onnx",
    out: str | Path | None = None,
    opset: int | None = None,
    data: str | Path | None = None,
    force: bool = False,
    merge: bool = False,
) -> dict[str, Any]:
    """Export a classification bundle, or lmforge's GPT or encoder–decoder with its KV cache as
    inputs and outputs, to ONNX (a bundle run by ONNX Runtime), checked against PyTorch and
    measured beside it; returns compress_report.json's content. With `merge`, an adapter
    bundle's adapter folded into its base instead (a bundle `transformers` loads as it is);
    returns the merged bundle's lmforge.json."""
    from lmforge import optimize
    from lmforge.optimize.kinds import exporter_of
    from lmforge.optimize.merge import merge_bundle, refuse_adapter

    if format != "onnx":
        raise LmforgeError(f"unknown export format '{format}'; available: onnx")
    where = locate_bundle(bundle)
    target = Path(out) if out else optimize.default_out(where.bundle_dir,
                                                        "merged" if merge else "onnx")
    optimize.check_out(target, where.bundle_dir, force)
    if merge:
        meta = merge_bundle(where.bundle_dir, target)
        render.console().print(f"merged bundle written to {target}", markup=False)
        return meta
    own = exporter_of(read_meta(where.bundle_dir))  # a table's MLP, an image CNN, a GPT...
    if own is not None:
        report = own.export(where.bundle_dir, where.run_dir, target,
                            opset or optimize.DEFAULT_OPSET, data)
        own.render(report, render.console())
        return report
    refuse_adapter(where.bundle_dir, "ONNX export")
    source = optimize.load_source(where.bundle_dir, where.run_dir, data)
    report = optimize.export_bundle(source, target, opset or optimize.DEFAULT_OPSET)
    optimize.render_report(report, render.console())
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
    from lmforge.optimize.kinds import exporter_of

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
    where = locate_bundle(bundle)
    if quantize:
        suffix = "int8"
    else:
        suffix = "distilled" if distill is not None else f"pruned{round(100 * prune)}"
    target = Path(out) if out else optimize.default_out(where.bundle_dir, suffix)
    optimize.check_out(target, where.bundle_dir, force)
    own = exporter_of(read_meta(where.bundle_dir))
    if own is not None and own.quantize is not None:  # a table's MLP, an image CNN
        if not quantize:
            raise LmforgeError(f"{own.what} compresses with --quantize int8 only")
        report = own.quantize(where.bundle_dir, where.run_dir, target, optimize.DEFAULT_OPSET,
                              data)
        own.render(report, render.console())
        return report
    if distill is None:  # a teacher may be an adapter; int8 and pruning need a whole model
        from lmforge.optimize.merge import refuse_adapter

        refuse_adapter(where.bundle_dir, "--quantize" if quantize else "--prune")
    source = optimize.load_source(where.bundle_dir, where.run_dir, data)
    if quantize:
        report = optimize.quantize_bundle(source, target)
    elif prune is not None:
        report = optimize.prune_bundle(source, target, prune, finetune_steps, show_progress)
    else:
        report = optimize.distill_bundle(source, distill, target, temperature, alpha, show_progress)
    optimize.render_report(report, render.console())
    return report
