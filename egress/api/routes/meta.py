"""Routes about the API itself: health (no token) and the Prometheus metrics."""

import functools
import importlib.metadata
from typing import Any

from fastapi import APIRouter, params
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from egress.api import models
from egress.api.metrics import Metrics
from egress.api.routes import NoQuery
from egress.record.store import RecordStore


@functools.cache  # looked up once: the lookup scans the installed distributions (milliseconds a health check)
def version() -> str:
    """The installed package's version (in /v1/health and the OpenAPI description)."""
    try:
        return importlib.metadata.version("egress")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def router(store: RecordStore, metrics: Metrics, reader: params.Depends) -> APIRouter:
    routes = APIRouter()

    @routes.get("/v1/health", tags=["meta"], response_model=models.Health)
    def health(response: Response, _: NoQuery) -> dict[str, Any]:
        """No token needed. 503 (same body) while Redis does not answer."""
        redis_ok = store.ping()
        if not redis_ok:
            response.status_code = 503
        return {"status": "ok" if redis_ok else "degraded", "redis": redis_ok, "version": version()}

    @routes.get("/metrics", tags=["meta"], dependencies=[reader], response_class=Response)
    def metrics_text(_: NoQuery) -> Response:
        """Prometheus text format (role read or admin). See egress.api.metrics for the families."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return routes
