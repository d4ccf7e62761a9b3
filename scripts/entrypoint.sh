#!/bin/sh
# Container entry point: migrate, then serve; options (`--workers` excepted: one
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
# exec: the server becomes PID 1 and receives SIGTERM itself (graceful drain). It migrates
# the database first (SWARM_MIGRATE_ON_START), then serves with the connection limits
# (python -m app.server is uvicorn with the service's settings; options go to uvicorn).
exec python -m app.server --proxy-headers --no-server-header "$@"
