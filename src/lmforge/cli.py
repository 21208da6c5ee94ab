"""The `lmforge` command: one small function per verb; the work happens in lmforge.pipeline."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Annotated

import typer

from lmforge.errors import LmforgeError

app = typer.Typer(
    help="lmforge: from data to a served Transformer, driven by one YAML config.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.command()
def quickstart(
    out: Annotated[
        Path | None, typer.Option(help="Run directory (default runs/quickstart).")
    ] = None,
    fast: Annotated[bool, typer.Option(help="A shorter run (about 2 minutes on 2 cores).")] = False,
    task: Annotated[
        str | None, typer.Option(help="The task: classification (the default), generation, "
                                 "assistant, translation, regression, recommendation; with "
                                 "only --data, the task of that built-in dataset.")
    ] = None,
    data: Annotated[
        str | None, typer.Option(help="A built-in dataset (builtin:NAME) instead of the task's.")
    ] = None,
) -> None:
    """Train, evaluate and bundle a model on a task's built-in dataset (the review corpus for
    classification), or on another built-in dataset (--data builtin:NAME)."""
    from lmforge import pipeline

    pipeline.quickstart(out=out, fast=fast, task=task, data=data)


@app.command()
def init(
    data: Annotated[str, typer.Option(help="Your data file or folder.")],
    task: Annotated[str, typer.Option(help="The task.")] = "classification",
) -> None:
    """Print a starter config for DATA, with its text and label columns detected."""
    from lmforge import pipeline

    typer.echo(pipeline.init_config(task, data), nl=False)


@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="YAML or JSON config file.")],
    out: Annotated[
        Path | None, typer.Option(help="Run directory (default runs/<config name>).")
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a field: key.sub=value.")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the run's last checkpoint.")] = False,
    force: Annotated[bool, typer.Option(help="Replace an existing run directory.")] = False,
    nproc: Annotated[
        int, typer.Option(min=1, help="Processes on this machine (launches torchrun for you).")
    ] = 1,
    cv: Annotated[
        int | None,
        typer.Option(min=2, help="First score K models on K folds of train + val (cv.json); "
                     "the bundle is then refit on all of them."),
    ] = None,
) -> None:
    """Train a model from CONFIG into a run directory."""
    if resume and force:
        raise LmforgeError("--resume and --force contradict each other; pass one")
    if nproc > 1:
        from lmforge.training.distributed import launch

        args = ["train", str(config), *(["--out", str(out)] if out else [])]
        args += [f"--set={item}" for item in set_ or []]
        args += ["--resume"] * resume + ["--force"] * force + [f"--cv={cv}"] * (cv is not None)
        raise typer.Exit(launch(nproc, args))
    from lmforge import pipeline

    pipeline.train(config, out=out, overrides=set_ or [], resume=resume, force=force, cv=cv)


@app.command()
def check(
    config: Annotated[Path, typer.Argument(help="YAML or JSON config file.")],
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a field: key.sub=value.")
    ] = None,
    gpu_memory: Annotated[
        str | None, typer.Option(help="A GPU's memory (24GiB, 80GB): the largest batch that "
                                 "fits it (default: the visible GPU's, if any).")
    ] = None,
    gpus: Annotated[
        int, typer.Option(min=1, help="GPUs the run will use (--nproc): the memory of one, "
                          "under train.strategy (DDP copies, FSDP shards).")
    ] = 1,
) -> None:
    """Pre-flight CONFIG, training nothing: the data and what would be dropped, chat samples
    with their trained spans, token lengths against the context, parameters, and the peak GPU
    memory of training (weights, gradients, optimizer, activations)."""
    from lmforge import pipeline

    pipeline.check(config, overrides=set_ or [], gpu_memory=gpu_memory, gpus=gpus)


@app.command()
def tune(
    config: Annotated[Path, typer.Argument(help="YAML or JSON config file.")],
    trials: Annotated[int, typer.Option(min=1, help="Trials this command runs.")],
    out: Annotated[
        Path | None, typer.Option(help="Where trials go (default runs/<study>).")
    ] = None,
    storage: Annotated[
        str | None,
        typer.Option(help="Optuna storage URL shared by machines (postgresql+psycopg://...); "
                     "default SQLite under --out."),
    ] = None,
    study: Annotated[
        str | None, typer.Option(help="The study's name (default the config's name).")
    ] = None,
    space: Annotated[
        Path | None, typer.Option(help="YAML search space: field: {low, high, log} or "
                                  "{choices: [...]}.")
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a field: key.sub=value.")
    ] = None,
) -> None:
    """Search hyperparameters with Optuna: each trial a run under --out, scored on validation,
    bad ones pruned; best.yaml is the best config. Rerun to continue the study."""
    from lmforge import pipeline

    pipeline.tune(config, trials, out=out, storage=storage, study=study, space=space,
                  overrides=set_ or [])


@app.command()
def evaluate(
    target: Annotated[Path, typer.Argument(help="A run directory or a bundle.")],
    data: Annotated[
        Path | None,
        typer.Option(help="A labelled file (generation: any texts) to evaluate on."),
    ] = None,
) -> None:
    """Evaluate a model on its run's test split, or on a file (--data): classification metrics,
    or for a generation model loss and perplexity."""
    from lmforge import pipeline

    pipeline.evaluate(target, data=data)


@app.command()
def report(
    run: Annotated[Path, typer.Argument(help="A run directory (or its bundle).")],
) -> None:
    """Write the run's report.html: one self-contained page with learning curves, the test
    metrics beside the baselines, the task's plots, the data report and provenance."""
    from lmforge import pipeline

    print(f"written to {pipeline.report(run)}")


@app.command()
def predict(
    bundle: Annotated[Path, typer.Argument(help="A bundle (a run's model/ folder) or a run.")],
    input: Annotated[
        str, typer.Option("--input", "-i", help="A .txt file, a table, or - for stdin.")
    ],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="JSONL file (default stdout).")
    ] = None,
    explain: Annotated[
        bool, typer.Option("--explain", help="Add each token's attribution to the label.")
    ] = False,
) -> None:
    """Predict a label for every text of INPUT; one JSON object per line."""
    from lmforge import pipeline

    pipeline.predict(bundle, input, output, explain)


@app.command()
def generate(
    bundle: Annotated[Path, typer.Argument(help="A generation bundle (a run's model/) or a run.")],
    prompt: Annotated[
        list[str] | None, typer.Option(help="A prompt; repeat for several (one batch).")
    ] = None,
    input: Annotated[
        str | None, typer.Option("--input", "-i", help="One prompt per line; - for stdin.")
    ] = None,
    max_new_tokens: Annotated[
        int | None, typer.Option(help="Tokens to generate at most (default: the bundle's).")
    ] = None,
    temperature: Annotated[float | None, typer.Option(help="0 is greedy.")] = None,
    top_k: Annotated[int | None, typer.Option(help="Sample among the k likeliest; 0: off.")] = None,
    top_p: Annotated[float | None, typer.Option(help="Nucleus mass in (0, 1]; 1 is off.")] = None,
    repetition_penalty: Annotated[
        float | None, typer.Option(help="Penalise tokens already present; 1 is off.")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="The same seed gives the same text.")] = None,
    stop: Annotated[
        list[str] | None, typer.Option(help="End a continuation at this string; repeatable.")
    ] = None,
    truncate: Annotated[
        bool, typer.Option(help="Cut a prompt too long for the context from the left.")
    ] = False,
    stream: Annotated[bool, typer.Option(help="Print tokens as they are generated.")] = False,
    chat: Annotated[
        bool, typer.Option(help="Each prompt is a user's message; the model replies as the "
                           "assistant (the bundle's chat template renders the conversation).")
    ] = False,
    system: Annotated[
        str | None, typer.Option(help="With --chat: a system message before each prompt.")
    ] = None,
) -> None:
    """Continue prompts with a generation model: only the continuations go to stdout, one per
    line; timings go to stderr."""
    from lmforge import pipeline
    from lmforge.config import generate_settings

    settings = generate_settings(  # the flags given; the bundle's defaults fill in the rest
        max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
        repetition_penalty=repetition_penalty, seed=seed, stop=stop,
    )
    pipeline.generate(
        bundle, prompts=prompt, input=input, settings=settings, truncate=truncate, stream=stream,
        chat=chat, system=system,
    )


@app.command()
def translate(
    bundle: Annotated[Path, typer.Argument(help="A translation bundle (a run's model/) or a run.")],
    input: Annotated[
        str, typer.Option("--input", "-i", help="One sentence per line; - for stdin.")
    ],
    beam_size: Annotated[
        int | None, typer.Option(help="Hypotheses kept per sentence; 1 is greedy (default: the "
                                 "bundle's).")
    ] = None,
    length_penalty: Annotated[
        float | None, typer.Option(help="Beam scores divided by length ** this.")
    ] = None,
    max_new_tokens: Annotated[
        int | None, typer.Option(help="Tokens of a translation at most.")
    ] = None,
    no_repeat_ngram: Annotated[
        int | None, typer.Option(help="No n-gram of this many tokens twice in a translation; 0 "
                                 "is off (default: the bundle's).")
    ] = None,
) -> None:
    """Translate each line of the input with a translation model: only the translations go to
    stdout, one line per input line, in order; progress and timings go to stderr."""
    from lmforge import pipeline

    pipeline.translate(bundle, input, beam_size=beam_size, length_penalty=length_penalty,
                       max_new_tokens=max_new_tokens, no_repeat_ngram=no_repeat_ngram)


# --- compression and export: `lmforge export`, `lmforge compress` (the work is in lmforge.optimize)

OutOption = Annotated[
    Path | None, typer.Option(help="Output bundle (default: beside BUNDLE, e.g. model-onnx).")
]
EvalDataOption = Annotated[
    Path | None,
    typer.Option(help="A labelled file to measure on (default: the run's test split)."),
]
ForceOption = Annotated[bool, typer.Option(help="Replace an existing output folder.")]
BundleArgument = Annotated[Path, typer.Argument(help="A bundle (a run's model/ folder) or a run.")]


@app.command()
def export(
    bundle: BundleArgument,
    format: Annotated[str, typer.Option(help="Export format: onnx.")] = "onnx",
    out: OutOption = None,
    opset: Annotated[int | None, typer.Option(help="ONNX opset (default 17).")] = None,
    data: EvalDataOption = None,
    force: ForceOption = False,
    merge: Annotated[bool, typer.Option(
        "--merge", help="Fold an adapter bundle's adapter into its base: a standalone bundle "
        "transformers loads.")] = False,
) -> None:
    """Export a classifier, a GPT or a translation encoder–decoder (with their KV caches) to
    ONNX, checked against PyTorch; or (--merge) an adapter bundle merged into its base. The
    folder is a bundle."""
    from lmforge import pipeline

    pipeline.export(bundle, format=format, out=out, opset=opset, data=data, force=force,
                    merge=merge)


@app.command()
def compress(
    bundle: BundleArgument,
    quantize: Annotated[
        str | None, typer.Option(help="int8: dynamic int8 through ONNX Runtime.")
    ] = None,
    prune: Annotated[
        float | None, typer.Option(help="Zero this fraction of each linear layer's weights.")
    ] = None,
    finetune_steps: Annotated[
        int, typer.Option(min=0, help="Fine-tune steps after pruning, on the run's train split.")
    ] = 0,
    distill: Annotated[
        Path | None, typer.Option(help="Student config: train it on BUNDLE's soft labels.")
    ] = None,
    temperature: Annotated[float, typer.Option(help="Distillation temperature.")] = 2.0,
    alpha: Annotated[float, typer.Option(help="Weight of the soft (teacher) loss.")] = 0.5,
    out: OutOption = None,
    data: EvalDataOption = None,
    force: ForceOption = False,
) -> None:
    """Quantize, prune or distill a classifier; prints original beside result."""
    from lmforge import pipeline

    pipeline.compress(
        bundle,
        quantize=quantize,
        prune=prune,
        finetune_steps=finetune_steps,
        distill=distill,
        out=out,
        data=data,
        force=force,
        temperature=temperature,
        alpha=alpha,
    )


@app.command()
def ensemble(
    members: Annotated[
        list[Path], typer.Argument(help="Two or more runs or classification bundles.")
    ],
    out: Annotated[Path, typer.Option(help="The ensemble bundle to write.")],
    data: Annotated[
        Path | None,
        typer.Option(help="Labelled texts to fit the weights on (default: the members' shared "
                     "val split)."),
    ] = None,
    force: ForceOption = False,
) -> None:
    """Fuse classifiers of the same labels into one bundle: probabilities averaged with weights
    fitted on validation; prints each member beside the ensemble."""
    from lmforge import pipeline

    pipeline.ensemble(members, out=out, data=data, force=force)


# --- serving: `lmforge serve`, `lmforge keys ...`, `lmforge usage` (the work is in lmforge.serve)

DbOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        envvar="LMFORGE_DB",
        help="SQLAlchemy URL of keys and usage "
        "(default sqlite:///~/.local/share/lmforge/lmforge.db).",
    ),
]


@app.command()
def serve(
    models: Annotated[
        list[str],
        typer.Argument(
            metavar="[NAME=]BUNDLE",
            help="Bundles (or run directories) to serve; NAME defaults to the run's folder name.",
        ),
    ],
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port.")] = 8000,
    db: DbOption = None,
    no_auth: Annotated[
        bool, typer.Option("--no-auth", help="Open every route: no API key needed.")
    ] = False,
    max_batch_size: Annotated[
        int, typer.Option(min=1, help="Texts (prompts, for generation) per forward pass.")
    ] = 32,
    max_wait_ms: Annotated[
        float, typer.Option(min=0, help="How long a batch waits to fill up.")
    ] = 5.0,
    max_queue: Annotated[
        int, typer.Option(min=1, help="Requests waiting per model; more get 503.")
    ] = 1024,
    max_body_bytes: Annotated[
        int, typer.Option(min=1, help="Larger request bodies get 413.")
    ] = 1_000_000,
    max_tokens_cap: Annotated[
        int, typer.Option(min=1, help="Largest max_tokens a generation may ask for.")
    ] = 1024,
    timeout_s: Annotated[float, typer.Option(min=0.001, help="Per-request time limit.")] = 30.0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    log_conversations: Annotated[
        bool,
        typer.Option(
            "--log-conversations",
            help="Log every assistant conversation in the database, personal data masked.",
        ),
    ] = False,
) -> None:
    """Serve bundles over HTTP: classify, OpenAI-style models, keys, metering, playground at /."""
    from lmforge.serve.main import run
    from lmforge.serve.settings import ServeSettings

    run(
        ServeSettings(
            models=models,
            host=host,
            port=port,
            db=db,
            auth=not no_auth,
            device=device,
            max_batch_size=max_batch_size,
            max_wait_ms=max_wait_ms,
            max_queue=max_queue,
            max_body_bytes=max_body_bytes,
            max_tokens_cap=max_tokens_cap,
            timeout_s=timeout_s,
            log_conversations=log_conversations,
        )
    )


keys_app = typer.Typer(help="API keys of `lmforge serve`.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="The key's name (shown in usage and bills).")],
    quota_tokens: Annotated[
        int | None, typer.Option(min=1, help="Tokens per calendar month; none is unlimited.")
    ] = None,
    rpm: Annotated[
        int | None, typer.Option(min=1, help="Requests per minute; none is unlimited.")
    ] = None,
    db: DbOption = None,
) -> None:
    """Create a key and print it alone on stdout: it is shown this once (only a hash is kept)."""
    from lmforge.serve import admin

    typer.echo(admin.create_key(db, name, quota_tokens, rpm))


@keys_app.command("list")
def keys_list(db: DbOption = None) -> None:
    """List keys: name, first characters, limits, status (never the secret)."""
    from lmforge.serve import admin

    typer.echo(admin.keys_table(db), nl=False)


@keys_app.command("revoke")
def keys_revoke(name: Annotated[str, typer.Argument(help="The key's name.")], db: DbOption = None):
    """Revoke a key: a running server refuses it within 2 s; its usage stays on record."""
    from lmforge.serve import admin

    admin.revoke_key(db, name)
    typer.echo(f"revoked key '{name}'", err=True)


@app.command()
def usage(
    key: Annotated[str | None, typer.Option(help="Only this key.")] = None,
    since: Annotated[
        str | None, typer.Option(help="From this date (YYYY-MM-DD or ISO time, UTC).")
    ] = None,
    json_: Annotated[bool, typer.Option("--json", help="A JSON list, one object per key.")] = False,
    db: DbOption = None,
) -> None:
    """Usage per key for billing: requests, errors, prompt and completion tokens."""
    from lmforge.serve import admin

    typer.echo(admin.usage_report(db, key, since, json_), nl=False)


@app.command()
def handoffs(
    since: Annotated[
        str | None, typer.Option(help="From this date (YYYY-MM-DD or ISO time, UTC).")
    ] = None,
    json_: Annotated[bool, typer.Option("--json", help="A JSON list, one object each.")] = False,
    db: DbOption = None,
) -> None:
    """The assistant's handoff queue: conversations handed to a person (key, time, reason)."""
    from lmforge.serve import admin

    typer.echo(admin.handoffs_report(db, since, json_), nl=False)


_python_show_warning = warnings.showwarning


def _show_warning(
    message: Warning | str, category: type[Warning], *args: object, **kwargs: object
) -> None:
    """A config notice (a key that moved) is one line on stderr; other warnings keep Python's."""
    from lmforge.config import ConfigNotice

    if issubclass(category, ConfigNotice):
        print(f"notice: {message}", file=sys.stderr)
    else:
        _python_show_warning(message, category, *args, **kwargs)


def _leave_worker() -> None:
    """A torchrun worker whose work is done and saved leaves without running the interpreter's
    and C++'s exit-time destructors: the process group's and the store's threads, torn down
    there, can abort the finished worker (SIGABRT, "terminate called without an active
    exception"), which torchrun counts as a failed run."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def main() -> None:
    warnings.showwarning = _show_warning
    try:
        app()
    except SystemExit as done:
        if done.code in (0, None) and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            _leave_worker()
        raise
    except LmforgeError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
