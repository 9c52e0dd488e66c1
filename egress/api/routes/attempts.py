"""Attempts: the filtered list, one attempt with the actions it belongs to, and the live follow (SSE)."""

import asyncio
import json
import time
from collections.abc import AsyncIterator, Sequence
from typing import Annotated, Any, Final

from fastapi import APIRouter, Header, Query, Request, params
from fastapi import Path as PathParam
from fastapi.responses import Response, StreamingResponse
from fastapi.sse import EventSourceResponse, format_sse_event
from starlette.concurrency import run_in_threadpool

from egress.api import models
from egress.api.errors import ApiError
from egress.api.respond import encode, json_response, raws
from egress.api.routes import NoQuery, caller
from egress.api.settings import Settings
from egress.correlate import Correlator
from egress.record import query
from egress.record.actions import ActionRecord
from egress.record.follow import Cursor, Follow
from egress.record.schema import AttemptRecord
from egress.record.store import STORE_ERRORS, RecordStore

_ID_PATTERN: Final = r"^[0-9A-HJKMNP-TV-Z]{26}$"


def router(store: RecordStore, settings: Settings, reader: params.Depends) -> APIRouter:
    routes = APIRouter()
    slack = settings.slack

    @routes.get("/v1/attempts", tags=["attempts"], response_model=models.AttemptPage, dependencies=[reader])
    def attempts(request: Request, params: Annotated[models.AttemptsQuery, Query()]) -> Response:
        """Attempts, newest first, filtered; pass ``next_cursor`` back as ``cursor`` for the next page."""
        flt = query.AttemptFilter(
            sandbox=params.sandbox,
            category=params.category,
            reason=params.reason,
            destination=params.destination,
            since=params.since,
            until=params.until,
            scope=caller(request).sandboxes,  # a token scoped to sandboxes: those it names none
        )
        try:
            page, next_cursor = query.list_attempts(store, flt, params.limit, params.cursor)
        except ValueError as error:
            raise ApiError(400, str(error), "cursor" if params.cursor is not None else None) from None
        correlated = _correlated(store, page, slack) if params.correlate else None
        return json_response({"attempts": raws(page), "next_cursor": next_cursor, "correlated": correlated})

    @routes.get(
        "/v1/attempts/{attempt_id}", tags=["attempts"], response_model=models.AttemptDetail, dependencies=[reader]
    )
    def attempt(request: Request, attempt_id: Annotated[str, PathParam(pattern=_ID_PATTERN)], _: NoQuery) -> Response:
        """One attempt and the actions of its sandbox it belongs to (egress.correlate: containment wins)."""
        record = query.get_attempt(store, attempt_id)
        if record is None or not caller(request).sees(record.sandbox):  # another's: as if there were none
            raise ApiError(404, f"no attempt {attempt_id}", "attempt_id")
        return json_response({"attempt": record, "actions": _correlated(store, [record], slack)[record.id]})

    @routes.get(
        "/v1/follow",
        tags=["attempts"],
        dependencies=[reader],
        # Not EventSourceResponse: with it FastAPI expects a generator route, which cannot answer 400 or 429
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}, "description": "Server-sent events"}},
    )
    async def follow(
        request: Request,
        params: Annotated[models.FollowQuery, Query()],
        last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=600)] = None,
    ) -> EventSourceResponse:
        """Live attempts as server-sent events, in the order they reached Redis (egress.record.follow):
        ``event: attempt`` (data: the record's JSON; id: its place in the stream) for each new record,
        ``event: heartbeat`` when nothing came for a while, ``event: error`` while Redis does not answer. A
        reconnect with ``Last-Event-ID`` (as EventSource sends it) gets exactly the records after that event."""
        try:
            after = Cursor.parse(last_event_id) if last_event_id else None
        except ValueError as error:
            raise ApiError(400, str(error), "Last-Event-ID") from None
        if request.app.state.followers >= settings.max_followers:
            raise ApiError(429, f"at most {settings.max_followers} follow streams at once")
        return EventSourceResponse(
            _events(request, Follow(store, after), settings, params),
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    return routes


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


async def _events(
    request: Request, follow: Follow, settings: Settings, params: models.FollowQuery
) -> AsyncIterator[bytes]:
    app = request.app
    last_sent = time.monotonic()
    app.state.followers += 1
    try:
        yield format_sse_event(retry=2000)
        while not await request.is_disconnected():
            try:
                due = await run_in_threadpool(follow.read, settings.follow_block_ms)
            except STORE_ERRORS as error:  # the follow keeps its place: it goes on from there when Redis answers
                message = json.dumps({"message": f"Redis unavailable ({type(error).__name__})"})
                yield format_sse_event(event="error", data_str=message)
                last_sent = time.monotonic()
                await asyncio.sleep(1.0)
                continue
            for cursor, record in due:
                if params.sandbox is not None and record.sandbox != params.sandbox:
                    continue
                if not caller(request).sees(record.sandbox):  # a scoped token naming none: its own only
                    continue
                if params.category is not None and record.category != params.category:
                    continue
                data = encode(record).decode()  # a live record is sent once: not kept (respond.raw)
                yield format_sse_event(event="attempt", data_str=data, id=str(cursor))
                last_sent = time.monotonic()
            if time.monotonic() - last_sent >= settings.heartbeat_s:
                yield format_sse_event(event="heartbeat", data_str=json.dumps({"ts": time.time()}))
                last_sent = time.monotonic()
    finally:
        app.state.followers -= 1
