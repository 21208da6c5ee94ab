"""The app: `create_app(settings)` assembles the routers; `run(settings)` serves it with uvicorn."""

from __future__ import annotations

import errno
import logging
import socket

import uvicorn
from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from lmforge.errors import LmforgeError
from lmforge.serve.billing.access import record_refused
from lmforge.serve.billing.database import ApiKey, open_database
from lmforge.serve.billing.keys import KeyCache
from lmforge.serve.billing.ledger import TokenLedger
from lmforge.serve.billing.metered import UsageWriter
from lmforge.serve.errors import install_error_handlers
from lmforge.serve.limits import BodySizeLimit
from lmforge.serve.metrics import MetricsMiddleware
from lmforge.serve.registry import ModelRegistry
from lmforge.serve.routers import (
    classify,
    completions,
    health,
    models,
    playground,
    predict,
    recommend,
    translations,
    usage,
)
from lmforge.serve.settings import ServeSettings
from lmforge.serve.state import ServerState, lifespan
from lmforge.version import __version__

log = logging.getLogger("lmforge.serve")

# The routes open to all; every other route must depend on billing.access.require_key.
PUBLIC_PATHS = frozenset({"/", "/healthz", "/readyz", "/metrics"})


def create_app(settings: ServeSettings) -> FastAPI:
    """Check the bundles and the database, then assemble the app (models load at startup)."""
    db = open_database(settings.db)
    registry = ModelRegistry(settings.models)
    ledger = TokenLedger(db, settings.cache_s)
    keys = KeyCache(db, settings.cache_s)
    state = ServerState(settings, db, registry, UsageWriter(db, ledger.add), keys, ledger)
    # No /docs or /openapi.json: they would be routes outside the key check.
    app = FastAPI(
        title="lmforge",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.server = state
    app.state.on_refused = record_refused
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)  # sees every status but one:
    app.add_middleware(classify.RefuseWhenSaturated, state=state)  # outermost, counts its own
    for router in (health, playground, models, classify, completions, recommend, translations,
                   predict, usage):
        app.include_router(router.router)
    return app


def run(settings: ServeSettings) -> None:
    """Serve until SIGTERM or Ctrl-C; in-flight requests finish first (up to the timeout)."""
    check_address(settings.host, settings.port)
    app = create_app(settings)
    state: ServerState = app.state.server
    _log_startup(state)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        timeout_graceful_shutdown=int(settings.timeout_s) + 5,
        log_level="info",
    )


def check_address(host: str, port: int) -> None:
    """Refuse an address the server could not listen on before anything loads: one line,
    rather than uvicorn's startup messages followed by its bind error. The probe binds as
    uvicorn does (SO_REUSEADDR, IPv6 when the host holds a colon)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise LmforgeError(f"port {port} on {host} is already in use; "
                                   "pass --port with a free one") from None
            if error.errno == errno.EACCES:
                raise LmforgeError(f"port {port} needs administrator rights; pass --port "
                                   "with one above 1023") from None
            reason = error.strerror or str(error)
            raise LmforgeError(f"cannot listen on {host}:{port} ({reason}); check --host "
                               "and --port") from None


def _log_startup(state: ServerState) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(message)s")
    for model in state.models:
        log.info("serving %s (%s) from %s", model.name, model.task, model.bundle_dir)
    log.info("keys and usage in %s", state.db.url.render_as_string(hide_password=True))
    if not state.settings.auth:
        log.warning("--no-auth: every /v1 route is open; calls are metered as 'anonymous'")
        return
    with Session(state.db) as session:
        active = session.scalar(select(func.count()).where(ApiKey.revoked_at.is_(None)))
    if not active:
        log.warning("no API keys yet: create one with `lmforge keys create NAME`")
