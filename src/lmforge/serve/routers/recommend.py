"""POST /v1/recommend: the top k items for a known user, or after a history of item ids."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator

from lmforge.serve.billing.access import LimitedCaller, require_key
from lmforge.serve.state import get_state

MAX_K = 1000  # items per reply
MAX_HISTORY = 10_000  # item ids per history
ItemId = Annotated[str, Field(min_length=1, max_length=256)] | int

router = APIRouter(prefix="/v1", tags=["recommendation"], dependencies=[Depends(require_key)])


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field(max_length=128, description="A served model's name (GET /v1/models).")
    user: ItemId | None = Field(None, description="A user id the model knows (its history is "
                                "the bundle's); an unknown user gets the most popular items.")
    history: list[ItemId] | None = Field(
        None, min_length=1, max_length=MAX_HISTORY,
        description="Item ids in time order, oldest first, instead of a user.")
    k: int = Field(10, ge=1, le=MAX_K, description="Items to return.")
    exclude_seen: bool = Field(True, description="Leave out the items of the history.")

    @model_validator(mode="after")
    def _user_or_history(self) -> RecommendRequest:
        if (self.user is None) == (self.history is None):
            raise ValueError("give \"user\" or \"history\" (a list of item ids), not both")
        return self


@router.post("/recommend")
async def recommend(body: RecommendRequest, request: Request, caller: LimitedCaller) -> dict:
    state = get_state(request)
    user = None if body.user is None else str(body.user)
    history = None if body.history is None else [str(item) for item in body.history]
    async with state.metered(caller, "recommend", body.model) as call:
        served = state.models.require(body.model, "recommendation")
        # billed: the items read (a known user's whole history counts as read) and returned
        read = len(history) if history is not None else len(
            served.engine.recommender.catalogue.histories.get(user, []))
        await call.reserve(read + body.k)
        result = await served.engine.recommend(user, history, body.k, body.exclude_seen)
        call.prompt_tokens, call.completion_tokens = read, len(result["items"])
    state.metrics.tokens.labels(served.name, "in").inc(call.prompt_tokens)
    state.metrics.tokens.labels(served.name, "out").inc(call.completion_tokens)
    usage = {"prompt_tokens": call.prompt_tokens, "completion_tokens": call.completion_tokens,
             "total_tokens": call.prompt_tokens + call.completion_tokens}
    return {"object": "recommendation", "model": served.name, **result, "usage": usage}
