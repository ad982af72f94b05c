"""The API contract: schemathesis fuzzes every operation of the OpenAPI schema against the
real service (``rpe-pad serve`` on the tiny bundle, over loopback) and checks every answer
against the schema: no 5xx, the documented status codes, content types and bodies, and
no request the schema allows that the service refuses (100 cases per operation).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is not installed (pip install -e '.[dev]')")
from hypothesis import HealthCheck, given, settings  # noqa: E402

from lab.served import Service  # noqa: E402
from service.app import create_app  # noqa: E402
from service.settings import Settings  # noqa: E402

# The schema as the app declares it (no bundle needed to read it).
SPEC = create_app(Settings(bundles=Path("unused"), records=False)).openapi()
SCHEMA = schemathesis.openapi.from_dict(SPEC)
OPERATIONS = {op.label: op for op in (result.ok() for result in SCHEMA.get_all_operations())}
CASES = 100
RANDOM = os.environ.get("RPEPAD_FUZZ_RANDOM") == "1"


@pytest.fixture(scope="module")
def served(served_release: Service) -> Service:
    return served_release


def test_every_operation_is_fuzzed() -> None:
    assert {"POST /inspect", "POST /inspect/batch", "GET /inspections", "GET /categories"} <= set(OPERATIONS)


@pytest.mark.parametrize("label", sorted(OPERATIONS))
def test_the_service_keeps_its_contract(label: str, served: Service) -> None:
    operation = OPERATIONS[label]
    seen = []

    @given(case=operation.as_strategy())
    @settings(max_examples=CASES, deadline=None, suppress_health_check=list(HealthCheck), database=None,
              derandomize=not RANDOM)
    def fuzz(case) -> None:
        seen.append(case)
        case.call_and_validate(base_url=served.url)

    fuzz()
    print(f"{label}: {len(seen)} cases")  # docs/SERVICE.md quotes these (pytest -s)
    assert seen, label
