"""Checks every configured upstream: reachable from here, key accepted, serving the models
this service would send it. Each failure becomes advice in plain words.

Per upstream, `GET {base_url}/models` through its pooled SDK client; a server that does not
implement /models (404/405) is judged by one chat completion of one token instead. All
upstreams are checked at once, each bounded by `upstream_check_timeout_s` (waiting for a
pooled connection included). Nothing raised inside a check escapes it: an unexpected
exception becomes status "error" naming only the exception's type. No key, header or other
secret ever appears in a result or in the log: upstream messages are redacted, and every
configured key is masked wherever it might be echoed back.
"""

from __future__ import annotations

import asyncio
import difflib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import openai

from app.config import Settings
from app.text import mask_fragments, secret_fragments
from app.upstream.client import Upstream
from app.upstream.errors import redact
from app.upstream.pool import DEFAULT, NoRouteError, UpstreamPool
from app.upstream.registry import ModelRegistry

log = logging.getLogger(__name__)

DEFAULT_KEY_ENV = "SWARM_UPSTREAM_API_KEY"
TIMEOUT_ENV = "SWARM_UPSTREAM_CHECK_TIMEOUT_S"
# An upstream may offer hundreds of models; the report lists this many (and the total).
MAX_MODELS_LISTED = 100
# Advice names at most this many of the offered models.
MAX_MODELS_IN_ADVICE = 15
# Keys shorter than this are not masked by substring (it would garble the text); real keys
# are far longer, and the placeholder sent to key-less local servers is not a secret.
_MIN_SECRET_LEN = 8
_PLACEHOLDER_KEY = "not-needed"


class CheckStatus(StrEnum):
    ok = "ok"  # reachable and the key accepted
    auth_failed = "auth_failed"  # 401
    forbidden = "forbidden"  # 403
    unreachable = "unreachable"  # connection refused, DNS, TLS, reset
    timeout = "timeout"  # no answer within the check's time-out
    error = "error"  # anything else: 429, 5xx, a body that is not a model list, a bug


class OverallStatus(StrEnum):
    ok = "ok"
    degraded = "degraded"
    failed = "failed"


@dataclass(frozen=True)
class ModelCheck:
    model: str
    upstream_name: str
    default: bool
    offered: bool | None


@dataclass(frozen=True)
class UpstreamCheck:
    name: str
    base_url: str
    api_key_env: str | None
    # Whether a key is sent: the variable is set (or the provider needs none).
    api_key_set: bool
    simulator: bool
    status: CheckStatus
    probe: str | None
    http_status: int | None
    latency_ms: float | None
    models_offered: list[str]
    models_offered_total: int | None
    models: list[ModelCheck]
    advice: list[str]


@dataclass(frozen=True)
class UpstreamReport:
    status: OverallStatus
    upstreams: list[UpstreamCheck]
    advice: list[str]


@dataclass(frozen=True)
class _Routed:
    model: str
    wire: str
    default: bool


@dataclass
class _Result:
    """What one check found so far; frozen into an UpstreamCheck at the end."""

    status: CheckStatus = CheckStatus.error
    probe: str | None = None
    http_status: int | None = None
    latency_ms: float | None = None
    offered: list[str] | None = None
    offered_by_model: dict[str, bool | None] = field(default_factory=dict)
    advice: list[str] = field(default_factory=list)


def safe_url(url: str) -> str:
    """The URL without user info, query or fragment (where credentials sometimes hide)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if parts.port is not None:
            host = f"{host}:{parts.port}"
        return urlunsplit((parts.scheme, host, parts.path, "", ""))
    except ValueError:
        return "(unparsable URL)"


class _Masker:
    """Masks every configured key wherever it appears, whole or a run of 8 of its
    characters (upstreams sometimes echo keys, or part of one)."""

    def __init__(self, secrets: Iterable[str | None]) -> None:
        keys = {s for s in secrets if s and len(s) >= _MIN_SECRET_LEN and s != _PLACEHOLDER_KEY}
        self.fragments = frozenset().union(*(secret_fragments(k) for k in keys))

    def __call__(self, text: str) -> str:
        return mask_fragments(text, self.fragments)


def _upstream_said(exc: openai.APIStatusError) -> str:
    """The upstream's own error message, redacted and short ("" when it gave none)."""
    body: Any = exc.body
    message: Any = None
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            message = inner.get("message")
        if message is None:
            message = body.get("message")
    if not isinstance(message, str) or not message.strip():
        return ""
    return "; upstream said: " + redact(message.strip())[:300]


def _list_models(names: list[str], total: int) -> str:
    if not names:
        return "nothing (its model list is empty)"
    shown = ", ".join(names[:MAX_MODELS_IN_ADVICE])
    more = total - min(len(names), MAX_MODELS_IN_ADVICE)
    return f"{shown} (and {more} more)" if more > 0 else shown


class _Checker:
    def __init__(
        self,
        pool: UpstreamPool,
        registry: ModelRegistry,
        settings: Settings,
        *,
        builtin_simulator: bool,
    ) -> None:
        self.pool = pool
        self.registry = registry
        self.timeout_s = settings.upstream_check_timeout_s
        self.default_model = settings.default_model
        self.builtin_simulator = builtin_simulator
        default_key = (
            settings.upstream_api_key.get_secret_value() if settings.upstream_api_key else None
        )
        self.mask = _Masker([default_key, *(u.client.api_key for u in pool.upstreams.values())])
        self.default_key_set = bool(default_key)

    # ------------------------------------------------------------------ what goes where

    def key_env(self, name: str) -> str | None:
        if name == DEFAULT:
            return DEFAULT_KEY_ENV
        provider = self.registry.providers.get(name)
        return provider.api_key_env if provider else None

    def key_set(self, name: str) -> bool:
        if name == DEFAULT:
            return self.default_key_set
        # A provider's upstream exists only when its key variable is set, or when it has
        # no key variable at all (a local server), in which case no key is sent.
        return self.key_env(name) is not None

    def routed_to(self, name: str) -> list[_Routed]:
        names = list(dict.fromkeys([self.default_model, *self.registry.names()]))
        routed = []
        for model in names:
            try:
                route = self.pool.route(model)
            except NoRouteError:
                continue
            if route.upstream.name == name:
                routed.append(_Routed(model, route.wire_model, model == self.default_model))
        return routed

    def key_advice(self, name: str) -> str:
        env = self.key_env(name)
        if env is None:
            return (
                f"provider {name!r} has no api_key_env in the models file, so no key is sent: "
                "add api_key_env: SOME_VARIABLE to it and set that variable to a valid key"
            )
        if not self.key_set(name):
            return f"no key is set: set {env} to a valid key for this upstream"
        return f"the key in {env} is wrong or revoked: set {env} to a valid, active key"

    # ------------------------------------------------------------------ the check

    async def check(self, name: str, upstream: Upstream) -> UpstreamCheck:
        url = safe_url(upstream.base_url)
        simulator = self.builtin_simulator and name == DEFAULT
        res = _Result()
        routed: list[_Routed] = []
        waiting_for_pool = True
        started = time.perf_counter()
        try:
            routed = self.routed_to(name)
            async with asyncio.timeout(self.timeout_s), upstream.connections:
                waiting_for_pool = False
                await self._probe(name, upstream, url, routed, res, simulator=simulator)
        except TimeoutError:
            res.status = CheckStatus.timeout
            res.latency_ms = _ms_since(started)
            if waiting_for_pool:
                res.advice.append(
                    f"the check waited {self.timeout_s:g} s ({TIMEOUT_ENV}) for a free "
                    f"connection to {url} and got none: the pool is busy with agent calls; "
                    "the upstream itself may be fine"
                )
            else:
                res.advice.append(self._timeout_advice(url))
        except Exception as exc:  # a bug or a surprise: never a 500, never a secret
            log.warning("upstream check of %r failed unexpectedly: %s", name, type(exc).__name__)
            res.status = CheckStatus.error
            res.advice.append(
                f"the check itself failed unexpectedly ({type(exc).__name__}); "
                "try again, and report it if it persists"
            )
        if simulator:
            # The built-in simulator answers whatever model it is asked for: what it offers
            # is what it lists and every model routed to it, so the count and the ticks agree.
            res.offered_by_model = {r.model: True for r in routed}
            if res.offered is not None:
                res.offered = list(dict.fromkeys([*res.offered, *(r.wire for r in routed)]))
            res.advice.append(
                "this is the built-in simulator (no upstream is configured): answers are "
                "synthetic; set SWARM_UPSTREAM_BASE_URL and SWARM_UPSTREAM_API_KEY to call a "
                "real API"
            )
        elif res.status is CheckStatus.ok and not routed:
            res.advice.append(
                "no model is routed to this upstream: "
                + (
                    "the default upstream (SWARM_UPSTREAM_BASE_URL) takes every model not "
                    "pinned to a provider in the models file"
                    if DEFAULT in self.pool.upstreams
                    else "pin models to it with `provider:` in the models file"
                )
            )
        offered = res.offered or []
        return UpstreamCheck(
            name=name,
            base_url=url,
            api_key_env=self.key_env(name),
            api_key_set=self.key_set(name),
            simulator=simulator,
            status=res.status,
            probe=res.probe,
            http_status=res.http_status,
            latency_ms=res.latency_ms,
            models_offered=[self.mask(m) for m in offered[:MAX_MODELS_LISTED]],
            models_offered_total=None if res.offered is None else len(offered),
            models=[
                ModelCheck(r.model, r.wire, r.default, res.offered_by_model.get(r.model))
                for r in routed
            ],
            advice=[self.mask(a) for a in res.advice],
        )

    def _timeout_advice(self, url: str) -> str:
        return (
            f"no answer from {url} within {self.timeout_s:g} s ({TIMEOUT_ENV}): the upstream "
            "is unreachable from here or overloaded; check the URL, DNS, proxy and firewall "
            "from this host"
        )

    async def _probe(
        self,
        name: str,
        upstream: Upstream,
        url: str,
        routed: list[_Routed],
        res: _Result,
        *,
        simulator: bool,
    ) -> None:
        res.probe = "models"
        started = time.perf_counter()
        try:
            raw = await upstream.client.models.with_raw_response.list(timeout=self.timeout_s)
        except openai.APIStatusError as exc:
            res.latency_ms = _ms_since(started)
            res.http_status = exc.status_code
            if exc.status_code in (404, 405):
                await self._chat_probe(name, upstream, url, routed, res)
            else:
                self._judge_status(name, exc, f"GET {url}/models", res)
            return
        except openai.APIConnectionError as exc:
            res.latency_ms = _ms_since(started)
            self._judge_connection(exc, url, res)
            return
        res.latency_ms = _ms_since(started)
        res.http_status = raw.status_code
        try:
            page = raw.parse()
            ids = [m.id for m in page.data if isinstance(m.id, str)]
        except Exception as exc:  # the SDK raises assorted types on a body it cannot read
            res.status = CheckStatus.error
            res.advice.append(
                f"GET {url}/models answered {raw.status_code} but not with a model list "
                f"({type(exc).__name__}): check that the base URL points at the API itself "
                "(it usually ends in /v1)"
            )
            return
        res.status = CheckStatus.ok
        res.offered = ids
        offered = set(ids)
        for r in routed:
            if r.wire not in offered and len(ids) == 1 and not simulator:
                # One alias listed (llama-server's --alias, a one-model vLLM): such a server
                # answers any name with its one model, so "not listed" is not "missing".
                res.offered_by_model[r.model] = None
                res.advice.append(self._one_model_advice(r, url, ids[0]))
                continue
            res.offered_by_model[r.model] = r.wire in offered
            if r.wire not in offered and not simulator:
                res.advice.append(self._unknown_model_advice(r, ids))

    @staticmethod
    def _one_model_advice(r: _Routed, url: str, listed: str) -> str:
        sent_as = f" (sent as {r.wire})" if r.wire != r.model else ""
        return (
            f"not listed: {r.model}{sent_as}; {url} lists one model only ({listed}), as a "
            "server of one model does (llama.cpp's llama-server, vLLM), and such a server "
            f"may answer any model name with {listed}: if that is the model meant, set "
            f"upstream_name: {listed} for {r.model} in the models file (or "
            f"SWARM_DEFAULT_MODEL={listed}) so that what is sent matches what is listed"
        )

    def _unknown_model_advice(self, r: _Routed, ids: list[str]) -> str:
        sent_as = f" (sent as {r.wire})" if r.wire != r.model else ""
        role = " (the default model, SWARM_DEFAULT_MODEL)" if r.default else ""
        text = f"unknown model: {r.model}{sent_as}{role}; it offers: {_list_models(ids, len(ids))}"
        close = difflib.get_close_matches(r.wire, ids, n=1, cutoff=0.6)
        if close:
            text += (
                f"; closest: {close[0]} (if that is the same model, set upstream_name: "
                f"{close[0]} for {r.model} in the models file)"
            )
        return text

    async def _chat_probe(
        self, name: str, upstream: Upstream, url: str, routed: list[_Routed], res: _Result
    ) -> None:
        not_listed = f"{url} does not list its models (GET /models answered {res.http_status})"
        target = next((r for r in routed if r.default), routed[0] if routed else None)
        if target is None:
            res.status = CheckStatus.ok
            res.advice.append(
                f"{not_listed} and no model is routed to it, so nothing more was checked "
                "(the key was not verified)"
            )
            return
        res.probe = "chat"
        started = time.perf_counter()
        try:
            await upstream.client.chat.completions.create(
                model=target.wire,
                messages=[{"role": "user", "content": "ping"}],
                max_tokens=1,
                timeout=self.timeout_s,
            )
        except openai.APIStatusError as exc:
            res.latency_ms = _ms_since(started)
            res.http_status = exc.status_code
            if exc.status_code == 404:
                # It answered, so it is reachable; the model is what it does not know.
                res.status = CheckStatus.ok
                res.offered_by_model[target.model] = False
                sent_as = f" (sent as {target.wire})" if target.wire != target.model else ""
                res.advice.append(
                    f"unknown model: {target.model}{sent_as}; {not_listed}, and a one-token "
                    f"chat completion for it answered 404: check the model name, or that the "
                    f"base URL is right (it usually ends in /v1){_upstream_said(exc)}"
                )
            else:
                self._judge_status(
                    name, exc, f"a one-token chat completion for {target.model}", res
                )
            return
        except openai.APIConnectionError as exc:
            res.latency_ms = _ms_since(started)
            self._judge_connection(exc, url, res)
            return
        res.latency_ms = _ms_since(started)
        res.http_status = 200
        res.status = CheckStatus.ok
        res.offered_by_model[target.model] = True

    def _judge_connection(self, exc: openai.APIConnectionError, url: str, res: _Result) -> None:
        if isinstance(exc, openai.APITimeoutError):
            res.status = CheckStatus.timeout
            res.advice.append(self._timeout_advice(url))
            return
        cause = exc.__cause__
        detail = f" ({type(cause).__name__})" if cause is not None else ""
        res.status = CheckStatus.unreachable
        res.advice.append(
            f"cannot connect to {url}{detail}: the upstream is unreachable from here; check "
            f"the URL, DNS, proxy and firewall from this host (time-out {self.timeout_s:g} s, "
            f"{TIMEOUT_ENV})"
        )

    def _judge_status(self, name: str, exc: openai.APIStatusError, what: str, res: _Result) -> None:
        code = exc.status_code
        said = _upstream_said(exc)
        if code == 401:
            res.status = CheckStatus.auth_failed
            # The upstream's words are left out here: 401 bodies often quote part of the key.
            res.advice.append(f"the upstream rejected the key (401): {self.key_advice(name)}")
        elif code == 403:
            res.status = CheckStatus.forbidden
            env = self.key_env(name)
            whose = f"the key in {env}" if env else "the key"
            res.advice.append(
                f"the key was recognised but refused (403): the plan or project behind {whose} "
                f"lacks access (to the API, the models, or from this region); check it in the "
                f"provider's console{said}"
            )
        elif code == 429:
            res.status = CheckStatus.error
            res.advice.append(
                f"rate limited (429) on {what}: the key is accepted but the upstream is "
                f"throttling it or its quota is used up; check the plan's limits and "
                f"balance{said}"
            )
        elif code >= 500:
            res.status = CheckStatus.error
            res.advice.append(
                f"the upstream failed on {what} ({code}): a problem on its side; try again "
                f"later{said}"
            )
        else:
            res.status = CheckStatus.error
            res.advice.append(f"the upstream refused {what} ({code}){said}")


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)


async def check_upstreams(
    pool: UpstreamPool,
    registry: ModelRegistry,
    settings: Settings,
    *,
    builtin_simulator: bool = False,
) -> UpstreamReport:
    """Check every upstream of `pool` concurrently. `builtin_simulator`: the default upstream
    is the simulator this service started because nothing was configured."""
    checker = _Checker(pool, registry, settings, builtin_simulator=builtin_simulator)
    checks = list(await asyncio.gather(*(checker.check(n, u) for n, u in pool.upstreams.items())))
    advice: list[str] = []
    default_offered: bool | None = None
    try:
        default_upstream = pool.route(settings.default_model).upstream.name
    except NoRouteError as exc:
        default_upstream = None
        advice.append(f"the default model (SWARM_DEFAULT_MODEL) cannot be served: {exc}")
    for check in checks:
        for m in check.models:
            if m.default and check.name == default_upstream:
                default_offered = m.offered
    if default_offered is False:
        advice.append(
            f"the default model {settings.default_model!r} is not offered by its upstream "
            f"{default_upstream!r}: jobs and agents that name no model will fail; set "
            "SWARM_DEFAULT_MODEL to a model it offers"
        )
    healthy = sum(c.status is CheckStatus.ok for c in checks)
    for check in checks:
        if check.status is not CheckStatus.ok:
            log.info("upstream %r: %s (%s)", check.name, check.status, "; ".join(check.advice))
    if not checks:
        advice.append(
            "no upstream is configured: set SWARM_UPSTREAM_BASE_URL (and "
            "SWARM_UPSTREAM_API_KEY), or a provider's key variable"
        )
    if healthy == 0:
        status = OverallStatus.failed
    elif healthy < len(checks) or advice:
        status = OverallStatus.degraded
    else:
        status = OverallStatus.ok
    return UpstreamReport(status=status, upstreams=checks, advice=[checker.mask(a) for a in advice])
