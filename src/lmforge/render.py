"""What the verbs show a person: progress notes and tables on stderr, and generated text on
stdout, one line per continuation. The verbs return values; this module prints them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, TextIO

from rich.console import Console
from rich.text import Text

# Piped or redirected, a line is as long as it is: a log file or `grep` gets one line per note.
UNBROKEN_WIDTH = 100_000


def console() -> Console:
    """Where the verbs print: stderr. On a terminal, lines wrap at its width (120 at least);
    elsewhere no line is ever broken, not even a table's title (tables keep their width)."""
    terminal = Console(stderr=True)
    if terminal.is_terminal:
        return Console(stderr=True, width=max(120, terminal.width))
    return Console(stderr=True, width=UNBROKEN_WIDTH, soft_wrap=True)


def notes(show: bool = True) -> Any:
    """A verb's `log`: each note one plain line on stderr (nothing when not shown)."""
    if not show:
        return lambda _note: None
    out = console()
    return lambda note: out.print(note, markup=False, highlight=False)


# The cleaning rules of data_report.json's "dropped", as a person names them; the others are
# rows that could not be read (a bad CSV row, a missing cell, invalid JSON, ...).
_CLEANING_RULES = {"duplicate": "duplicates", "conflicting_labels": "conflicting labels",
                   "empty": "empty", "too_short": "too short", "too_long": "too long"}


def data_summary(report: dict[str, Any], unit: str = "rows") -> str:
    """data_report.json's counts in one line: read, dropped by each rule, kept, the split.
    `unit` is what a row is ("rows", "documents")."""
    dropped = report["dropped"]
    rules = [f"{dropped[rule]:,} {name}" for rule, name in _CLEANING_RULES.items()
             if rule in dropped and (dropped[rule] or rule != "too_short")]
    broken = {reason: n for reason, n in dropped.items() if reason not in _CLEANING_RULES}
    detail = ", ".join(f"{n:,} {reason}" for reason, n in broken.items())
    rules.append(f"{sum(broken.values()):,} broken" + (f" ({detail})" if detail else ""))
    sizes = report["split_sizes"]
    return (f"data: {report[f'{unit}_read']:,} {unit} read; dropped {', '.join(rules)}; "
            f"{report[f'{unit}_kept']:,} kept: {sizes['train']:,} train / {sizes['val']:,} val / "
            f"{sizes['test']:,} test")


# Every character Python's str.splitlines() breaks a line at, and the backslash, as escapes.
_LINE_ESCAPES = str.maketrans({
    "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\v": "\\v", "\f": "\\f",
    **{c: f"\\x{ord(c):02x}" for c in "\x1c\x1d\x1e\x85"},
    **{c: f"\\u{ord(c):04x}" for c in "\u2028\u2029"},
})


def with_interval(row: dict[str, Any], key: str) -> str:
    """row[key] and its 95% interval (row[key + "_ci95"]) as "0.812 [0.79, 0.83]"; "-" if
    the figure is missing."""
    value = row.get(key)
    if value is None:
        return "-"
    interval = row.get(f"{key}_ci95")
    return f"{value:.3f}" + (f" [{interval[0]:.2f}, {interval[1]:.2f}]" if interval else "")


def one_line(text: str) -> str:
    """A continuation's text kept on its line: line breaks and backslashes escaped."""
    return text.translate(_LINE_ESCAPES)


def write_in_order(events: Iterator[Any], n: int, sink: TextIO) -> list[str]:
    """Stream events of n prompts to `sink` in prompt order: the first unfinished prompt's text
    as it comes, the others' kept until their turn; one line per continuation (see one_line).
    Returns the texts as generated."""
    texts, held, done, current = [""] * n, [[] for _ in range(n)], set(), 0
    for event in events:
        texts[event.index] += event.text
        if event.index == current:
            sink.write(one_line(event.text))
            sink.flush()
        else:
            held[event.index].append(one_line(event.text))
        if event.finish_reason is not None:
            done.add(event.index)
        while current in done:
            sink.write("\n")
            current += 1
            if current < n:
                sink.write("".join(held[current]))
            sink.flush()
    return texts


def _figure(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1e4 else f"{value:,.0f}"
    return "-" if value is None else str(value)


def cv_table(report: dict[str, Any], out: Console) -> None:
    """cv.json as a table: one row per fold, then the mean and std of each figure."""
    from rich.table import Table

    names = list(report["mean"])
    table = Table(title=f"{report['k']}-fold cross-validation (held-out folds of train + val)")
    for column in ("fold", "train", "held out", *names):
        table.add_column(column, justify="right")
    for fold in report["folds"]:
        table.add_row(str(fold["fold"]), str(fold["train_rows"]), str(fold["held_out_rows"]),
                      *(_figure(fold["metrics"].get(name)) for name in names))
    for row in ("mean", "std"):
        table.add_row(row, "", "", *(_figure(report[row][name]) for name in names))
    out.print(table)
    out.print(f"the bundle is refit on all {report['refit']['rows']:,} train and val rows"
              + (f" for {report['refit']['max_steps']} steps" if report["refit"]["max_steps"]
                 else ""))


def tune_table(report: dict[str, Any], out: Console) -> None:
    """A study's trials as a table, and where the best config is."""
    from rich.table import Table

    names = sorted({name for trial in report["trials"] for name in trial["params"]})
    table = Table(title=f"study {report['study']}: val {report['metric']} ({report['direction']})")
    for column in ("trial", "state", report["metric"], *names):
        table.add_column(column, justify="right")
    for trial in report["trials"]:
        table.add_row(str(trial["number"]), trial["state"], _figure(trial["value"]),
                      *(_figure(trial["params"].get(name)) for name in names))
    out.print(table)
    best = report["best"]
    out.print(f"best: trial {best['number']} ({_figure(best['value'])}); its config: "
              f"{best['config']}" if best else "no trial completed yet")


def attributions(rows: list[dict[str, Any]], out: Console) -> None:
    """Each explained row's label, then its tokens shaded by score: green for the label, red
    against it, the stronger the larger |score| is within the text."""
    for row in rows:
        found = row["attributions"]
        top = max((abs(a["score"]) for a in found), default=0.0) or 1.0
        line = Text(f"{row['label']}: ")
        for a in found:
            strength = int(40 + 215 * min(abs(a["score"]) / top, 1.0))
            colour = f"rgb(0,{strength},0)" if a["score"] >= 0 else f"rgb({strength},0,0)"
            line.append(a["token"], style=f"on {colour}")
            line.append(" ")
        out.print(line)
