"""GET /upstream: is each configured upstream reachable, is its key accepted, does it serve
the models this service would send it, and what to fix when not."""

from __future__ import annotations

import time

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from app.api.auth import AUTH_RESPONSES, TenantDep
from app.api.deps import ServicesDep
from app.upstream.check import CheckStatus, OverallStatus, check_upstreams
from app.upstream.pool import DEFAULT

router = APIRouter(tags=["upstream"], responses=AUTH_RESPONSES)


class _Model(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class UpstreamModel(_Model):
    model: str = Field(description="The model's name in this service.")
    upstream_name: str = Field(description="The name sent to this upstream for it.")
    default: bool = Field(description="This is the service's default model (SWARM_DEFAULT_MODEL).")
    offered: bool | None = Field(
        description="Whether the upstream serves it: from its model list, or from a one-token "
        "chat completion when it has no list; null when the check could not tell."
    )


class UpstreamStatus(_Model):
    name: str = Field(description="`default` (SWARM_UPSTREAM_BASE_URL) or the provider's name.")
    base_url: str = Field(description="The upstream's base URL (without credentials or query).")
    api_key_env: str | None = Field(
        description="The environment variable holding this upstream's key (never the key)."
    )
    api_key_set: bool = Field(
        description="Whether a key is sent to it: its variable is set (false for the built-in "
        "simulator, which needs none)."
    )
    simulator: bool = Field(
        description="This is the built-in simulator, started because no upstream is configured."
    )
    status: CheckStatus = Field(
        description="ok (reachable, key accepted), auth_failed (401), forbidden (403), "
        "unreachable (no connection), timeout (no answer in time) or error (anything else)."
    )
    probe: str | None = Field(
        description="What decided: `models` (GET /models) or `chat` (a one-token chat "
        "completion, when the upstream does not implement /models); null if nothing was sent."
    )
    http_status: int | None = Field(description="The upstream's HTTP status, if it answered.")
    latency_ms: float | None = Field(
        description="Round trip of the deciding call (or time until it failed)."
    )
    models_offered: list[str] = Field(
        description="Model ids the upstream lists (the first 100; see models_offered_total)."
    )
    models_offered_total: int | None = Field(
        description="How many models it lists; null when it gave no list."
    )
    models: list[UpstreamModel] = Field(
        description="Every model this service routes to this upstream, and whether it is offered."
    )
    advice: list[str] = Field(description="What is wrong and what to do, in plain words.")


class UpstreamReportOut(_Model):
    status: OverallStatus = Field(
        description="ok: every upstream is ok and the default model is offered; failed: no "
        "upstream is ok; degraded: anything in between."
    )
    upstreams: list[UpstreamStatus] = Field(description="One entry per configured upstream.")
    advice: list[str] = Field(
        description="Problems beyond single upstreams (the default model cannot be served)."
    )


# How long one check's answer is reused.
CHECK_CACHE_S = 10.0


@router.get("/upstream", response_model=UpstreamReportOut)
async def check_upstream(services: ServicesDep, _tenant: TenantDep) -> UpstreamReportOut:
    """Checks every configured upstream now, all at once: lists its models (or, if it does not
    implement /models, makes a one-token chat completion), measures the latency, and turns
    failures into advice. Each upstream's check is bounded by SWARM_UPSTREAM_CHECK_TIMEOUT_S.

    Always 200 when the check itself ran, even if every upstream failed: read `status`.
    No key or other secret appears in the answer.
    """
    pool = services.upstreams
    settings = services.settings
    # One check at a time, and its answer reused for a few seconds: the check takes pooled
    # connections (and may spend a token), so callers must not be able to flood it.
    async with services.upstream_check_lock:
        cache = services.upstream_check_cache
        if cache and time.monotonic() - cache[0][0] < CHECK_CACHE_S:
            answer: UpstreamReportOut = cache[0][1]
            return answer
        report = await check_upstreams(
            pool,
            pool.registry,
            settings,
            # The default upstream without a configured URL is the simulator started at start.
            builtin_simulator=settings.upstream_base_url is None and DEFAULT in pool.upstreams,
        )
        out = UpstreamReportOut.model_validate(report)
        cache[:] = [(time.monotonic(), out)]
        return out
