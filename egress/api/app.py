"""The query API's app: `create_app(settings)` builds it from the routers in `egress.api.routes`, with auth
(bearer tokens and roles), error shapes and middleware.

Every error is ``{"error": {"field": ..., "message": ...}}``: 400 for a bad parameter or body (the field named),
401 without a valid token, 403 for a token without the role, 404, 405, 413 for a body over `MAX_BODY`, 429 when
too many follow streams are open, 503 while Redis does not answer (on a connection that stays open, logged once per
outage: `egress.api.errors`). Reference: docs/api.md.
"""

# No `from __future__ import annotations` here: FastAPI reads the dependencies out of the annotations of functions
# defined inside `create_app`, which refer to its local variables; deferred (string) annotations would lose them.
import contextlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Annotated, Final

from fastapi import Depends, FastAPI, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from egress.api import models
from egress.api.auth import Role, Token, TokenTable
from egress.api.errors import ERROR_TEXTS, ApiError, install_error_handlers, redis_tracker
from egress.api.metrics import Metrics
from egress.api.middleware import BodyLimit, CountRequests, HeadAsGet
from egress.api.routes import actions, attempts, dashboard, flows, meta, policy, quarantine, sandboxes, stats
from egress.api.routes.meta import version
from egress.api.settings import Settings
from egress.record.policy_store import PolicyHistory
from egress.record.quarantine_store import QuarantineStore
from egress.record.store import RecordStore

MAX_BODY: Final = 8 * 1024 * 1024
_LAB: Final = Token("lab", b"", frozenset(Role))


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
    outage = install_error_handlers(app)
    app.state.outage = outage

    app.add_middleware(BodyLimit, limit=MAX_BODY)
    app.add_middleware(CountRequests, metrics=metrics)
    app.add_middleware(HeadAsGet)  # outermost: counted as the GET it is answered as

    # The dependencies are coroutines, though they do not wait on anything: FastAPI runs a plain function in its
    # thread pool, and a hop there and back for each of them cost more CPU than the checks themselves.
    async def principal(
        request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
    ) -> Token:
        if not tokens and settings.lab:
            request.state.token = _LAB
            return _LAB
        if credentials is None:
            raise ApiError(401, "a bearer token is required (Authorization: Bearer <token>)", "Authorization")
        token = tokens.authenticate(credentials.credentials)
        if token is None:
            raise ApiError(401, "unknown token", "Authorization")
        request.state.token = token  # for the routes that check what a token scoped to sandboxes may see
        return token

    def role(needed: Role, fleet: bool = False) -> Callable[[Request, Token], Awaitable[Token]]:
        """``fleet``: a route about every sandbox at once, which a token scoped to sandboxes may not use."""

        async def check(request: Request, token: Annotated[Token, Depends(principal)]) -> Token:
            if not token.allows(needed):
                raise ApiError(403, f"token {token.name!r} lacks the {needed.value} role", "Authorization")
            _check_scope(request, token, fleet)
            return token

        return check

    reader, reporter = Depends(role(Role.READ)), Depends(role(Role.REPORT))
    fleet_reader = Depends(role(Role.READ, fleet=True))
    uses_redis = [Depends(redis_tracker(outage))]  # a request that completes ends a Redis outage
    app.include_router(meta.router(the_store, metrics, fleet_reader))
    app.include_router(attempts.router(the_store, settings, reader), dependencies=uses_redis)
    app.include_router(sandboxes.router(the_store, settings, reader), dependencies=uses_redis)
    app.include_router(stats.router(the_store, reader), dependencies=uses_redis)  # scoped: counts its sandboxes
    app.include_router(flows.router(the_store, reader), dependencies=uses_redis)
    app.include_router(actions.router(the_store, reporter), dependencies=uses_redis)
    app.include_router(
        policy.router(PolicyHistory(the_store.redis), fleet_reader, Depends(role(Role.ADMIN, fleet=True))),
        dependencies=uses_redis,
    )
    app.include_router(
        quarantine.router(QuarantineStore(the_store.redis), fleet_reader, Depends(role(Role.ADMIN))),
        dependencies=uses_redis,
    )
    app.include_router(dashboard.router())
    return app


def _check_scope(request: Request, token: Token, fleet: bool) -> None:
    """What a token scoped to sandboxes may not do here: 403 naming why (auth.py's docstring has the rules)."""
    if token.sandboxes is None:
        return
    mine = ", ".join(sorted(token.sandboxes or ()))
    if fleet:
        raise ApiError(403, f"token {token.name!r} is scoped to sandboxes ({mine}): not a fleet-wide route")
    named = request.path_params.get("sandbox", request.query_params.get("sandbox"))
    if named is not None and not token.sees(named):
        raise ApiError(403, f"token {token.name!r} may not see sandbox {named[:256]!r} (only {mine})", "sandbox")
    # Naming none is fine: a read then covers the token's whole scope (the routes filter by `caller(...).sandboxes`).
