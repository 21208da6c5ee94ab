"""The assistant's built-in knowledge bases, read from installed packages at run time: the
project's own Chinese online-shop FAQ (CC0, shipped inside lmforge) and chatterbot-corpus's
English tech-support pairs with the project's own paraphrases of their questions; and the
out-of-scope queries that go with each."""

from __future__ import annotations

import hashlib
import json
from importlib import resources

from lmforge.data.prepare import read_texts
from lmforge.data.records import Records
from lmforge.data.tables import Table
from lmforge.errors import LmforgeError

SHOP_FAQ = "builtin:shop-faq-zh"
SHOP_OUT_OF_SCOPE = "builtin:shop-out-of-scope-zh"
TECH_SUPPORT = "builtin:tech-support-en"
TECH_SUPPORT_OUT_OF_SCOPE = "builtin:tech-support-out-of-scope-en"
OUT_OF_SCOPE_FILES = {SHOP_OUT_OF_SCOPE: "shop_out_of_scope_zh.txt",
                      TECH_SUPPORT_OUT_OF_SCOPE: "tech_support_out_of_scope_en.txt"}
FAQ_COLUMNS = ["id", "question", "answer"]
OWN_OUT_OF_SCOPE = {SHOP_FAQ: SHOP_OUT_OF_SCOPE, TECH_SUPPORT: TECH_SUPPORT_OUT_OF_SCOPE}


def is_builtin_faq(path: str) -> bool:
    return path in (SHOP_FAQ, TECH_SUPPORT)


def own_out_of_scope(path: str) -> str | None:
    """The out-of-scope queries a built-in knowledge base comes with (None for a file)."""
    return OWN_OUT_OF_SCOPE.get(path)


def _asset(name: str) -> bytes:
    return resources.files("lmforge.data").joinpath("builtin_assets", name).read_bytes()


def read_builtin_faq(name: str, records: Records) -> Table:
    """A built-in knowledge base as a FAQ table (id, question, answer; one row per question),
    setting records.data_hash."""
    if name == SHOP_FAQ:
        data = _asset("shop_faq_zh.jsonl")
        entries = [json.loads(line) for line in data.decode("utf-8").splitlines() if line]
        sources = [data]
    elif name == TECH_SUPPORT:
        entries, sources = _tech_support()
    else:
        raise LmforgeError(f"unknown built-in knowledge base '{name}'; known: {SHOP_FAQ}, "
                           f"{TECH_SUPPORT}")
    records.data_hash = hashlib.sha256(b"\0".join(sources)).hexdigest()
    cells = [{"id": entry["id"], "question": question, "answer": entry["answer"]}
             for entry in entries for question in entry["questions"]]
    return Table(FAQ_COLUMNS, list(enumerate(cells, start=1)))


def _tech_support() -> tuple[list[dict], list[bytes]]:
    """chatterbot-corpus's tech-support conversations (each a question and its answer, many
    repeated) as one entry per answer, its questions joined by the project's paraphrases."""
    import yaml

    try:
        corpus = resources.files("chatterbot_corpus").joinpath(
            "data", "english", "tech_support.yml").read_bytes()
    except (ModuleNotFoundError, FileNotFoundError):
        raise LmforgeError(f"{TECH_SUPPORT} needs the 'chatterbot-corpus' package: "
                           "pip install chatterbot-corpus") from None
    paraphrases_data = _asset("tech_support_en_paraphrases.jsonl")
    paraphrases = {row["question"]: row["paraphrases"] for row in map(
        json.loads, paraphrases_data.decode("utf-8").splitlines())}
    entries: dict[str, dict] = {}
    for question, answer, *_ in yaml.safe_load(corpus)["conversations"]:
        entry = entries.setdefault(answer, {"id": f"tech-support-{len(entries) + 1}",
                                            "answer": answer, "questions": []})
        for asked in [question, *paraphrases.get(question, [])]:
            if asked not in entry["questions"]:
                entry["questions"].append(asked)
    return list(entries.values()), [corpus, paraphrases_data]


def read_queries(path: str, text_column: str) -> list[str]:
    """Queries, one per line or a table's text column: a file, or a built-in set."""
    if path in OUT_OF_SCOPE_FILES:
        text = _asset(OUT_OF_SCOPE_FILES[path]).decode("utf-8")
        return [line.strip() for line in text.splitlines() if line.strip()]
    if path.startswith("builtin:"):
        raise LmforgeError(f"unknown built-in query set '{path}'; known: "
                           f"{', '.join(OUT_OF_SCOPE_FILES)}")
    return read_texts(path, text_column)[0]
