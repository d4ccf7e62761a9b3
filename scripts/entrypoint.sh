#!/bin/sh
# Container entry point: apply migrations, then serve; options (`--workers` excepted: one
# process runs the scheduler) go to uvicorn. A command instead of options runs as it is,
# without serving: `python -m app.admin keys create --tenant NAME`, `swarmctl list`, `sh`.
set -eu
cd "$(dirname "$0")/.."
case "${1:-}" in
    "" | -*) ;;
    *) exec "$@" ;;
esac
# The service checks the address it binds (no API keys → loopback only), so it must know it.
export SWARM_HOST="${SWARM_HOST:-0.0.0.0}"
alembic upgrade head
# Migrated just above, once: the application need not do it again at start-up.
export SWARM_MIGRATE_ON_START="${SWARM_MIGRATE_ON_START:-false}"
# exec: uvicorn becomes PID 1 and receives SIGTERM itself (graceful drain).
exec uvicorn app.main:app --host "$SWARM_HOST" --port "${SWARM_PORT:-8000}" \
    --proxy-headers --no-server-header "$@"
