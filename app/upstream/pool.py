"""Which upstream serves which model: one pooled client per provider, built at start-up.

Routing, in order: a model whose provider is set in the models file goes there; otherwise
the default upstream (`SWARM_UPSTREAM_BASE_URL`) when one is configured; otherwise the
model's built-in provider when that provider's key variable is set. With nothing configured
at all, a development service uses the built-in simulator for everything (and says so).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from app.config import Settings
from app.upstream.client import Upstream, build_upstream
from app.upstream.errors import register_secret
from app.upstream.registry import ModelInfo, ModelRegistry

DEFAULT = "default"


def safe_url(url: str) -> str:
    """The URL without credentials (user info, query string) for logs and responses."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


class NoRouteError(LookupError):
    """No configured upstream serves this model; the message says how to configure one."""


@dataclass(frozen=True)
class Route:
    upstream: Upstream
    model: ModelInfo
    # The model's name as this upstream knows it: a provider-specific name applies only
    # when the call goes to that provider (a gateway in front takes our name).
    wire_model: str


class UpstreamPool:
    def __init__(
        self,
        settings: Settings,
        registry: ModelRegistry,
        *,
        default_base_url: str | None,
        default_api_key: str | None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.upstreams: dict[str, Upstream] = {}
        env = os.environ if env is None else env
        register_secret(default_api_key)
        if default_base_url:
            self.upstreams[DEFAULT] = build_upstream(
                DEFAULT, default_base_url, default_api_key, settings
            )
        self.missing_keys: dict[str, str] = {}
        for name, provider in registry.providers.items():
            key = env.get(provider.api_key_env) if provider.api_key_env else None
            register_secret(key)
            used_by_pin = any(registry.get(m).provider == name for m in registry.pinned)
            if key or (used_by_pin and provider.api_key_env is None):
                self.upstreams[name] = build_upstream(name, provider.base_url, key, settings)
            elif used_by_pin and provider.api_key_env:
                self.missing_keys[name] = provider.api_key_env

    @staticmethod
    def nothing_configured(
        settings: Settings, registry: ModelRegistry, env: Mapping[str, str] | None = None
    ) -> bool:
        env = os.environ if env is None else env
        if settings.upstream_base_url or registry.pinned:
            return False
        return not any(
            p.api_key_env and env.get(p.api_key_env) for p in registry.providers.values()
        )

    def route(self, model: str) -> Route:
        info = self.registry.get(model)
        if model in self.registry.pinned and info.provider is not None:
            upstream = self.upstreams.get(info.provider)
            if upstream is None:
                var = self.missing_keys.get(info.provider, "its key variable")
                raise NoRouteError(
                    f"model {model!r} is served by provider {info.provider!r}, whose API key "
                    f"is not set: set {var}"
                )
            return Route(upstream, info, info.wire_name)
        if DEFAULT in self.upstreams:
            wire = info.wire_name if info.provider is None else info.name
            return Route(self.upstreams[DEFAULT], info, wire)
        if info.provider is not None and info.provider in self.upstreams:
            return Route(self.upstreams[info.provider], info, info.wire_name)
        hint = ""
        if info.provider is not None:
            key_var = self.registry.providers[info.provider].api_key_env
            hint = f", or {key_var} for its provider {info.provider!r}"
        raise NoRouteError(
            f"no upstream serves model {model!r}: set SWARM_UPSTREAM_BASE_URL{hint}, or give "
            "the model a provider in the models file (SWARM_MODELS_FILE)"
        )

    def describe(self) -> str:
        return (
            ", ".join(f"{n} at {safe_url(u.base_url)}" for n, u in self.upstreams.items()) or "none"
        )

    async def aclose(self) -> None:
        for upstream in self.upstreams.values():
            await upstream.http.aclose()
