"""Errors in the OpenAI shape: {"error": {"message", "type", "param", "code"}}, for every route."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

TYPE_BY_STATUS = {
    401: "authentication_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
    504: "server_error",
}


class APIError(Exception):
    """An error the client sees: HTTP status, message, and the OpenAI `code` and `param`."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.headers = headers or {}
        self.recorded = False  # set once a MeteredCall has recorded the call it ended

    def body(self) -> dict:
        return error_body(self.status, self.message, self.code, self.param)


def retry_after(seconds: float) -> dict[str, str]:
    """The Retry-After header: whole seconds, at least one, as HTTP says."""
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


def error_body(status: int, message: str, code: str | None, param: str | None) -> dict:
    kind = TYPE_BY_STATUS.get(status, "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(
    status: int,
    message: str,
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(error_body(status, message, code, param), status_code=status,
                        headers=headers)


# What the app calls when it refuses a call that no MeteredCall recorded (a body that fails
# validation, say): (request, status, the request's body if known).
OnRefused = Callable[[Request, int, Any], Awaitable[None]]


async def _api_error(request: Request, error: APIError) -> JSONResponse:
    if not error.recorded:
        await _on_refused(request, error.status, None)
    return error_response(error.status, error.message, error.code, error.param, error.headers)


async def _on_refused(request: Request, status: int, body: Any) -> None:
    hook: OnRefused | None = getattr(request.app.state, "on_refused", None)
    if hook is not None and 400 <= status < 500:
        await hook(request, status, body)


async def _http_error(_request: Request, error: HTTPException) -> JSONResponse:
    return error_response(error.status_code, str(error.detail), headers=error.headers)


async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    await _on_refused(request, 422, error.body)
    first = error.errors()[0]
    not_an_object = first.get("loc") == ("body",) and first.get("type") == "model_attributes_type"
    if first.get("type") == "json_invalid" or not_an_object:
        message = "the request body must be a JSON object, sent as Content-Type: application/json"
        return error_response(422, message, code="invalid_json")
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
    message = f"{where}: {first.get('msg')}" if where else str(first.get("msg"))
    return error_response(422, message, code="invalid_request", param=where or None)


async def _unexpected_error(_request: Request, error: Exception) -> JSONResponse:
    # The traceback goes to the server's log; the client learns only that it was not its fault.
    return error_response(500, "the server failed on this request", code="server_error")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(Exception, _unexpected_error)
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
