"""Liveness, readiness and Prometheus metrics: open to all (no key), for probes and scrapers."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from lmforge.serve.state import get_state

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(request: Request) -> JSONResponse:
    models = get_state(request).models
    status = {
        model.name: "ready" if model.engine else ("failed" if model.load_error else "loading")
        for model in models
    }
    ready = models.ready
    body = {"status": "ready" if ready else "not ready", "models": status}
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics")
def metrics(request: Request) -> Response:
    return Response(get_state(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)
