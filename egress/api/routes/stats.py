"""Stats: attempts over a recent window counted by one field, whole or cut into buckets (the dashboard's chart),
both read from the counters kept at write time (egress.record.stats): windows are whole minutes; and what the
store holds of each sandbox and what its retention dropped (egress.record.retained)."""

import time
from typing import Annotated

from fastapi import APIRouter, Query, Request, params
from fastapi.responses import Response

from egress.api import models
from egress.api.respond import json_response
from egress.api.routes import NoQuery, caller
from egress.record import query
from egress.record.retained import retained
from egress.record.store import RecordStore


def router(store: RecordStore, reader: params.Depends) -> APIRouter:
    routes = APIRouter()

    @routes.get("/v1/stats", tags=["stats"], response_model=models.Stats, dependencies=[reader])
    def stats(request: Request, params: Annotated[models.StatsQuery, Query()]) -> Response:
        """Attempts over the last ``window`` seconds, in whole minutes (``since``: the start of the first one),
        counted by one field (aggregates count as their ``count``)."""
        until = time.time()
        since = query.window_start(params.window, until)
        counts = query.counts(store, since, until, params.by, caller(request).sandboxes)
        return json_response(
            {"window_s": params.window, "by": params.by, "since": since, "until": until, "counts": counts}
        )

    @routes.get("/v1/stats/series", tags=["stats"], response_model=models.Series, dependencies=[reader])
    def series(request: Request, params: Annotated[models.SeriesQuery, Query()]) -> Response:
        """The window cut into at most ``buckets`` equal spans of whole minutes (of whole hours or days when a
        span is that long), counted by one field in each (the dashboard's chart)."""
        scope = caller(request).sandboxes  # a token scoped to sandboxes counts those
        buckets = query.series(store, params.window, time.time(), params.buckets, params.by, scope)
        return json_response(
            {
                "window_s": params.window,
                "by": params.by,
                "buckets": [{"start": b.start, "end": b.end, "counts": b.counts} for b in buckets],
            }
        )

    @routes.get("/v1/retention", tags=["stats"], response_model=models.Retention, dependencies=[reader])
    def retention(request: Request, _: NoQuery) -> Response:
        """Records held per sandbox, and how many the size and age retention dropped (of those, findings)."""
        names = query.in_scope(store.sandboxes(), caller(request).sandboxes)
        held = retained(store, names)
        return json_response({"sandboxes": {name: row.to_json() for name, row in held.items()}})

    return routes
