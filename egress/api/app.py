"""The query API's routes, auth and error shapes: `create_app(settings)` builds the FastAPI app.

Every error is ``{"error": {"field": ..., "message": ...}}``: 400 for a bad parameter or body (the field named),
401 without a valid token, 403 for a token without the role, 404, 405, 413 for a body over `MAX_BODY`, 429 when
too many follow streams are open, 503 while Redis does not answer. Route handlers are plain functions: FastAPI
runs them in its thread pool, where the blocking Redis client belongs. Reference: docs/api.md.
"""

# No `from __future__ import annotations` here: FastAPI reads the dependencies out of the annotations of functions
# defined inside `create_app`, which refer to its local variables; deferred (string) annotations would lose them.
import asyncio
import contextlib
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, Final

from fastapi import Depends, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import RedirectResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from egress.api import models
from egress.api.auth import Role, Token, TokenTable
from egress.api.errors import ERROR_TEXTS, ApiError, install_error_handlers
from egress.api.metrics import Metrics
from egress.api.middleware import BodyLimit, CountRequests
from egress.api.settings import Settings
from egress.correlate import Correlator, timeline
from egress.record import query
from egress.record.actions import ActionRecord
from egress.record.schema import AttemptRecord
from egress.record.store import STORE_ERRORS, RecordStore

log = logging.getLogger(__name__)

MAX_BODY: Final = 8 * 1024 * 1024
STATIC: Final = Path(__file__).parent / "static"
_ID_PATTERN: Final = r"^[0-9A-HJKMNP-TV-Z]{26}$"
NoQuery = Annotated[models.NoQuery, Query()]
"""For routes without query parameters: any parameter given is unknown (400), as on every other route."""
_LAB: Final = Token("lab", b"", frozenset(Role))


def version() -> str:
    try:
        return importlib.metadata.version("egress")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def create_app(settings: Settings, *, store: RecordStore | None = None) -> FastAPI:
    """The API app. ``store``: an existing record store (tests); by default one is made from ``settings``."""
    spool_dir = settings.spool_dir
    own_spool = store is None and spool_dir is None
    if own_spool:
        # The API writes no attempt records, so its store never spools and this directory is never made.
        spool_dir = Path(tempfile.gettempdir()) / f"egress-api-spool-{os.getpid()}"
    if store is None:
        assert spool_dir is not None
        store = RecordStore(
            settings.redis_url, spool_dir, "api", settings.retention_max_records, settings.retention_max_age_days
        )
    the_store: RecordStore = store

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        the_store.close()
        if own_spool and spool_dir is not None:
            shutil.rmtree(spool_dir, ignore_errors=True)

    app = FastAPI(
        title="egress query API",
        version=version(),
        description="Blocked egress attempts of agent sandboxes, tied to the agents' actions. See docs/api.md.",
        docs_url=None,  # the Swagger UI would load from a CDN; the description is at /openapi.json
        redoc_url=None,
        lifespan=lifespan,
        responses={status: {"model": models.ErrorBody, "description": text} for status, text in ERROR_TEXTS.items()},
    )
    app.state.settings = settings
    app.state.store = the_store
    app.state.followers = 0
    metrics = Metrics(the_store, settings.metrics_window_s)
    app.state.metrics = metrics
    tokens = TokenTable(settings.tokens)
    bearer = HTTPBearer(auto_error=False, description="A token from the tokens file (roles: read, report, admin).")
    install_error_handlers(app)

    app.add_middleware(BodyLimit, limit=MAX_BODY)
    app.add_middleware(CountRequests, metrics=metrics)

    def principal(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Token:
        if not tokens and settings.lab:
            return _LAB
        if credentials is None:
            raise ApiError(401, "a bearer token is required (Authorization: Bearer <token>)", "Authorization")
        token = tokens.authenticate(credentials.credentials)
        if token is None:
            raise ApiError(401, "unknown token", "Authorization")
        return token

    def role(needed: Role) -> Callable[[Token], Token]:
        def check(token: Annotated[Token, Depends(principal)]) -> Token:
            if not token.allows(needed):
                raise ApiError(403, f"token {token.name!r} lacks the {needed.value} role", "Authorization")
            return token

        return check

    reader = Depends(role(Role.READ))
    _routes(app, the_store, settings, reader, Depends(role(Role.REPORT)))
    _dashboard(app)
    return app


def _to_action(action: ActionRecord, distance: float | None = None) -> dict[str, Any]:
    data = action.to_json()
    if distance is not None:
        data["distance_s"] = distance
    return data


def _correlated(store: RecordStore, attempts: Sequence[AttemptRecord], slack: float) -> dict[str, list[dict[str, Any]]]:
    """Each attempt's actions: one read per sandbox over the page's span, or one per attempt when that is full."""
    by_sandbox: dict[str, list[AttemptRecord]] = {}
    for attempt in attempts:
        by_sandbox.setdefault(attempt.sandbox, []).append(attempt)
    result: dict[str, list[dict[str, Any]]] = {}
    for sandbox, group in by_sandbox.items():
        low, high = min(a.ts for a in group) - slack, max(a.ts for a in group) + slack
        actions = query.read_actions(store, sandbox, low, high, models.MAX_PAGE)
        shared = Correlator(actions, slack)
        for attempt in group:
            if len(actions) >= models.MAX_PAGE:  # maybe cut: read this attempt's own neighbourhood
                own = query.read_actions(store, sandbox, attempt.ts - slack, attempt.ts + slack, models.MAX_PAGE)
                links = Correlator(own, slack).links(attempt.ts)
            else:
                links = shared.links(attempt.ts)
            result[attempt.id] = [_to_action(action, gap) for action, gap in links]
    return result


def _routes(app: FastAPI, store: RecordStore, settings: Settings, reader: Any, reporter: Any) -> None:
    slack = settings.slack

    @app.get("/v1/health", tags=["meta"], response_model=models.Health)
    def health(response: Response, _: NoQuery) -> dict[str, Any]:
        """No token needed. 503 (same body) while Redis does not answer."""
        redis_ok = store.ping()
        if not redis_ok:
            response.status_code = 503
        return {"status": "ok" if redis_ok else "degraded", "redis": redis_ok, "version": version()}

    @app.get("/v1/attempts", tags=["attempts"], response_model=models.AttemptPage, dependencies=[reader])
    def attempts(params: Annotated[models.AttemptsQuery, Query()]) -> dict[str, Any]:
        """Attempts, newest first, filtered; pass ``next_cursor`` back as ``cursor`` for the next page."""
        flt = query.AttemptFilter(
            sandbox=params.sandbox,
            category=params.category,
            reason=params.reason,
            destination=params.destination,
            since=params.since,
            until=params.until,
        )
        try:
            page, next_cursor = query.list_attempts(store, flt, params.limit, params.cursor)
        except ValueError as error:
            raise ApiError(400, str(error), "cursor" if params.cursor is not None else None) from None
        body: dict[str, Any] = {"attempts": [record.to_json() for record in page], "next_cursor": next_cursor}
        if params.correlate:
            body["correlated"] = _correlated(store, page, slack)
        return body

    @app.get("/v1/attempts/{attempt_id}", tags=["attempts"], response_model=models.AttemptDetail, dependencies=[reader])
    def attempt(attempt_id: Annotated[str, PathParam(pattern=_ID_PATTERN)], _: NoQuery) -> dict[str, Any]:
        """One attempt and the actions of its sandbox it belongs to (egress.correlate: containment wins)."""
        record = query.get_attempt(store, attempt_id)
        if record is None:
            raise ApiError(404, f"no attempt {attempt_id}", "attempt_id")
        return {"attempt": record.to_json(), "actions": _correlated(store, [record], slack)[record.id]}

    @app.get("/v1/sandboxes", tags=["sandboxes"], response_model=models.Sandboxes, dependencies=[reader])
    def sandboxes(_: NoQuery) -> dict[str, Any]:
        """Names of the sandboxes that have records."""
        return {"sandboxes": store.sandboxes()}

    @app.get(
        "/v1/sandboxes/{sandbox}/timeline", tags=["sandboxes"], response_model=models.Timeline, dependencies=[reader]
    )
    def sandbox_timeline(
        sandbox: Annotated[str, PathParam(max_length=256)], params: Annotated[models.TimelineQuery, Query()]
    ) -> dict[str, Any]:
        """Actions and attempts of one sandbox interleaved by time, oldest first (at most ``limit`` of each)."""
        until = params.until if params.until is not None else time.time()
        since = params.since if params.since is not None else max(0.0, until - 86400)
        if since > until:
            raise ApiError(400, "time range inverted: since is after until (until defaults to now)", "since")
        found = query.attempts_for_sandbox(store, sandbox, since, until, params.limit)
        actions = query.read_actions(store, sandbox, since, until, params.limit)
        items = []
        for item in timeline(actions, found, slack):
            if item.attempt is not None:
                items.append(
                    {"type": "attempt", "ts": item.ts, "attempt": item.attempt.to_json(), "related": list(item.related)}
                )
            elif item.action is not None:
                items.append({"type": "action", "ts": item.ts, "action": item.action.to_json()})
        return {"sandbox": sandbox, "since": since, "until": until, "items": items}

    @app.get("/v1/stats", tags=["stats"], response_model=models.Stats, dependencies=[reader])
    def stats(params: Annotated[models.StatsQuery, Query()]) -> dict[str, Any]:
        """Attempts over the last ``window`` seconds counted by one field (aggregates count as their ``count``)."""
        until = time.time()
        return {
            "window_s": params.window,
            "by": params.by,
            "counts": query.counts(store, until - params.window, until, params.by),
        }

    @app.get("/v1/stats/series", tags=["stats"], response_model=models.Series, dependencies=[reader])
    def series(params: Annotated[models.SeriesQuery, Query()]) -> dict[str, Any]:
        """The window cut into ``buckets`` equal spans, counted by one field in each (the dashboard's chart)."""
        until = time.time()
        step = params.window / params.buckets
        start = until - params.window
        buckets = []
        for index in range(params.buckets):
            low, high = start + index * step, start + (index + 1) * step
            counts = query.counts(store, low, high, params.by)
            buckets.append({"start": low, "end": high, "counts": counts})
        return {"window_s": params.window, "by": params.by, "buckets": buckets}

    @app.post("/v1/actions", tags=["actions"], response_model=models.Accepted, dependencies=[reporter])
    def post_actions(batch: models.ActionBatch, _: NoQuery) -> dict[str, Any]:
        """Report agent actions (at most 1000 per batch). Idempotent by (sandbox, id): a re-sent action replaces
        the stored one."""
        now = time.time()
        records = []
        for index, item in enumerate(batch.actions):
            try:
                records.append(
                    ActionRecord(
                        sandbox=item.sandbox,
                        id=item.id,
                        kind=item.kind,
                        command=item.command,
                        start=item.start,
                        end=item.end,
                        received=now,
                    )
                )
            except ValueError as error:
                raise ApiError(400, str(error), f"actions[{index}]") from None
        return {"accepted": query.write_actions(store, records)}

    _follow_route(app, store, settings, reader)

    @app.get("/metrics", tags=["meta"], dependencies=[reader], response_class=Response)
    def metrics_text(_: NoQuery) -> Response:
        """Prometheus text format (role read or admin). See egress.api.metrics for the families."""
        return Response(generate_latest(app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def _follow_route(app: FastAPI, store: RecordStore, settings: Settings, reader: Any) -> None:
    @app.get(
        "/v1/follow",
        tags=["attempts"],
        dependencies=[reader],
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}, "description": "Server-sent events"}},
    )
    async def follow(request: Request, params: Annotated[models.FollowQuery, Query()]) -> StreamingResponse:
        """Live attempts as server-sent events: ``event: attempt`` (data: the record's JSON) for each new record,
        ``event: heartbeat`` when nothing came for a while, ``event: error`` while Redis does not answer."""
        if app.state.followers >= settings.max_followers:
            raise ApiError(429, f"at most {settings.max_followers} follow streams at once")
        return StreamingResponse(
            _events(request, store, settings, params),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )


async def _events(
    request: Request, store: RecordStore, settings: Settings, params: models.FollowQuery
) -> AsyncIterator[str]:
    app = request.app
    after: dict[str, str] | None = None
    last_sent = time.monotonic()
    app.state.followers += 1
    try:
        yield "retry: 2000\n\n"
        while not await request.is_disconnected():
            try:
                records, after = await run_in_threadpool(query.follow, store, after, settings.follow_block_ms)
            except STORE_ERRORS as error:
                message = json.dumps({"message": f"Redis unavailable ({type(error).__name__})"})
                yield f"event: error\ndata: {message}\n\n"
                last_sent = time.monotonic()
                await asyncio.sleep(1.0)
                continue
            for record in records:
                if params.sandbox is not None and record.sandbox != params.sandbox:
                    continue
                if params.category is not None and record.category != params.category:
                    continue
                data = json.dumps(record.to_json(), separators=(",", ":"))
                yield f"id: {record.id}\nevent: attempt\ndata: {data}\n\n"
                last_sent = time.monotonic()
            if time.monotonic() - last_sent >= settings.heartbeat_s:
                yield f"event: heartbeat\ndata: {json.dumps({'ts': time.time()})}\n\n"
                last_sent = time.monotonic()
    finally:
        app.state.followers -= 1


_PAGES: Final = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
_CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _dashboard(app: FastAPI) -> None:
    files = {name: (STATIC / name).read_bytes() for name in ("dashboard.html", *_PAGES)}
    headers = {"Content-Security-Policy": _CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/dashboard")

    @app.get("/dashboard", include_in_schema=False)
    def dashboard() -> Response:
        """The page itself needs no token; its API calls do (login box or ``?token=``)."""
        return Response(files["dashboard.html"], media_type="text/html; charset=utf-8", headers=headers)

    def serve(body: bytes, media_type: str) -> Callable[[], Response]:
        def asset() -> Response:
            return Response(body, media_type=media_type, headers=headers)

        return asset

    for name, media_type in _PAGES.items():
        app.add_api_route(
            f"/dashboard/{name}", serve(files[name], media_type), methods=["GET"], include_in_schema=False
        )
