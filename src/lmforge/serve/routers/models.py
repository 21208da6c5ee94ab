"""GET /v1/models in the OpenAI shape, with each model's task beside it."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from lmforge.serve.billing.access import require_key
from lmforge.serve.registry import ServedModel
from lmforge.serve.state import get_state

router = APIRouter(prefix="/v1", tags=["models"], dependencies=[Depends(require_key)])


def _model_object(model: ServedModel) -> dict:
    return {
        "id": model.name,
        "object": "model",
        "created": model.created,
        "owned_by": "lmforge",
        "task": model.task,
        "ready": model.engine is not None,
    }


@router.get("/models")
def list_models(request: Request) -> dict:
    return {"object": "list", "data": [_model_object(m) for m in get_state(request).models]}


@router.get("/models/{model}")
def retrieve_model(model: str, request: Request) -> dict:
    return _model_object(get_state(request).models.get(model))
