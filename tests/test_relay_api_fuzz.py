"""Schemathesis against the clinic API's own OpenAPI document: no generated request gets a server error.

Every operation is called with requests generated from its declared parameters and body, valid ones (positive)
and ones that break the declaration (negative), with a valid clinic token, once with generated path parameters
and once with the ids of real rows (so the queries behind the handlers run), and once with a generated (broken)
token, on SQLite and PostgreSQL. The answer may be anything but a 5xx: a bad parameter is a 422 that names it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok

from tests.relay_helpers import TwoClinics, throwaway_db, two_clinics

BACKEND_PARAMS = [pytest.param("sqlite"), pytest.param("postgresql", marks=pytest.mark.integration)]
EXAMPLES = 40
"""Per operation, generation mode and set of path parameters (about 15 s over the whole API on one backend)."""


@pytest.fixture(params=BACKEND_PARAMS)
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TwoClinics]:
    with throwaway_db(request.param, tmp_path) as db:
        yield two_clinics(db, tmp_path)


def _real_ids(world: TwoClinics) -> dict[str, Any]:
    return {"device": world.a.identity.device_id, "job_id": world.job_a, "sha256": world.blob, "seq": 2}


@pytest.mark.slow
def test_no_generated_request_gets_a_server_error(world: TwoClinics) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", world.app)
    auth = {"Authorization": f"Bearer {world.token_a}"}
    real = _real_ids(world)
    operations = [r.ok() if isinstance(r, Ok) else pytest.fail(str(r.err())) for r in schema.get_all_operations()]
    assert len(operations) >= 12, [op.label for op in operations]
    for operation in operations:
        fixed = {name: value for name, value in real.items() if f"{{{name}}}" in operation.path}
        for path_parameters in ({}, fixed) if fixed else ({},):
            free = [p for p in operation.path_parameters if p.name not in path_parameters]
            modes = [GenerationMode.POSITIVE]
            if operation.query or operation.body or free:  # something left to break
                modes.append(GenerationMode.NEGATIVE)
            # the ignores: mypy checks for Python 3.10, which has no enum.StrEnum, GenerationMode's base
            for mode in modes:
                _fuzz(operation.as_strategy(mode, headers=auth, path_parameters=path_parameters or None))  # type: ignore[arg-type]
        _fuzz(operation.as_strategy(GenerationMode.NEGATIVE if operation.headers else GenerationMode.POSITIVE))  # type: ignore[arg-type]


def _fuzz(strategy: st.SearchStrategy[Case[Any]]) -> None:
    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def call(case: Case[Any]) -> None:
        case.call_and_validate(checks=[not_a_server_error])

    call()
