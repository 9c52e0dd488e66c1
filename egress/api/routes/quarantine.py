"""Quarantined sandboxes: the ones cut off now and every step (role read), and releasing one (role admin), in
Redis through `egress.record.quarantine_store` like ``egress quarantine``. The dashboard shows
``GET /v1/quarantine``'s ``quarantined``."""

from typing import Annotated, Any

from fastapi import APIRouter, Path, params
from pydantic import BaseModel

from egress.api.auth import Token
from egress.api.errors import ApiError
from egress.api.routes import NoQuery
from egress.record.quarantine_store import QuarantineStore

EVENTS = 100
"""The latest steps ``GET /v1/quarantine`` returns."""


class QuarantinedOut(BaseModel):
    sandbox: str
    since: float
    """When it was cut off (epoch seconds)."""
    gateway: str
    """The gateway whose count tripped the rule."""
    reason: str
    findings: int


class EventOut(BaseModel):
    event: str
    """``quarantine`` or ``release``."""
    sandbox: str
    time: float
    who: str
    """The gateway (quarantine), or the token or user that released it."""
    reason: str = ""


class QuarantineState(BaseModel):
    quarantined: list[QuarantinedOut]
    """The sandboxes cut off now, oldest first: every packet from and to them is dropped on every gateway."""
    events: list[EventOut]
    """The latest quarantines and releases, newest first."""


class Released(BaseModel):
    released: QuarantinedOut


def router(store: QuarantineStore, reader: params.Depends, admin: params.Depends) -> APIRouter:
    routes = APIRouter()
    who = Annotated[Token, admin]

    @routes.get("/v1/quarantine", tags=["quarantine"], response_model=QuarantineState, dependencies=[reader])
    def get_quarantine(_: NoQuery) -> dict[str, Any]:
        """The sandboxes cut off now, and the latest steps."""
        active = sorted(store.active().values(), key=lambda entry: entry.since)
        return {
            "quarantined": [entry.to_json() for entry in active],
            "events": [event.to_json() for event in store.events(EVENTS)],
        }

    @routes.post("/v1/quarantine/{sandbox}/release", tags=["quarantine"], response_model=Released)
    def post_release(sandbox: Annotated[str, Path(max_length=100)], token: who, _: NoQuery) -> dict[str, Any]:
        """Let the sandbox's traffic pass again on every gateway (within a second); recorded with the token's name."""
        entry = store.release(sandbox, token.name)
        if entry is None:
            raise ApiError(404, f"sandbox {sandbox!r} is not quarantined", "sandbox")
        return {"released": entry.to_json()}

    return routes
