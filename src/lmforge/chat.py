"""Chat templates: messages rendered into one text by the tokenizer's own Jinja template (or
lmforge's default), the one rendering used at training, by `lmforge generate --chat` and by
/v1/chat/completions; and a conversation encoded with the tokens its assistant turns train on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lmforge.errors import LmforgeError
from lmforge.tokenization import END_OF_TEXT, TextTokenizer

Messages = list[dict[str, str]]
ROLES = ("system", "user", "assistant")

# lmforge's template for a model whose tokenizer has none: the conversation starts with the
# beginning-of-text token, or without one the end-of-text token (which starts every document
# of lmforge's own generation), each message is "role: content" on its line, and an
# assistant's message ends with the end-of-text token, so a model trained on it learns to stop.
# A prompt ends in "assistant:".
DEFAULT_CHAT_TEMPLATE = (
    "{%- if bos_token is defined and bos_token -%}{{- bos_token -}}"
    "{%- elif eos_token is defined and eos_token -%}{{- eos_token -}}{%- endif -%}"
    "{%- for message in messages -%}"
    "{{- message['role'] + ': ' + message['content'] -}}"
    "{%- if message['role'] == 'assistant' -%}{{- eos_token -}}{%- endif -%}"
    "{{- '\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'assistant:' -}}{%- endif -%}"
)


@dataclass(frozen=True)
class ChatTemplate:
    """A Jinja chat template and the special tokens it may name (bos_token, eos_token, ...).
    `legacy`: the format strings ({"message", "generation_prompt"}) of bundles written before
    templates were Jinja, rendered as they were then."""

    source: str
    special: dict[str, str]
    legacy: dict[str, str] | None = None

    def render(self, messages: Messages, add_generation_prompt: bool = False) -> str:
        """The messages as one text; with add_generation_prompt, ending where the assistant's
        reply starts."""
        if self.legacy is not None:
            lines = [self.legacy["message"].format(role=m["role"], content=m["content"])
                     for m in messages]
            tail = self.legacy["generation_prompt"] if add_generation_prompt else ""
            start = self.special.get("bos_token") or self.special.get("eos_token", "")
            return start + "".join(lines) + tail
        try:
            return _render_jinja(self.source, messages, add_generation_prompt, self.special)
        except Exception as error:  # jinja2's TemplateError, or raise_exception in a template
            reason = " ".join(str(error).split())
            raise LmforgeError(f"the chat template cannot render these messages: {reason}") \
                from None


def _render_jinja(
    source: str, messages: Messages, add_generation_prompt: bool, special: dict[str, str]
) -> str:
    """transformers' own rendering (what apply_chat_template runs); before transformers 4.48,
    which lacks it, the same sandboxed Jinja environment made here."""
    try:
        from transformers.utils.chat_template_utils import render_jinja_template
    except ImportError:
        from jinja2.exceptions import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str) -> None:
            raise TemplateError(message)

        environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        environment.globals["raise_exception"] = raise_exception
        return environment.from_string(source).render(
            messages=messages, add_generation_prompt=add_generation_prompt, **special)
    rendered, _ = render_jinja_template([messages], chat_template=source,
                                        add_generation_prompt=add_generation_prompt, **special)
    return rendered[0]


def special_tokens(tokenizer: TextTokenizer) -> dict[str, str]:
    """The special tokens a template may name (as transformers gives them): a pretrained
    tokenizer's own; lmforge's tokenizers have the end-of-text token."""
    if tokenizer.hf is None:
        return {"eos_token": END_OF_TEXT}
    return {key: value for key, value in tokenizer.hf.special_tokens_map.items()
            if isinstance(value, str)}


def own_template(tokenizer: TextTokenizer) -> str | None:
    """The pretrained tokenizer's own chat template, if it has one."""
    template = getattr(tokenizer.hf, "chat_template", None) if tokenizer.hf is not None else None
    return template if isinstance(template, str) and template.strip() else None


def chat_template(tokenizer: TextTokenizer, stored: str | dict[str, str] | None = None
                  ) -> ChatTemplate:
    """The template to render with: `stored` (a bundle's lmforge.json "chat_template"), else
    the tokenizer's own, else DEFAULT_CHAT_TEMPLATE."""
    special = special_tokens(tokenizer)
    if isinstance(stored, dict):
        if not {"message", "generation_prompt"} <= stored.keys():
            raise LmforgeError("lmforge.json: 'chat_template' format strings need 'message' and "
                               "'generation_prompt'")
        return ChatTemplate("", special, legacy=stored)
    return ChatTemplate(stored or own_template(tokenizer) or DEFAULT_CHAT_TEMPLATE, special)


@dataclass
class EncodedConversation:
    """A conversation's token ids; `trained[i]` says token i is part of an assistant reply
    (the loss predicts it); `turn_ends` are the token counts at which each assistant reply
    ends, where the conversation may be cut."""

    ids: np.ndarray
    trained: np.ndarray
    turn_ends: list[int]


def encode_conversation(
    tokenizer: TextTokenizer, template: ChatTemplate, messages: Messages
) -> EncodedConversation:
    """The rendered conversation's tokens, with every assistant reply's tokens marked: the
    characters a reply adds to the text rendered up to its generation prompt (its content and
    whatever closes the turn, the end-of-text token say)."""
    text = template.render(messages)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant" or message.get("weight", 1) == 0:
            continue  # (OpenAI's weight 0: a reply kept as context, not trained on)
        prompt = template.render(messages[:i], add_generation_prompt=True)
        upto = template.render(messages[: i + 1])
        if not (text.startswith(upto) and upto.startswith(prompt)):
            raise LmforgeError(
                "the chat template renders earlier turns differently once later ones follow, "
                "so the assistant's tokens cannot be found; train on one reply per "
                "conversation, or give the tokenizer another template"
            )
        spans.append((len(prompt), len(upto)))
    ids, offsets = tokenizer.encode_offsets(text)
    starts = np.asarray([s for s, _ in offsets], dtype=np.int64)
    trained = np.zeros(len(ids), dtype=bool)
    turn_ends = []
    for start, end in spans:
        inside = (starts >= start) & (starts < end)
        trained |= inside
        if inside.any():
            turn_ends.append(int(np.flatnonzero(inside)[-1]) + 1)
    return EncodedConversation(ids, trained, turn_ends)


def fit_context(encoded: EncodedConversation, length: int) -> EncodedConversation | None:
    """The conversation cut after its last assistant reply that ends within `length` tokens,
    or None when even its first reply does not."""
    if len(encoded.ids) <= length:
        return encoded
    ends = [end for end in encoded.turn_ends if end <= length]
    if not ends:
        return None
    cut = ends[-1]
    return EncodedConversation(encoded.ids[:cut], encoded.trained[:cut], ends)
