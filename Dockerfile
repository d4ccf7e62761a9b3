# syntax=docker/dockerfile:1
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SWARM_DATABASE_URL=sqlite:////data/swarm.db \
    SWARM_ENVIRONMENT=production

WORKDIR /srv

# Dependencies first, in their own layer: it is rebuilt only when pyproject.toml changes.
COPY pyproject.toml README.md ./
RUN mkdir -p app && touch app/__init__.py \
    && pip install --no-compile . \
    && pip uninstall -y swarm-service

COPY app ./app
COPY migrations ./migrations
COPY alembic.ini ./
COPY scripts/entrypoint.sh ./scripts/entrypoint.sh
RUN pip install --no-compile --no-deps . \
    && useradd --system --uid 10001 --home-dir /srv swarm \
    && mkdir -p /data && chown swarm /data

USER swarm
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status == 200 else 1)"]

ENTRYPOINT ["/srv/scripts/entrypoint.sh"]
