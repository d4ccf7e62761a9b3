"""compose.yaml, without a Docker engine: the services the replicas need, the role and the
shared-limit environment of each, every replica's environment valid for Settings, and the
one-off migration before any replica."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from app.config import Settings
from app.scheduler.gates import limits_divisor

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return loaded


def interpolate(value: str) -> str:
    """Compose's ${VAR:?msg} / ${VAR:-default}, with VAR unset: a stand-in or the default."""
    return re.sub(r"\$\{(\w+)(?::([?-])([^}]*))?\}", lambda m: m[3] if m[2] == "-" else "x", value)


def test_the_services_of_a_replicated_deployment() -> None:
    services = compose()["services"]
    assert set(services) == {
        "postgres",
        "redis",
        "migrate",
        "api-1",
        "api-2",
        "worker-1",
        "worker-2",
        "worker-3",
    }
    roles = {name: s.get("environment", {}).get("SWARM_ROLE") for name, s in services.items()}
    assert [n for n, r in roles.items() if r == "api"] == ["api-1", "api-2"]
    assert [n for n, r in roles.items() if r == "worker"] == ["worker-1", "worker-2", "worker-3"]


def test_every_replica_shares_one_database_and_one_redis() -> None:
    services = compose()["services"]
    for name in ("api-1", "api-2", "worker-1", "worker-2", "worker-3"):
        service = services[name]
        env = {k: interpolate(str(v)) for k, v in service["environment"].items()}
        assert env["SWARM_DATABASE_URL"].startswith("postgresql"), name
        assert env["SWARM_REDIS_URL"] == "redis://redis:6379/0", name
        assert env["SWARM_MIGRATE_ON_START"] == "false", name
        assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        settings = Settings(**{k.removeprefix("SWARM_").lower(): v for k, v in env.items()})
        # Shared over Redis: no worker takes a divided (or a multiplied) limit.
        assert limits_divisor(settings) == 1
        assert settings.redis_url is not None


def test_the_migration_runs_once_against_the_shared_database() -> None:
    services = compose()["services"]
    migrate = services["migrate"]
    assert migrate["restart"] == "no"
    assert "migrate.upgrade" in " ".join(migrate["command"])
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    db = services["api-1"]["environment"]["SWARM_DATABASE_URL"]
    assert migrate["environment"]["SWARM_DATABASE_URL"] == db
