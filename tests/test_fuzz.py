"""A bounded schemathesis run over the OpenAPI schema, on both databases: no input, valid by the schema or not,
may give a 5xx."""

from __future__ import annotations

import contextlib
import itertools
from typing import Any

import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.result import Ok

from service.api import create_app
from service.settings import Settings
from tests.conftest import admin_headers, new_key_headers

EXAMPLES_PER_OPERATION = 10


def test_no_input_gives_a_server_error(settings: Settings) -> None:
    app = create_app(settings)
    failures: list[str] = []
    with TestClient(app):  # runs the lifespan: the runtime stays on app.state for the calls below
        headers = admin_headers(settings)
        fresh = itertools.count()
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        operations = [result.ok() for result in schema.get_all_operations() if isinstance(result, Ok)]
        assert len(operations) >= 15
        for operation, mode in itertools.product(operations, GenerationMode):

            @given(case=operation.as_strategy(generation_mode=mode))
            @hypothesis_settings(
                max_examples=EXAMPLES_PER_OPERATION,
                deadline=None,
                derandomize=True,  # the same cases every run: a failure is reproducible, never flaky
                suppress_health_check=list(HealthCheck),
            )
            def run(case: Any) -> None:
                nonlocal headers
                response = case.call(headers=headers)
                if response.status_code >= 500:
                    failures.append(f"{case.method} {case.formatted_path}: {response.text[:300]}")
                if case.method == "DELETE" and "/keys/" in case.formatted_path:  # it may have revoked our key
                    headers = new_key_headers(settings, f"fuzz-{next(fresh)}", "admin")

            with contextlib.suppress(Unsatisfiable):  # nothing to make invalid (e.g. GET /healthz, negative mode)
                run()
    assert failures == [], failures[:10]
