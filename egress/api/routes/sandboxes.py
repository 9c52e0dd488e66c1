"""Sandboxes: the names that have records, and one sandbox's timeline (actions and attempts interleaved)."""

import time
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, params
from fastapi import Path as PathParam
from fastapi.responses import Response

from egress.api import models
from egress.api.errors import ApiError
from egress.api.respond import json_response, raw
from egress.api.routes import NoQuery, caller
from egress.api.settings import Settings
from egress.correlate import timeline_rows
from egress.record import query
from egress.record.store import RecordStore


def router(store: RecordStore, settings: Settings, reader: params.Depends) -> APIRouter:
    routes = APIRouter()
    slack = settings.slack

    @routes.get("/v1/sandboxes", tags=["sandboxes"], response_model=models.Sandboxes, dependencies=[reader])
    def sandboxes(request: Request, _: NoQuery) -> Response:
        """Names of the sandboxes that have records (a token scoped to sandboxes: of those)."""
        token = caller(request)
        return json_response({"sandboxes": [name for name in store.sandboxes() if token.sees(name)]})

    @routes.get(
        "/v1/sandboxes/{sandbox}/timeline", tags=["sandboxes"], response_model=models.Timeline, dependencies=[reader]
    )
    def sandbox_timeline(
        sandbox: Annotated[str, PathParam(max_length=256)], params: Annotated[models.TimelineQuery, Query()]
    ) -> Response:
        """Actions and attempts of one sandbox interleaved by time, oldest first: the newest ``limit`` of each;
        ``truncated`` says older ones were left out."""
        until = params.until if params.until is not None else time.time()
        since = params.since if params.since is not None else max(0.0, until - 86400)
        if since > until:
            raise ApiError(400, "time range inverted: since is after until (until defaults to now)", "since")
        found, more_attempts = query.newest_attempts_for_sandbox(store, sandbox, since, until, params.limit)
        actions, more_actions = query.read_newest_actions(store, sandbox, since, until, params.limit)
        items: list[dict[str, Any]]
        if not actions:  # nothing to merge or tie: the attempts are in their order already (ts, then id)
            items = [{"type": "attempt", "ts": a.ts, "attempt": raw(a), "related": ()} for a in found]
        else:
            items = []
            for ts, action, attempt, related in timeline_rows(actions, found, slack):
                if attempt is not None:
                    items.append({"type": "attempt", "ts": ts, "attempt": raw(attempt), "related": related})
                else:
                    items.append({"type": "action", "ts": ts, "action": action})
        truncated = more_attempts or more_actions
        return json_response(
            {"sandbox": sandbox, "since": since, "until": until, "items": items, "truncated": truncated}
        )

    return routes
