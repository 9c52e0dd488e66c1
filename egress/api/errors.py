"""The API's errors: every 4xx and 5xx is ``{"error": {"field": ..., "message": ...}}`` naming the parameter at
fault (docs/api.md); validation errors say which parameter and why; anything else is a logged 500 that says nothing
of the internals.

Redis failures (the store's `STORE_ERRORS`) are 503 from handlers of their own: Starlette's ``Exception`` handler
answers and then re-raises, so uvicorn logs a traceback and closes the keep-alive connection; these handlers answer
like any HTTP error, the connection stays open, and `OutageLog` says it once per outage, not once per request."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
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
    503: "Redis is unreachable",
}
RETRY_AFTER_S: Final = 5
"""What a 503 tells clients to wait (``Retry-After``)."""


class ApiError(HTTPException):
    """An HTTP error with the parameter at fault."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(status, message)
        self.field = field


def error_response(status: int, message: str, field: str | None = None, **extra: Any) -> JSONResponse:
    body: dict[str, Any] = {"error": {"field": field, "message": message}, **extra}
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    if status == 503:
        headers = {"Retry-After": str(RETRY_AFTER_S)}
    return JSONResponse(body, status_code=status, headers=headers)


class OutageLog:
    """One log line when Redis stops answering, one a minute (``every``) while it stays away, one when it answers
    again: an outage under load is thousands of failed requests, which must not be thousands of lines."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, every: float = 60.0) -> None:
        self._clock = clock
        self._every = every
        self._since: float | None = None
        """When the outage began (None: Redis answers)."""
        self._said_at = 0.0
        self._failed = 0
        """Requests answered 503 in this outage."""
        self._unsaid = 0
        """Of those, the ones since the last line."""
        self._lock = threading.Lock()  # answered() runs in the threadpool, failed() in the event loop

    def failed(self, error: BaseException) -> None:
        with self._lock:
            self._failed_locked(error)

    def _failed_locked(self, error: BaseException) -> None:
        now = self._clock()
        self._failed += 1
        self._unsaid += 1
        what = f"{type(error).__name__}: {error}"
        if self._since is None:
            self._since, self._said_at, self._unsaid = now, now, 0
            log.warning("Redis is unreachable (%s): API requests get 503 until it answers", what)
        elif now - self._said_at >= self._every:
            log.warning(
                "Redis still unreachable after %.0f s (%s): %d requests got 503 in the last %.0f s",
                now - self._since,
                what,
                self._unsaid,
                now - self._said_at,
            )
            self._said_at, self._unsaid = now, 0

    def answered(self) -> None:
        """A request that needed Redis got its answer: the outage, if any, is over."""
        if self._since is None:  # the common case, without the lock
            return
        with self._lock:
            if self._since is None:
                return
            seconds, failed = self._clock() - self._since, self._failed
            self._since, self._failed, self._unsaid = None, 0, 0
        log.warning("Redis answers again after %.0f s; %d requests got 503 meanwhile", seconds, failed)


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


def redis_tracker(outage: OutageLog) -> Callable[[], AsyncIterator[None]]:
    """A dependency for routes that read or write Redis: a request that completes ends the outage, if any (its
    failure is seen by the 503 handler). A coroutine: it waits on nothing, and FastAPI would run a plain function
    in its thread pool (two hops per request)."""

    async def tracked() -> AsyncIterator[None]:
        yield
        outage.answered()  # not reached when the route raised: the exception is thrown in at the yield

    return tracked


def install_error_handlers(app: FastAPI) -> OutageLog:
    """The error handlers; returns the outage log that the 503 handler keeps (for `redis_tracker`)."""
    outage = OutageLog()

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, error: RequestValidationError) -> JSONResponse:
        problems = [_problem(item) for item in error.errors()]
        extra = {"problems": problems} if len(problems) > 1 else {}
        return error_response(400, problems[0]["message"] or "invalid", problems[0]["field"], **extra)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, error: HTTPException) -> JSONResponse:
        message = error.detail if isinstance(error.detail, str) else ERROR_TEXTS.get(error.status_code, "error")
        return error_response(error.status_code, message, getattr(error, "field", None))

    async def unreachable(_request: Request, error: Exception) -> JSONResponse:
        outage.failed(error)
        return error_response(503, f"Redis is unreachable ({type(error).__name__}); retry later")

    for kind in STORE_ERRORS:  # Redis's errors, which only the store imports, and socket errors
        if issubclass(kind, Exception):  # all of them: the tuple is typed by BaseException
            app.add_exception_handler(kind, unreachable)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, _error: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return error_response(500, "internal error (logged)")

    return outage
