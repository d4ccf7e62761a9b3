#!/bin/sh
# Container entry point: apply migrations, then serve. Extra arguments go to uvicorn.
set -eu
cd "$(dirname "$0")/.."
# The service checks the address it binds (no API keys → loopback only), so it must know it.
export SWARM_HOST="${SWARM_HOST:-0.0.0.0}"
alembic upgrade head
exec uvicorn app.main:app --host "$SWARM_HOST" --port "${SWARM_PORT:-8000}" \
    --proxy-headers --no-server-header "$@"
