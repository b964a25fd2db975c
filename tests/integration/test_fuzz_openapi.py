"""schemathesis against the live service's /openapi.json (issue 14): every operation, a bounded number of
generated requests each (stateless), then sequences that follow the document's links (stateful: a silence
made then deleted, a push then its report, a registration then read, patched, deleted); no server error and
no answer that the document does not allow."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.integration.conftest import ADMIN, Api

EXAMPLES = 25
SCENARIOS = 20  # stateful: sequences of up to STEPS linked calls
STEPS = 6
# Server-sent event streams answer forever by design; a fuzzer's request would only wait for its time-out.
STREAMS = {"/ui/api/stream"}
CHECKS = (not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance)


def fuzz(doc: dict[str, Any], base: str) -> tuple[int, list[str]]:
    """Runs in a thread (schemathesis calls are blocking); returns (requests made, failures)."""
    schema = schemathesis.openapi.from_dict(doc)
    failures: list[str] = []
    made = 0
    for result in schema.get_all_operations():
        if not hasattr(result, "ok"):  # an operation the document cannot describe is itself a failure
            failures.append(f"invalid operation: {result}")
            continue
        operation = result.ok()
        if operation.path in STREAMS:
            continue

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            phases=[Phase.generate],  # failures are collected, not shrunk
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy())
        def check(case: Any) -> None:
            nonlocal made
            response = case.call(base_url=base, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10)
            made += 1
            try:
                case.validate_response(response, checks=list(CHECKS))
            except (Exception, BaseExceptionGroup) as exc:  # collected: one line per failure
                failures.append(f"{case.method} {case.path}: {str(exc).splitlines()[0:3]}")

        check()
    return made, failures


def stateful(doc: dict[str, Any], base: str) -> tuple[int, list[str]]:
    """Linked sequences of calls; returns (requests made, failures)."""
    schema = schemathesis.openapi.from_dict(doc)
    failures: list[str] = []
    made = 0
    machine: Any = schema.as_state_machine()

    class Linked(machine):  # type: ignore[misc]
        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"base_url": base, "headers": {"Authorization": f"Bearer {ADMIN}"}, "timeout": 10}

        def validate_response(self, response: Any, case: Any, *args: Any, **kwargs: Any) -> None:
            nonlocal made
            made += 1
            try:
                case.validate_response(response, checks=list(CHECKS))
            except (Exception, BaseExceptionGroup) as exc:
                failures.append(f"stateful {case.method} {case.path}: {str(exc).splitlines()[0:3]}")

    Linked.run(
        settings=settings(
            max_examples=SCENARIOS,
            stateful_step_count=STEPS,
            deadline=None,
            database=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
    )
    return made, failures


@pytest.mark.timeout(600)
async def test_schemathesis_finds_no_server_error_and_no_schema_violation(api: Api) -> None:
    async with api.http.get(api.base + "/openapi.json") as r:
        doc = await r.json()
    made, failures = await asyncio.to_thread(fuzz, doc, api.base)
    linked, more = await asyncio.to_thread(stateful, doc, api.base)
    print(
        f"schemathesis: stateless {made} requests, stateful {linked} requests,"
        f" {len(failures + more)} failures"
    )
    operations = [m for path, item in doc["paths"].items() if path not in STREAMS for m in item]
    assert made >= 10 * len(operations) and linked >= SCENARIOS
    assert failures + more == [], "\n".join(sorted(set(failures + more))[:30])
