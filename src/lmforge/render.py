"""What the verbs show a person: progress notes and tables on stderr, and generated text on
stdout, one line per continuation. The verbs return values; this module prints them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, TextIO

from rich.console import Console


def console() -> Console:
    return Console(stderr=True, width=max(120, Console(stderr=True).width))


def notes(show: bool = True) -> Any:
    """A verb's `log`: each note one plain line on stderr (nothing when not shown)."""
    if not show:
        return lambda _note: None
    out = console()
    return lambda note: out.print(note, markup=False, highlight=False)


# Every character Python's str.splitlines() breaks a line at, and the backslash, as escapes.
_LINE_ESCAPES = str.maketrans({
    "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\v": "\\v", "\f": "\\f",
    **{c: f"\\x{ord(c):02x}" for c in "\x1c\x1d\x1e\x85"},
    **{c: f"\\u{ord(c):04x}" for c in "\u2028\u2029"},
})


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
