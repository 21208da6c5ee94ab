"""The data stage of chat and instruction fine-tuning: a JSONL file whose rows hold `messages`
(OpenAI's fine-tuning shape) or `instruction` (+ `input`) and `output`, read into
conversations, cleaned message by message, deduplicated and split whole (no conversation in two
splits). A row that is not a usable conversation is counted in data_report.json by its reason.

A conversation travels as one canonical JSON text (its list of {role, content}), so the
cleaning, duplicate and split machinery of every other text serves it unchanged.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from lmforge.chat import ROLES
from lmforge.config import CleanConfig, DataConfig
from lmforge.data.builtin import is_builtin
from lmforge.data.clean import clean_rows
from lmforge.data.documents import (
    DocumentSplit,
    PreparedDocuments,
    clean_and_split_whole,
    clean_document,
)
from lmforge.data.prepare import rows_report
from lmforge.data.records import Records
from lmforge.data.report import length_quantiles
from lmforge.data.sources import read_table, resolve_format
from lmforge.errors import LmforgeError

CHAT, INSTRUCTION = "chat", "instruction"


def conversation_kind(path: str, fmt: str = "auto") -> str | None:
    """"chat" for a JSONL file with a `messages` column, "instruction" for one with
    `instruction` and `output` columns, None for any other data (plain text, other tables)."""
    if is_builtin(path) or resolve_format(path, fmt) != "jsonl":
        return None
    columns = read_table(path, "jsonl", Records(source=path, format="jsonl")).columns
    if "messages" in columns:
        return CHAT
    if {"instruction", "output"} <= set(columns):
        return INSTRUCTION
    return None


def to_messages(row: dict[str, Any], kind: str) -> list[dict[str, str]] | str:
    """A row's conversation, or the reason it is none (the drop reason data_report.json
    counts)."""
    if kind == INSTRUCTION:
        instruction, given, output = row.get("instruction"), row.get("input"), row.get("output")
        if not isinstance(instruction, str) or not instruction.strip():
            return "missing_instruction"
        if not isinstance(output, str) or not output.strip():
            return "missing_output"
        if given is not None and not isinstance(given, str):
            return "invalid_input"
        prompt = instruction.strip() + (f"\n\n{given.strip()}" if given and given.strip() else "")
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        return "missing_messages"
    out = []
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            return "unknown_role"
        content = _text(message.get("content"))
        if content is None:
            return "invalid_content"
        kept = {"role": message["role"], "content": content}
        if "weight" in message:  # OpenAI's: an assistant message of weight 0 is not trained on
            if message["role"] != "assistant" or message["weight"] not in (0, 1):
                return "invalid_weight"
            kept["weight"] = int(message["weight"])
        out.append(kept)
    if not any(m["role"] == "assistant" and m["content"].strip() and m.get("weight", 1)
               for m in out):
        return "no_assistant_reply"
    return out


def _text(content: Any) -> str | None:
    """A message's text: a string, or OpenAI's list of {"type": "text", "text"} parts joined;
    None for anything else."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content and all(
        isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
        for part in content
    ):
        return "".join(part["text"] for part in content)
    return None


def read_conversations(path: str, kind: str) -> Records:
    """The rows of a chat or instruction JSONL file as conversations (canonical JSON texts)."""
    records = Records(source=path, format=kind)
    table = read_table(path, "jsonl", records)
    for row_id, cells in table.rows:
        messages = to_messages(cells, kind)
        if isinstance(messages, str):
            records.drops.add(messages, row_id)
        else:
            records.add(row_id, dump_conversation(messages), None)
    if records.rows_read == 0:
        raise LmforgeError(f"{path} has no rows")
    return records


def dump_conversation(messages: list[dict[str, str]]) -> str:
    return json.dumps(messages, ensure_ascii=False, separators=(",", ":"))


def load_conversation(text: str) -> list[dict[str, str]]:
    return json.loads(text)


def clean_conversation(text: str, clean: CleanConfig, pii: Counter[str] | None = None) -> str:
    """Each message's content cleaned as a document is; "" (counted as empty) when a message
    is left empty or no assistant reply is left."""
    messages = [m | {"content": clean_document(m["content"], clean, pii)}
                for m in load_conversation(text)]
    if any(not m["content"] for m in messages) or messages[-1]["role"] == "system":
        return ""
    return dump_conversation(messages)


def prepare_conversations(cfg: DataConfig, kind: str) -> PreparedDocuments:
    """Read cfg.path's conversations, clean them with cfg.clean (duplicates are whole
    conversations) and split them whole with cfg.split."""
    records = read_conversations(cfg.path, kind)
    cleaned, train, val, test = clean_and_split_whole(records, cfg, clean_conversation,
                                                      "conversations")
    turns = [sum(m["role"] == "assistant" for m in load_conversation(t)) for t in cleaned.texts]
    report = rows_report(records, cleaned, unit="conversations") | {
        "kind": kind,
        "split_by": "conversation",
        "split_sizes": {"train": len(train), "val": len(val), "test": len(test)},
        "assistant_turns": sum(turns),
        "length_chars": length_quantiles(cleaned.texts),
    }
    return PreparedDocuments(DocumentSplit(train), DocumentSplit(val), DocumentSplit(test),
                             "conversation", report, records.data_hash)


def read_eval_conversations(path: str, clean: CleanConfig) -> list[str]:
    """The conversations of a chat or instruction JSONL file to evaluate on: read and cleaned as
    training data is, not split."""
    kind = conversation_kind(path)
    if kind is None:
        raise LmforgeError(f"{path}: a chat model is evaluated on conversations: a JSONL file of "
                           "rows with 'messages', or with 'instruction' and 'output'")
    cleaned = clean_rows(read_conversations(path, kind), clean, clean_conversation)
    if not cleaned.texts:
        raise LmforgeError(f"{path}: no conversations left after cleaning")
    return cleaned.texts
