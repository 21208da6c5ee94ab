"""The data stage of preference tuning: a JSONL file whose rows hold `prompt` (a text, or a
`messages` list rendered with the chat template), `chosen` and `rejected` (two replies, the
first preferred). Each pair travels as one canonical JSON text, so the cleaning, duplicate and
split machinery of every other text serves it unchanged; a row that is not a usable pair is
counted in data_report.json by its reason.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

from lmforge.config import CleanConfig, DataConfig
from lmforge.data.conversations import to_messages
from lmforge.data.documents import (
    DocumentSplit,
    PreparedDocuments,
    clean_and_split_whole,
    clean_document,
)
from lmforge.data.prepare import rows_report
from lmforge.data.records import Records
from lmforge.data.sources import read_table
from lmforge.errors import LmforgeError

Messages = list[dict[str, str]]
COLUMNS = ("prompt", "chosen", "rejected")


@dataclass(frozen=True)
class PreferencePair:
    prompt: Messages  # the conversation so far; the replies continue it as the assistant
    chosen: str
    rejected: str

    def dump(self) -> str:
        return json.dumps({"prompt": self.prompt, "chosen": self.chosen,
                           "rejected": self.rejected}, ensure_ascii=False, separators=(",", ":"))

    @staticmethod
    def load(text: str) -> PreferencePair:
        row = json.loads(text)
        return PreferencePair(row["prompt"], row["chosen"], row["rejected"])

    def conversation(self, reply: str) -> Messages:
        return [*self.prompt, {"role": "assistant", "content": reply}]


def to_pair(row: dict[str, Any]) -> PreferencePair | str:
    """A row's pair, or the reason it is none (the drop reason data_report.json counts)."""
    prompt = row.get("prompt")
    if isinstance(prompt, str):
        if not prompt.strip():
            return "missing_prompt"
        messages: Messages | str = [{"role": "user", "content": prompt}]
    elif isinstance(prompt, list) and prompt:
        messages = to_messages({"messages": [*prompt, {"role": "assistant", "content": "-"}]},
                               "chat")
        if isinstance(messages, str):
            return f"prompt_{messages}"
        messages = messages[:-1]
        if messages[-1]["role"] == "assistant":
            return "prompt_ends_with_assistant"
    else:
        return "missing_prompt"
    replies = [row.get(key) for key in ("chosen", "rejected")]
    for key, reply in zip(("chosen", "rejected"), replies, strict=True):
        if not isinstance(reply, str) or not reply.strip():
            return f"missing_{key}"
    if replies[0].strip() == replies[1].strip():
        return "same_replies"
    return PreferencePair(messages, replies[0], replies[1])


def is_preference_file(path: str) -> bool:
    """Whether `path` is a JSONL table with prompt, chosen and rejected columns."""
    if not path.endswith((".jsonl", ".json")):
        return False
    try:
        columns = read_table(path, "jsonl", Records(source=path, format="jsonl")).columns
    except LmforgeError:
        return False
    return set(COLUMNS) <= set(columns)


def read_pairs(path: str) -> Records:
    records = Records(source=path, format="preference")
    table = read_table(path, "jsonl", records)
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise LmforgeError(f"{path}: preference data needs the columns prompt, chosen and "
                           f"rejected; missing: {', '.join(missing)}")
    for row_id, cells in table.rows:
        pair = to_pair(cells)
        if isinstance(pair, str):
            records.drops.add(pair, row_id)
        else:
            records.add(row_id, pair.dump(), None)
    if records.rows_read == 0:
        raise LmforgeError(f"{path} has no rows")
    return records


def clean_pair(text: str, clean: CleanConfig, pii: Counter[str] | None = None) -> str:
    """Every message and both replies cleaned as a document is; "" (counted as empty) when one
    is left empty or the replies become the same."""
    pair = PreferencePair.load(text)
    prompt = [{"role": m["role"], "content": clean_document(m["content"], clean, pii)}
              for m in pair.prompt]
    chosen = clean_document(pair.chosen, clean, pii)
    rejected = clean_document(pair.rejected, clean, pii)
    if any(not m["content"] for m in prompt) or not chosen or not rejected or chosen == rejected:
        return ""
    return PreferencePair(prompt, chosen, rejected).dump()


def prepare_pairs(cfg: DataConfig) -> PreparedDocuments:
    """Read cfg.path's pairs, clean them with cfg.clean (a duplicate is the same prompt with the
    same two replies) and split them whole with cfg.split."""
    records = read_pairs(cfg.path)
    cleaned, train, val, test = clean_and_split_whole(records, cfg, clean_pair, "pairs")
    report = rows_report(records, cleaned, unit="pairs") | {
        "kind": "preference",
        "split_by": "pair",
        "split_sizes": {"train": len(train), "val": len(val), "test": len(test)},
    }
    return PreparedDocuments(DocumentSplit(train), DocumentSplit(val), DocumentSplit(test),
                             "pair", report, records.data_hash)
