"""Flows: what the sandboxes reached (the flow log of allowed connections, docs/flow-log.md), filtered and summed.

A token scoped to sandboxes reads its own: one it names, or all of them when it names none (`egress.api.app`
refuses a sandbox outside its scope). The query and answer models live here, beside the one route that uses them.
"""

import time
from typing import Annotated, Final, Literal

from fastapi import APIRouter, Query, Request, params
from fastapi.responses import Response
from pydantic import BaseModel, Field

from egress.api import models
from egress.api.errors import ApiError
from egress.api.respond import json_response
from egress.api.routes import caller
from egress.record import flows
from egress.record.flow_store import flow_sandboxes, read_flows
from egress.record.query import in_scope
from egress.record.store import RecordStore

DEFAULT_SPAN: Final = 3600.0
"""Seconds before ``until`` a read covers when it gives no ``since``."""


class FlowsQuery(models.Window):
    sandbox: models.SandboxName | None = Field(None, description="Only this sandbox (default: every one you see).")
    since: models.Time | None = Field(None, description="Default: an hour before until.")
    until: models.Time | None = Field(None, description="Default: now.")
    host: Annotated[str, Field(min_length=1, max_length=256)] | None = Field(
        None, description="A host name: the name itself or any name below it."
    )
    dst: Annotated[str, Field(min_length=1, max_length=64)] | None = Field(None, description="An address exactly.")
    dport: Annotated[int, Field(ge=0, le=65535)] | None = None
    decision: Literal["allow", "record", "would-block"] | None = None
    group: Literal["destination", "window"] = Field(
        "destination", description="destination: summed over the range, most bytes first; window: per minute."
    )
    limit: Annotated[int, Field(ge=1, le=models.MAX_PAGE)] = 100


class FlowPage(BaseModel):
    since: float
    until: float
    group: str
    flows: list[flows.FlowRecord]
    """Each aggregate as the flow log keeps it (`egress.record.flows.FlowRecord`)."""
    truncated: bool
    """More aggregates matched than ``limit`` (or than one read takes from a sandbox)."""


def router(store: RecordStore, reader: params.Depends) -> APIRouter:
    routes = APIRouter()

    @routes.get("/v1/flows", tags=["flows"], response_model=FlowPage, dependencies=[reader])
    def list_flows(request: Request, params: Annotated[FlowsQuery, Query()]) -> Response:
        """Allowed connections of sandboxes that keep a flow log, aggregated: per destination over the range
        (``group=destination``) or per minute (``group=window``, newest first)."""
        until = params.until if params.until is not None else time.time()
        since = params.since if params.since is not None else max(0.0, until - DEFAULT_SPAN)
        if since > until:
            raise ApiError(400, "time range inverted: since is after until (until defaults to now)", "since")
        names = [params.sandbox] if params.sandbox is not None else flow_sandboxes(store.redis)
        flt = flows.FlowFilter(params.host, params.dst, params.dport, params.decision)
        found: list[flows.FlowRecord] = []
        truncated = False
        for name in in_scope(names, caller(request).sandboxes):
            records, more = read_flows(store.redis, name, since, until)
            truncated = truncated or more
            found += [record for record in flows.within(records, since, until) if flt.matches(record)]
        merged = flows.merge(found)
        if params.group == "destination":
            merged = flows.by_destination(merged)
        else:
            merged.reverse()
        truncated = truncated or len(merged) > params.limit
        body = {"since": since, "until": until, "group": params.group, "flows": merged[: params.limit]}
        return json_response({**body, "truncated": truncated})

    return routes
