"""GET /: the playground page, one HTML file with inline JS (no build step). The page itself
needs no key; it asks for one and sends it with every /v1 call it makes."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

PAGE = Path(__file__).resolve().parent.parent / "playground.html"

router = APIRouter(tags=["playground"])


@router.get("/", response_class=HTMLResponse)
def playground() -> HTMLResponse:
    return HTMLResponse(PAGE.read_text(encoding="utf-8"))
