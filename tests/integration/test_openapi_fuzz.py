"""Fuzz every operation in /openapi.json against a real server, as the administrator.

Schemathesis generates valid and invalid requests from the published schema; every
answer must not be a 5xx, must use a documented status code and content type, and its
body must match the documented schema. Runs on the embedded SQLite and on PostgreSQL.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import TEMPLATE_DB
from tests.support.alto_server import AltoServer, alto_server, server_env

pytestmark = pytest.mark.slow

# Examples per operation and mode; the defaults keep both databases near a minute on a
# small machine, ALTO_FUZZ_EXAMPLES=200 makes a deeper (nightly) run.
MAX_EXAMPLES = int(os.environ.get("ALTO_FUZZ_EXAMPLES", "6"))
NEGATIVE_SHARE = 0.6
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
_names = itertools.count()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def fuzz_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AltoServer]:
    data_dir: Path = tmp_path_factory.mktemp("fuzz") / "data"
    db = None
    name = None
    if request.param == "postgresql":
        pg = request.getfixturevalue("pg_server")
        admin = request.getfixturevalue("pg_admin")
        name = f"fuzz_{os.getpid()}_{next(_names)}"
        admin(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB}")
        db = pg.url(name)
    try:
        with alto_server(data_dir, db=db, env=server_env()) as server:
            yield server
    finally:
        if name is not None:
            admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="module")
def admin_headers(fuzz_server: AltoServer) -> dict[str, str]:
    return fuzz_server.login()


def can_be_invalid(operation: Any) -> bool:
    """Whether negative cases exist: a lone free-form string path id has none, and asking
    Hypothesis for some would only burn hundreds of rejected attempts."""
    if list(operation.query) or list(operation.headers) or list(operation.body):
        return True
    for parameter in operation.path_parameters:
        schema = dict(parameter.definition.get("schema", {}))
        schema.pop("title", None)
        schema.pop("description", None)
        if schema != {"type": "string"}:
            return True
    return False


def fuzz_operation(operation: Any, mode: GenerationMode, headers: dict[str, str]) -> None:
    """Run the generated cases of one operation; raises on the first failing check."""
    examples = MAX_EXAMPLES if mode.is_positive else max(1, int(MAX_EXAMPLES * NEGATIVE_SHARE))

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        verbosity=Verbosity.quiet,
    )
    def run(case: Any) -> None:
        case.call_and_validate(headers=headers, checks=CHECKS, timeout=30)

    run()


def test_api_matches_its_schema(fuzz_server: AltoServer, admin_headers: dict[str, str]) -> None:
    # (schemathesis.pytest.from_fixture is not usable with pytest 9: it reads the removed
    # Item._nodeid; so the operations are driven one by one here.)
    schema = schemathesis.openapi.from_url(fuzz_server.url + "/openapi.json").exclude(
        # Logging out would revoke the token every other request uses.
        method="DELETE",
        path="/v1/auth/tokens/current",
    )
    failures: dict[str, str] = {}
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        modes = [GenerationMode.POSITIVE]
        if can_be_invalid(operation):
            modes.append(GenerationMode.NEGATIVE)
        for mode in modes:
            started = time.monotonic()
            try:
                fuzz_operation(operation, mode, admin_headers)
            except Unsatisfiable:
                pass  # nothing invalid to send (e.g. no parameters but a free-form path id)
            except (Exception, BaseExceptionGroup) as exc:  # collect all, then report
                failures[f"{operation.label} [{mode.value}]"] = _short(exc)
            if os.environ.get("ALTO_FUZZ_TIMING"):
                print(f"{time.monotonic() - started:6.2f}s {operation.label} {mode.value}")
    assert operations > 10, "the schema lists suspiciously few operations"
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in sorted(failures.items()))


def _short(exc: BaseException, limit: int = 1500) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[:limit] + " ..."
