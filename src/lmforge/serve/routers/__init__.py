"""One router per concern; each owns its prefix and its auth dependency."""

from typing import Any


def list_response(model: str, kind: str, rows: list[dict[str, Any]], prompt_tokens: int,
                  completion_tokens: int = 0) -> dict[str, Any]:
    """The body every per-input endpoint answers with: one object of `kind` per input, in
    order, and the call's usage (OpenAI's list shape)."""
    return {"object": "list", "model": model,
            "data": [{"object": kind, "index": i, **row} for i, row in enumerate(rows)],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}
