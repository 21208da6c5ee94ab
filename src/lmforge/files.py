"""Atomic writes: a crash at any instant leaves a file or a folder as it was or as it was meant to
be, never half written. Every JSON report, bundle and checkpoint goes through here.

A file is written under a temporary name in its own folder, flushed and fsynced, renamed over
the old one, and the folder fsynced so the rename lasts. A folder (a bundle, a checkpoint) is
written whole as `<name>.tmp` and then swapped in by two renames, keeping the old one as
`<name>.prev` in between.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

STAGED = ".tmp"  # suffix of a folder being written
PREVIOUS = ".prev"  # suffix of the folder it replaces, while the two are swapped


def fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def fsync_dir(path: Path) -> None:
    """Make the names in folder `path` (a file created or renamed there) last after a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(directory: Path) -> None:
    """fsync every file and folder under `directory`, and `directory` itself."""
    for folder, _, files in os.walk(directory, topdown=False):
        for name in files:
            fsync_file(Path(folder, name))
        fsync_dir(Path(folder))


def write_atomic(path: str | Path, data: bytes | str) -> None:
    """Write `data` (text as UTF-8) to `path`: a crash leaves the old file or the new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{STAGED}")  # unique: no clashes
    payload = data.encode("utf-8") if isinstance(data, str) else data
    try:
        with open(tmp, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_json_atomic(path: str | Path, value: Any) -> None:
    """`value` as indented UTF-8 JSON, written with write_atomic."""
    write_atomic(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def staged_copy(final: Path) -> Path:
    return final.with_name(final.name + STAGED)


def previous_copy(final: Path) -> Path:
    return final.with_name(final.name + PREVIOUS)


def replace_dir_atomic(staged: Path, final: Path, keep_previous: bool = False) -> None:
    """Put the folder `staged`, already durable (fsync_tree), in place of `final`.

    The old `final` is renamed to `<final>.prev` first, so a crash between the two renames
    leaves it there (restore_dir puts it back); it is removed at the end unless keep_previous.
    """
    previous = previous_copy(final)
    if final.exists():
        shutil.rmtree(previous, ignore_errors=True)
        final.rename(previous)
    staged.rename(final)
    fsync_dir(final.parent)
    if not keep_previous:
        shutil.rmtree(previous, ignore_errors=True)


def restore_dir(final: Path) -> None:
    """Undo a replace_dir_atomic killed between its two renames: with `final` missing, its
    `.prev` copy (the complete old folder) is put back. Nothing happens otherwise."""
    previous = previous_copy(final)
    if not final.exists() and previous.is_dir():
        previous.rename(final)
        fsync_dir(final.parent)


@contextmanager
def staged_dir(final: Path) -> Iterator[Path]:
    """A fresh, empty `<final>.tmp` to write a folder into. When the block finishes it is made
    durable and replaces `final` (replace_dir_atomic); when the block raises it is removed and
    `final` is left as it was."""
    staged = staged_copy(final)
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(parents=True)
    try:
        yield staged
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    fsync_tree(staged)
    replace_dir_atomic(staged, final)
