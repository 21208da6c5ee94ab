"""A folder of documents (.md, .txt, .html) cut into citable passages: at headings, then by
length at paragraph and sentence ends. Each passage names its file, its heading path and its
character range in the file's text (for .html, the text with the tags taken out)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from lmforge.data.records import Records, decode_file
from lmforge.errors import LmforgeError

DOCUMENT_SUFFIXES = (".md", ".markdown", ".txt", ".html", ".htm")
_MD_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$", re.MULTILINE)
_PARAGRAPH_END = re.compile(r"\n[ \t]*\n")
_SENTENCE_END = re.compile(r"[。！？!?；;]|\.(?=\s)")
_SPACE = re.compile(r"\s")


@dataclass
class Passage:
    file: str  # relative to the folder
    heading: str  # the headings above it, outermost first, joined by " > "; "" before any
    start: int  # character range [start, end) in the file's text
    end: int
    text: str

    @property
    def citation(self) -> str:
        where = f"{self.file} § {self.heading}" if self.heading else self.file
        return f"{where} [{self.start}:{self.end}]"


class _HtmlText(HTMLParser):
    """The text of an HTML page, block elements on lines of their own and h1–h6 written as
    Markdown headings, so one splitter cuts both."""

    BLOCKS = {"p", "div", "section", "article", "li", "ul", "ol", "table", "tr", "br", "pre",
              "blockquote", "header", "footer", "main", "h1", "h2", "h3", "h4", "h5", "h6"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in ("script", "style"):
            self.skipping += 1
        elif tag in self.BLOCKS:
            self.parts.append("\n\n")
            if re.fullmatch(r"h[1-6]", tag):
                self.parts.append("#" * int(tag[1]) + " ")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self.skipping = max(0, self.skipping - 1)
        elif tag in self.BLOCKS:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if not self.skipping:
            self.parts.append(re.sub(r"\s+", " ", data) if self.parts else data.lstrip())

    def text(self) -> str:
        lines = [line.strip() for line in "".join(self.parts).split("\n")]
        return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def html_text(html: str) -> str:
    parser = _HtmlText()
    parser.feed(html)
    parser.close()
    return parser.text()


def split_passages(text: str, max_chars: int) -> list[tuple[str, int, int]]:
    """(heading path, start, end) of each passage of a text: a new passage at every Markdown
    heading (the heading line is part of its passage), and a section longer than max_chars cut
    at the last paragraph end, else sentence end, else character, that keeps it under."""
    headings = list(_MD_HEADING.finditer(text))
    bounds = [0] + [m.start() for m in headings] + [len(text)]
    path: list[tuple[int, str]] = []  # (level, title) of the headings above
    out = []
    for i, (start, end) in enumerate(zip(bounds, bounds[1:], strict=False)):
        if i > 0:
            match = headings[i - 1]
            level = len(match.group(1))
            path = [(lv, title) for lv, title in path if lv < level] + [(level,
                                                                         match.group(2))]
        heading = " > ".join(title for _, title in path)
        for piece_start, piece_end in _cut(text, start, end, max_chars):
            out.append((heading, piece_start, piece_end))
    return out


def _cut(text: str, start: int, end: int, max_chars: int) -> list[tuple[int, int]]:
    """[start, end) in pieces of at most max_chars, blank ends trimmed, blank pieces dropped."""
    pieces = []
    while start < end:
        stop = end
        if end - start > max_chars:
            window = text[start:start + max_chars]
            stop = start + max_chars
            for pattern in (_PARAGRAPH_END, _SENTENCE_END, _SPACE):
                cuts = [m.end() for m in pattern.finditer(window) if m.end() > max_chars // 2]
                if cuts:
                    stop = start + cuts[-1]
                    break
        left, right = start, stop
        while left < right and text[left].isspace():
            left += 1
        while right > left and text[right - 1].isspace():
            right -= 1
        if right > left:
            pieces.append((left, right))
        start = stop
    return pieces


def read_passages(folder: str, max_chars: int, records: Records) -> list[Passage]:
    """Every .md, .txt and .html file below `folder` (sorted), cut into passages. Other files
    are counted in records.ignored_files, undecodable ones in records.undecodable; records'
    data_hash covers every file read, by name and bytes."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise LmforgeError(f"{folder}: not a folder (assistant.documents)")
    digest = hashlib.sha256()
    passages: list[Passage] = []
    files = 0
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        name = path.relative_to(root).as_posix()
        if path.suffix.lower() not in DOCUMENT_SUFFIXES or name.startswith("."):
            records.ignored_files.add(name)
            continue
        data = path.read_bytes()
        digest.update(name.encode() + b"\0" + data + b"\0")
        text = decode_file(records, name, data)
        if not text.strip():
            records.drops.add("empty_document", name)
            continue
        if path.suffix.lower() in (".html", ".htm"):
            text = html_text(text)
        files += 1
        passages += [Passage(name, heading, start, end, text[start:end])
                     for heading, start, end in split_passages(text, max_chars)]
    if not passages:
        raise LmforgeError(f"{folder}: no readable document (.md, .txt or .html with text) "
                           f"in it; {records.ignored_files.count} other file(s) ignored")
    records.data_hash = digest.hexdigest()
    records.rows_read += files
    return passages
