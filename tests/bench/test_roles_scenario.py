"""The roles benchmark's layouts and table (bench/roles.py): what each layout starts and
the README row it prints."""

from __future__ import annotations

from bench.roles import _sent_after, busy_cores, database_url, role_env, table


def test_combined_is_one_all_process_without_redis() -> None:
    [env] = role_env("combined", "postgresql+psycopg://pg/db", "p:")
    assert env["SWARM_ROLE"] == "all"
    assert env["SWARM_DATABASE_URL"] == "postgresql+psycopg://pg/db"
    assert "SWARM_REDIS_URL" not in env


def test_split_serves_from_the_api_and_runs_on_a_worker_sharing_limits_over_redis() -> None:
    api, worker = role_env("split", "postgresql+psycopg://pg/db", "p:")
    assert (api["SWARM_ROLE"], worker["SWARM_ROLE"]) == ("api", "worker")
    for env in (api, worker):
        assert env["SWARM_DATABASE_URL"] == "postgresql+psycopg://pg/db"
        assert env["SWARM_REDIS_KEY_PREFIX"] == "p:"
        assert env["SWARM_REDIS_URL"].startswith("redis://127.0.0.1")
        assert env["SWARM_MIGRATE_ON_START"] == "false"  # migrated once before they start


def test_a_fresh_database_lives_on_the_admin_urls_server() -> None:
    url = database_url("postgresql+psycopg://postgres@127.0.0.1:5432/postgres", "b1")
    assert url == "postgresql+psycopg://postgres@127.0.0.1:5432/b1"


def test_table_has_a_row_per_layout_run() -> None:
    row = {
        "processes": ["api", "worker"],
        "get_job_full": {"p50_ms": 12.0, "p99_ms": 40.0},
        "get_job_no_agents": {"p50_ms": 3.0, "p99_ms": 9.0},
        "sse": {
            "lag_ms_p50": 20.0,
            "lag_ms_p99": 80.0,
            "complete_streams": 500,
            "subscribers": 500,
        },
        "ratio": 1.2,
        "after_join": {
            "get_job_full": {"p50_ms": 11.0, "p99_ms": 30.0},
            "get_job_no_agents": {"p50_ms": 2.0, "p99_ms": 5.0},
        },
    }
    lines = table({"split": row}).splitlines()
    assert len(lines) == 3
    assert lines[2] == (
        "| split | api + worker | 12.0 / 40.0 | 3.0 / 9.0 | 11.0 / 30.0, 2.0 / 5.0 "
        "| 20.0 / 80.0 | 500/500 | 1.2 |"
    )


def test_only_the_polls_sent_once_every_reader_joined_count_as_after_the_join() -> None:
    assert _sent_after([0.5, 0.4, 0.01, 0.02], [10.0, 11.0, 12.0, 13.0], 12.0) == [0.01, 0.02]


def test_busy_cores_is_the_share_of_the_machines_time_not_idle() -> None:
    assert busy_cores((100.0, 400.0), (250.0, 600.0), 2) == 1.5  # 150 of 200 ticks busy
    assert busy_cores((5.0, 10.0), (5.0, 10.0), 2) == 0.0
