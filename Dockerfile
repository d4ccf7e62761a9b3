# syntax=docker/dockerfile:1
# The service as a container: non-root, SQLite on the /data volume, migrations then serving.
#   docker build -t swarm-service .
#   docker run -p 8000:8000 -v swarm-data:/data \
#       -e SWARM_UPSTREAM_BASE_URL=https://api.moonshot.ai/v1 -e SWARM_UPSTREAM_API_KEY=sk-… \
#       swarm-service
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SWARM_DATABASE_URL=sqlite:////data/swarm.db \
    SWARM_ENVIRONMENT=production \
    SWARM_PORT=8000

WORKDIR /srv

# Dependencies first, in their own layer, read from pyproject.toml alone: the layer is
# rebuilt only when pyproject.toml changes, not on every change to the code or the README.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The service itself (no dependencies left to fetch): console scripts `swarmctl` and
# `swarm-simulator`; migrations and the entry point stay in /srv.
COPY README.md alembic.ini ./
COPY app ./app
COPY migrations ./migrations
COPY scripts/entrypoint.sh ./scripts/entrypoint.sh
RUN pip install --no-deps . \
    && rm -rf build ./*.egg-info \
    && groupadd --system --gid 10001 swarm \
    && useradd --system --uid 10001 --gid swarm --home-dir /srv --no-create-home \
        --shell /usr/sbin/nologin swarm \
    && mkdir -p /data && chown swarm:swarm /data

# Numeric, so that the runtime can tell it is not root without reading /etc/passwd.
USER 10001:10001
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('SWARM_PORT', '8000'), timeout=2)"]

# On SIGTERM the service starts no new upstream call and gives those in flight, and open
# connections, SWARM_SHUTDOWN_GRACE_S (10 s): stop the container with more than that
# (docker stop -t 30, compose stop_grace_period: 30s).
ENTRYPOINT ["/srv/scripts/entrypoint.sh"]
