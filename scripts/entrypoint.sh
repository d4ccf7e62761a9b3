#!/bin/sh
# Container entry point: apply migrations, then serve. Extra arguments go to uvicorn.
set -eu
cd "$(dirname "$0")/.."
alembic upgrade head
exec uvicorn app.main:app --host "${SWARM_HOST:-0.0.0.0}" --port "${SWARM_PORT:-8000}" \
    --proxy-headers --no-server-header "$@"
