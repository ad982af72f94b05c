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
# The category of an inspection: ?category= or the form field (service/app.py, requested_category).
# Both are optional in the schema, which cannot say "one of them, and equal when both" across
# the query string and the body; the cases keep to that rule (its 422s: tests/service/test_sharding.py).
ROUTED = {"/inspect", "/inspect/batch"}


def _given(case) -> tuple[bool, bool]:
    """Whether the case sends a category in the query string, and in the form (a null form field
    goes out as the text "null"; a null query parameter is left out)."""
    return ((case.query or {}).get("category") is not None,
            isinstance(case.body, dict) and "category" in case.body)


@SCHEMA.hook
def filter_case(context, case) -> bool:
    return case.operation.path not in ROUTED or any(_given(case))


@SCHEMA.hook
def map_case(context, case):
    if case.operation.path in ROUTED and all(_given(case)):
        case.body["category"] = case.query["category"]
    return case


@pytest.fixture(scope="module")
def served(served_release: Service) -> Service:
    return served_release


def test_every_operation_is_fuzzed() -> None:
    assert {"POST /inspect", "POST /inspect/batch", "GET /inspections", "GET /categories"} <= set(OPERATIONS)


@pytest.mark.slow(seconds=15)
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
