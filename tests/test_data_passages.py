"""A folder of documents cut into citable passages: at headings (their path kept), by length at
paragraph, sentence or word ends; HTML read as text; unreadable folders refused in one line."""

import pytest

from lmforge.data.passages import html_text, read_passages, split_passages
from lmforge.data.records import Records
from lmforge.errors import LmforgeError

POLICY = """Intro before any heading.

# Returns

Returns are free within 7 days.

## Shipping costs

We pay for shipping when the item is faulty.

# Invoices

Ask for an invoice on the order page.
"""


def passages_of(folder, max_chars=800):
    records = Records(source=str(folder), format="folder")
    return read_passages(str(folder), max_chars, records), records


def test_passages_start_at_headings_and_cite_file_heading_and_range(tmp_path):
    (tmp_path / "policy.md").write_text(POLICY, encoding="utf-8")
    passages, _ = passages_of(tmp_path)
    assert [p.heading for p in passages] == ["", "Returns", "Returns > Shipping costs",
                                             "Invoices"]
    for passage in passages:
        assert POLICY[passage.start:passage.end] == passage.text
    shipping = passages[2]
    assert shipping.text.startswith("## Shipping costs") and "faulty" in shipping.text
    assert shipping.citation == (f"policy.md § Returns > Shipping costs "
                                 f"[{shipping.start}:{shipping.end}]")
    assert passages[0].citation.startswith("policy.md [0:")


def test_long_sections_are_cut_at_sentence_or_word_ends_under_the_limit():
    text = "# 退货\n\n" + "签收后七天内可以无理由退货。" * 30 + "\n\n" + "word " * 200
    pieces = split_passages(text, 100)
    assert len(pieces) > 5
    for heading, start, end in pieces:
        assert heading == "退货" and end - start <= 100
        piece = text[start:end]
        assert piece.endswith(("。", "word")) and piece == piece.strip()
    covered = "".join(text[s:e] for _, s, e in pieces)
    assert covered.count("签收") == 30 and covered.count("word") == 200


def test_html_headings_and_text_without_scripts():
    page = ("<html><head><style>p {color: red}</style><script>var secret = 1;</script></head>"
            "<body><h1>Invoices</h1><p>Ask for an invoice &amp; a receipt.</p>"
            "<h2>VAT</h2><p>VAT invoices need a tax id.</p></body></html>")
    text = html_text(page)
    assert "secret" not in text and "color" not in text
    assert [h for h, _, _ in split_passages(text, 800)] == ["Invoices", "Invoices > VAT"]
    assert "Ask for an invoice & a receipt." in text


def test_folders_count_what_they_skip_and_refuse_having_nothing(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "notes.txt").write_text("Plain notes.\n", encoding="utf-8")
    (tmp_path / "page.html").write_text("<h1>Hi</h1><p>there</p>", encoding="utf-8")
    (tmp_path / "empty.md").write_text("  \n", encoding="utf-8")
    (tmp_path / "photo.png").write_bytes(b"\x89PNG")
    passages, records = passages_of(tmp_path)
    assert {p.file for p in passages} == {"sub/notes.txt", "page.html"}
    assert records.ignored_files.examples == ["photo.png"]
    assert records.drops.counts() == {"empty_document": 1}
    assert records.data_hash
    nothing = tmp_path / "nothing"
    nothing.mkdir()
    (nothing / "photo.png").write_bytes(b"\x89PNG")
    with pytest.raises(LmforgeError, match="no readable document.*1 other file"):
        passages_of(nothing)
    with pytest.raises(LmforgeError, match="not a folder"):
        passages_of(tmp_path / "missing")
