"""ASGI middleware of the API: the request body limit (413 before a handler reads too much), ``HEAD`` answered as
``GET`` without the body, and the request counter behind ``/metrics`` (plain ASGI, so live streams pass untouched)."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from egress.api.errors import ApiError, error_response
from egress.api.metrics import Metrics


class HeadAsGet:
    """``HEAD`` wherever ``GET`` is answered (RFC 9110 9.3.2; FastAPI routes answer only the methods they name):
    the app sees a ``GET`` and the answer's headers go out, ``Content-Length`` included, without its body. A stream
    (the live follow) ends after its headers: once they are sent, the app is told that the client left."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        ended = False

        async def headers_only(message: Message) -> None:
            nonlocal ended
            if ended:
                return
            if message["type"] == "http.response.body":
                ended = True
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        async def until_ended() -> Message:
            return {"type": "http.disconnect"} if ended else await receive()

        # A copy: the server keeps its own scope, whose HEAD tells it to send no body.
        await self.app({**scope, "method": "GET"}, until_ended, headers_only)


class BodyLimit:
    """Refuses request bodies over ``limit`` bytes (declared or streamed) with 413 before a handler reads them.

    Starlette has one (``FastAPI(max_body_size=...)``, Starlette 1.x), not used here: its 413 is a plain-text
    "Content Too Large", and when the declared length is over the limit it replaces whatever answer the app starts
    with that text, so no error handler can give it the API's one error shape (``{"error": {"field": "body"...}}``).
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await error_response(413, f"request body over {self.limit} bytes", "body")(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise ApiError(413, f"request body over {self.limit} bytes", "body")
            return message

        await self.app(scope, limited, send)


class CountRequests:
    """Counts answered requests by method, route template and status (plain ASGI: streams pass untouched)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observed)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(scope["method"], route, str(status)).inc()
