"""The `lmforge` command: one small function per verb; the work happens in lmforge.pipeline."""

from __future__ import annotations

import sys
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
) -> None:
    """Train, evaluate and bundle the default classifier on the built-in review corpus."""
    from lmforge import pipeline

    pipeline.quickstart(out=out, fast=fast)


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
) -> None:
    """Train a model from CONFIG into a run directory."""
    if resume and force:
        raise LmforgeError("--resume and --force contradict each other; pass one")
    if nproc > 1:
        from lmforge.training.distributed import launch

        args = ["train", str(config), *(["--out", str(out)] if out else [])]
        args += [f"--set={item}" for item in set_ or []]
        args += ["--resume"] * resume + ["--force"] * force
        raise typer.Exit(launch(nproc, args))
    from lmforge import pipeline

    pipeline.train(config, out=out, overrides=set_ or [], resume=resume, force=force)


@app.command()
def evaluate(
    target: Annotated[Path, typer.Argument(help="A run directory or a bundle.")],
    data: Annotated[Path | None, typer.Option(help="A labelled file to evaluate on.")] = None,
) -> None:
    """Evaluate a model on its run's test split, or on a labelled file (--data)."""
    from lmforge import pipeline

    pipeline.evaluate(target, data=data)


@app.command()
def predict(
    bundle: Annotated[Path, typer.Argument(help="A bundle (a run's model/ folder) or a run.")],
    input: Annotated[
        str, typer.Option("--input", "-i", help="A .txt file, a table, or - for stdin.")
    ],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="JSONL file (default stdout).")
    ] = None,
) -> None:
    """Predict a label for every text of INPUT; one JSON object per line."""
    from lmforge import pipeline

    pipeline.predict(bundle, input, output)


def main() -> None:
    try:
        app()
    except LmforgeError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
