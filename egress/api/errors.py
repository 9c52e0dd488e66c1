"""The API's errors: every 4xx and 5xx is ``{"error": {"field": ..., "message": ...}}`` naming the parameter at
fault (docs/api.md); validation errors say which parameter and why; Redis failures are 503; anything else is a
logged 500 that says nothing of the internals."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from egress.record.store import STORE_ERRORS

log = logging.getLogger(__name__)

ERROR_TEXTS: Final = {
    400: "bad request",
    401: "a valid bearer token is required",
    403: "forbidden",
    404: "not found",
    405: "method not allowed",
    413: "request body too large",
    429: "too many requests",
    503: "Redis unavailable",
}


class ApiError(HTTPException):
    """An HTTP error with the parameter at fault."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(status, message)
        self.field = field


def error_response(status: int, message: str, field: str | None = None, **extra: Any) -> JSONResponse:
    body: dict[str, Any] = {"error": {"field": field, "message": message}, **extra}
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, headers=headers)


def _field(loc: Sequence[str | int]) -> str | None:
    parts = list(loc[1:]) if loc and loc[0] in {"query", "path", "body", "header"} else list(loc)
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or (str(loc[0]) if loc else None)


def _problem(error: dict[str, Any]) -> dict[str, str | None]:
    kind, message = error.get("type", ""), str(error.get("msg", "invalid"))
    if kind == "extra_forbidden":
        message = "unknown parameter" if error["loc"][:1] == ("query",) else "unknown field"
    elif kind == "json_invalid":
        return {"field": "body", "message": f"not valid JSON: {error.get('ctx', {}).get('error', message)}"}
    message = message.removeprefix("Value error, ")
    return {"field": _field(error.get("loc", ())), "message": message}


def _is_store_error(error: BaseException) -> bool:
    """Redis errors (redis-py's, which only the store imports) and socket errors."""
    return isinstance(error, STORE_ERRORS)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, error: RequestValidationError) -> JSONResponse:
        problems = [_problem(item) for item in error.errors()]
        extra = {"problems": problems} if len(problems) > 1 else {}
        return error_response(400, problems[0]["message"] or "invalid", problems[0]["field"], **extra)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, error: HTTPException) -> JSONResponse:
        message = error.detail if isinstance(error.detail, str) else ERROR_TEXTS.get(error.status_code, "error")
        return error_response(error.status_code, message, getattr(error, "field", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        if _is_store_error(error):
            log.warning("%s %s: Redis failed (%s: %s)", request.method, request.url.path, type(error).__name__, error)
            return error_response(503, f"Redis unavailable ({type(error).__name__})")
        log.exception("%s %s failed", request.method, request.url.path)
        return error_response(500, "internal error (logged)")
