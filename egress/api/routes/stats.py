"""Stats: attempts over a recent window counted by one field, whole or cut into buckets (the dashboard's chart)."""

import time
from typing import Annotated, Any

from fastapi import APIRouter, Query, params

from egress.api import models
from egress.record import query
from egress.record.store import RecordStore


def router(store: RecordStore, reader: params.Depends) -> APIRouter:
    routes = APIRouter()

    @routes.get("/v1/stats", tags=["stats"], response_model=models.Stats, dependencies=[reader])
    def stats(params: Annotated[models.StatsQuery, Query()]) -> dict[str, Any]:
        """Attempts over the last ``window`` seconds counted by one field (aggregates count as their ``count``)."""
        until = time.time()
        return {
            "window_s": params.window,
            "by": params.by,
            "counts": query.counts(store, until - params.window, until, params.by),
        }

    @routes.get("/v1/stats/series", tags=["stats"], response_model=models.Series, dependencies=[reader])
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

    return routes
