"""The query API's routes, one router per resource; `egress.api.app.create_app` includes them in this order:

`meta` (health, metrics), `attempts` (list, one, live follow), `sandboxes` (names, timeline), `stats` (counts,
series), `actions` (the agents' reports), `dashboard` (its page and files, outside the OpenAPI description).

Each module's ``router(...)`` builds an `APIRouter` around what its routes need (the record store, the settings,
the auth dependencies `create_app` made from the tokens), so no route reads global state. Route handlers are
plain functions: FastAPI runs them in its thread pool, where the blocking Redis client belongs.
"""

# No `from __future__ import annotations` in these modules: FastAPI reads the dependencies out of the annotations
# of functions defined inside each ``router(...)``, which refer to its arguments; deferred (string) annotations
# would lose them.
from typing import Annotated

from fastapi import Query, Request

from egress.api import models
from egress.api.auth import Role, Token

NoQuery = Annotated[models.NoQuery, Query()]
"""For routes without query parameters: any parameter given is unknown (400), as on every other route."""


_EVERYONE = Token("unauthenticated", b"", frozenset({Role.READ}))


def caller(request: Request) -> Token:
    """The token of the request (set by the auth dependency): what a token scoped to sandboxes may see."""
    token = getattr(request.state, "token", None)
    return token if isinstance(token, Token) else _EVERYONE
