"""Schemathesis over the API's own OpenAPI description, against the real app on a real redis-server with records
and actions in it: no generated request (valid or not) gets a server error, and every answer matches the
description (status code, content type, body schema). Bounded: a few dozen examples per operation."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.schemas import BaseSchema
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from egress.api.app import create_app
from egress.record import query
from egress.record.store import RecordStore
from tests.api import ADMIN, auth, description, seed_actions, seed_attempts, settings
from tests.budget import examples
from tests.redis_server import RedisServer

EXAMPLES = examples(50)
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def _cases() -> list[tuple[str, GenerationMode]]:
    """(operation, mode) pairs of the description (built without Redis: describing needs none); negative cases
    only where there is an input to get wrong. /v1/follow never ends by design: test_app.py tests it."""
    spec = description()
    cases = []
    for path, item in sorted(spec["paths"].items()):
        for method, operation in item.items():
            if path == "/v1/follow":
                continue
            label = f"{method.upper()} {path}"
            cases.append((label, GenerationMode.POSITIVE))
            if operation.get("parameters") or operation.get("requestBody"):
                cases.append((label, GenerationMode.NEGATIVE))
    return cases


@pytest.fixture(scope="module")
def api_schema(redis_server: RedisServer) -> Iterator[BaseSchema]:
    with tempfile.TemporaryDirectory(prefix="egt-api-st-") as spool:
        store = RecordStore(redis_server.url, Path(spool), "gw1", retry_interval=0.0)
        now = time.time()
        store.write(seed_attempts(now))
        query.write_actions(store, seed_actions(now))
        yield schemathesis.openapi.from_asgi("/openapi.json", create_app(settings(redis_server.url)))
        store.close()


@pytest.mark.parametrize(("label", "mode"), _cases())
def test_no_server_error(api_schema: BaseSchema, label: str, mode: GenerationMode) -> None:
    operation = api_schema.find_operation_by_label(label)
    assert operation is not None, label

    @hypothesis_settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case: schemathesis.Case[Any]) -> None:
        case.call_and_validate(headers=auth(ADMIN), checks=CHECKS)

    check()
