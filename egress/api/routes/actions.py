"""Actions: the agents' own reports of what they ran, which attempts are tied to (role report)."""

import time
from typing import Any

from fastapi import APIRouter, Request, params

from egress.api import models
from egress.api.errors import ApiError
from egress.api.routes import NoQuery, caller
from egress.record import query
from egress.record.actions import ActionRecord
from egress.record.store import RecordStore


def router(store: RecordStore, reporter: params.Depends) -> APIRouter:
    routes = APIRouter()

    @routes.post("/v1/actions", tags=["actions"], response_model=models.Accepted, dependencies=[reporter])
    def post_actions(request: Request, batch: models.ActionBatch, _: NoQuery) -> dict[str, Any]:
        """Report agent actions (at most 1000 per batch). Idempotent by (sandbox, id): a re-sent action replaces
        the stored one. A token scoped to sandboxes reports for those only (403, nothing stored)."""
        now = time.time()
        records = []
        token = caller(request)
        for index, item in enumerate(batch.actions):
            if not token.sees(item.sandbox):
                message = f"token {token.name!r} may not report for sandbox {item.sandbox!r}; nothing stored"
                raise ApiError(403, message, f"actions[{index}].sandbox")
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

    return routes
