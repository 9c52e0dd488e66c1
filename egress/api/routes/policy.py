"""The fleet's policy: the applied version and what each gateway runs (role read), its history, and applying a
new version or rolling back (role admin), through `egress.policy_release` like ``egress rules apply``."""

from typing import Annotated, Any

from fastapi import APIRouter, Path, params
from pydantic import BaseModel, ConfigDict, Field

from egress.api.auth import Token
from egress.api.errors import ApiError
from egress.api.routes import NoQuery
from egress.policy.loader import format_problems
from egress.policy.yamlnodes import RulesError
from egress.policy_release import MAX_TEXT, UnknownVersion, release, rollback
from egress.record.policy_store import PolicyHistory


class PolicyVersionOut(BaseModel):
    version: int
    """Numbered from 1 in the order versions were applied."""
    digest: str
    """Hex SHA-256 of the policy's UTF-8 text (gateways log ``sha256:`` and its first 16 digits)."""
    time: float
    """When it was applied (epoch seconds)."""
    who: str
    """The token's name (API) or the user (CLI) that applied it."""
    source: str
    """The file applied, ``api``, or ``rollback to version N``."""
    rollback_of: int | None = None


class GatewayOut(BaseModel):
    gateway: str
    state: str
    """``applied`` (runs the applied version), ``failed`` (could not apply ``wanted``, keeps what it ran: see
    ``error``), ``local`` (runs its own policy file: booted on it, or reloaded it with SIGHUP)."""
    digest: str
    """The policy the gateway runs."""
    version: int | None
    """The fleet version it runs; null for its own file."""
    time: float
    wanted: int | None = None
    error: str = ""


class PolicyState(BaseModel):
    applied: PolicyVersionOut | None
    """The applied version; null when none was ever applied (gateways run their files)."""
    gateways: list[GatewayOut]
    """Every gateway that reported, by name."""


class PolicyHistoryOut(BaseModel):
    versions: list[PolicyVersionOut]
    """Newest first."""


class PolicyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(max_length=MAX_TEXT)
    """The policy YAML."""
    source: str = Field(default="api", max_length=200)
    """Where it comes from, kept in the history (a file name, a change ticket)."""


class PolicyTextOut(BaseModel):
    version: int
    text: str


class RollbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int | None = Field(default=None, ge=1, le=2**53)
    """The version whose text to apply again; null: the one applied before the current one."""


class Applied(BaseModel):
    version: PolicyVersionOut
    unchanged: bool
    """The text was the applied version already: nothing was stored."""


def router(history: PolicyHistory, reader: params.Depends, admin: params.Depends) -> APIRouter:
    routes = APIRouter()
    who = Annotated[Token, admin]

    @routes.get("/v1/policy", tags=["policy"], response_model=PolicyState, dependencies=[reader])
    def get_policy(_: NoQuery) -> dict[str, Any]:
        """The applied version and its hash, and what each gateway runs."""
        applied = history.applied()
        return {
            "applied": None if applied is None else applied.to_json(),
            "gateways": [report.to_json() for report in history.gateways()],
        }

    @routes.get("/v1/policy/history", tags=["policy"], response_model=PolicyHistoryOut, dependencies=[reader])
    def get_history(_: NoQuery) -> dict[str, Any]:
        """Every kept version, newest first (without texts)."""
        return {"versions": [stored.to_json() for stored in history.history()]}

    @routes.get("/v1/policy/versions/{number}", tags=["policy"], response_model=PolicyTextOut, dependencies=[reader])
    def get_text(number: Annotated[int, Path(ge=1, le=2**53)], _: NoQuery) -> dict[str, Any]:
        """One version's text."""
        text = history.text(number)
        if text is None:
            raise ApiError(404, f"version {number} is not in the history", "number")
        return {"version": number, "text": text}

    @routes.post("/v1/policy", tags=["policy"], response_model=Applied)
    def post_policy(body: PolicyIn, token: who, _: NoQuery) -> dict[str, Any]:
        """Validate the policy and make it the version every gateway applies (each one to every component at
        once, or it keeps what it runs and reports why: ``GET /v1/policy``). 400 with every problem when it does
        not validate: nothing changes."""
        try:
            released = release(history, body.text, token.name, body.source)
        except RulesError as error:
            raise ApiError(400, format_problems(error.problems)[:4000], "text") from None
        return {"version": released.version.to_json(), "unchanged": released.unchanged}

    @routes.post("/v1/policy/rollback", tags=["policy"], response_model=Applied)
    def post_rollback(body: RollbackIn, token: who, _: NoQuery) -> dict[str, Any]:
        """Apply again the text of an earlier version, as a new version."""
        try:
            released = rollback(history, token.name, body.version)
        except UnknownVersion as error:
            raise ApiError(404, str(error), "version") from None
        except RulesError as error:
            raise ApiError(400, format_problems(error.problems)[:4000], "version") from None
        return {"version": released.version.to_json(), "unchanged": released.unchanged}

    return routes
