"""Fuzzing the API from its committed OpenAPI document (schemathesis): whatever is sent,
no 5xx, and every response conforms to the document. Bounded to finish in a few minutes."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks

from app.keys import create_key
from app.store import migrate
from tests.helpers.processes import ROOT, Proc, start_service, start_simulator

pytestmark = pytest.mark.e2e

schema = schemathesis.openapi.from_path(ROOT / "openapi" / "openapi.json")

# Examples per operation: enough to find crashes in a couple of minutes on 2 cores.
EXAMPLES = int(os.environ.get("SWARM_FUZZ_EXAMPLES", "80"))
# The fuzzing tenant's API key (schemathesis asks for it while collecting tests).
KEY = "swarm_fuzz_" + secrets.token_urlsafe(24)


@schema.auth()
class ApiKeyAuth:
    """Tells schemathesis how to authenticate, so its own checks can also try requests
    without a key or with a wrong one (they must get 401)."""

    def get(self, case: schemathesis.Case, ctx: object) -> str:
        return KEY

    def set(self, case: schemathesis.Case, data: str, ctx: object) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


@pytest.fixture(scope="module")
def fuzz_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    sim: Proc = start_simulator(tmp, "--latency-base-ms", "0")
    db = tmp / "fuzz.db"
    url = f"sqlite:///{db}"
    migrate.upgrade(url)
    create_key(url, "fuzzer", key=KEY)
    svc = start_service(
        tmp,
        {
            "SWARM_UPSTREAM_BASE_URL": sim.url + "/v1",
            "SWARM_TENANT_SUBMITS_PER_S": "100000",
            "SWARM_TENANT_MAX_ACTIVE_JOBS": "100000",
            "SWARM_SSE_MAX_STREAM_S": "2",
            "SWARM_LOG_LEVEL": "WARNING",
            # Generated graphs name webhook and tool URLs: none may ever be called (or
            # even resolved) from a test; loopback is refused too (private not allowed).
            "SWARM_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
            "SWARM_TOOL_ALLOWED_HOSTS": "127.0.0.1",
        },
        db=db,
    )
    yield svc.url, KEY
    svc.stop()
    sim.stop()
    assert "Traceback" not in svc.log(), svc.log()[-3000:]


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_api_conforms_and_never_fails(
    case: schemathesis.Case, fuzz_target: tuple[str, str]
) -> None:
    base_url, _key = fuzz_target
    # A schema-valid graph may still be refused on meaning (a cycle, a model with no price
    # under a budget): those 422s are correct, so "positive data acceptance" is not checked.
    case.call_and_validate(
        base_url=base_url, timeout=30, excluded_checks=[checks.positive_data_acceptance]
    )
