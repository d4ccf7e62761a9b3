"""The model registry: which provider serves a model, what it costs, how much it can take.

Built-in defaults cover the models the product is used with most; a YAML or JSON file
(`SWARM_MODELS_FILE`, see `models.example.yaml`) adds providers and models or overrides
any field. An unknown model has no price, and its cost is reported as null, never 0.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class ProviderInfo(BaseModel):
    """An OpenAI-compatible endpoint and where its key comes from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str = Field(description="OpenAI-compatible base URL, ending in /v1 or similar.")
    api_key_env: str | None = Field(
        None,
        description="Environment variable holding the key (the key itself is never "
        "written in the file).",
    )


StructuredOutputMode = Literal["json_schema", "json_object"]


class ModelInfo(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    provider: str | None = Field(
        None, description="Provider name; unset means the default upstream."
    )
    upstream_name: str | None = Field(
        None, description="The model name sent upstream, when it differs from ours."
    )
    input_usd_per_mtok: float | None = Field(None, ge=0)
    output_usd_per_mtok: float | None = Field(None, ge=0)
    cached_input_usd_per_mtok: float | None = Field(
        None,
        ge=0,
        description="The price of input tokens served from the provider's prompt cache (a "
        "cache hit); unset: they are priced as other input tokens.",
    )
    context_window: int | None = Field(None, gt=0)
    # Ceiling for the adaptive concurrency limit of this model.
    max_concurrency: int | None = Field(None, gt=0)
    rpm: int | None = Field(None, gt=0, description="Declared requests per minute.")
    tpm: int | None = Field(None, gt=0, description="Declared tokens per minute.")
    # Extra fields merged into every request body for this model (e.g. a thinking switch).
    extra_body: dict[str, Any] = Field(default_factory=dict)
    structured_output: StructuredOutputMode = Field(
        "json_schema",
        description="How an agent's JSON Schema (response_format json_schema) is sent: "
        "'json_schema' (OpenAI's response_format, where the upstream enforces it), or "
        "'json_object' (JSON mode, with the schema in the system message) where strict "
        "schemas are not supported. Answers are validated against the schema either way.",
    )

    @property
    def wire_name(self) -> str:
        return self.upstream_name or self.name

    def cost(
        self,
        prompt_tokens: int | None,
        completion_tokens: int | None,
        cached_tokens: int | None = None,
    ) -> float | None:
        """What the provider bills: `cached_tokens` of the prompt at the cache-hit price
        (when the model has one), the rest of it at the input price, and the completion
        (reasoning included) at the output price."""
        if (
            self.input_usd_per_mtok is None
            or self.output_usd_per_mtok is None
            or prompt_tokens is None
            or completion_tokens is None
        ):
            return None
        cached = min(cached_tokens or 0, prompt_tokens)
        if self.cached_input_usd_per_mtok is None:
            cached = 0
        return (
            (prompt_tokens - cached) * self.input_usd_per_mtok
            + cached * (self.cached_input_usd_per_mtok or 0.0)
            + completion_tokens * self.output_usd_per_mtok
        ) / 1_000_000


# List prices in USD per million tokens (input at the cache-miss rate), as published on each
# vendor's pricing page when this table was written; the output prices agree with the seed
# article's comparison. Prices change: override them in the models file before budgeting.
BUILTIN_PROVIDERS: dict[str, ProviderInfo] = {
    # platform.moonshot.ai, "Kimi API" (OpenAI-compatible).
    "moonshot": ProviderInfo(base_url="https://api.moonshot.ai/v1", api_key_env="MOONSHOT_API_KEY"),
    # api-docs.deepseek.com, "Your First API Call".
    "deepseek": ProviderInfo(
        base_url="https://api.deepseek.com/v1", api_key_env="DEEPSEEK_API_KEY"
    ),
    "openai": ProviderInfo(base_url="https://api.openai.com/v1", api_key_env="OPENAI_API_KEY"),
    # Anthropic's OpenAI SDK compatibility endpoint.
    "anthropic": ProviderInfo(
        base_url="https://api.anthropic.com/v1/", api_key_env="ANTHROPIC_API_KEY"
    ),
    # Gemini API's OpenAI compatibility endpoint.
    "google": ProviderInfo(
        base_url="https://generativelanguage.googleapis.com/v1beta/openai/",
        api_key_env="GEMINI_API_KEY",
    ),
}

BUILTIN_MODELS: dict[str, ModelInfo] = {
    m.name: m
    for m in (
        # Moonshot pricing page: $0.60 in ($0.10 on a cache hit), $3.00 out; 256K context.
        ModelInfo(
            name="kimi-k2.5",
            provider="moonshot",
            input_usd_per_mtok=0.60,
            cached_input_usd_per_mtok=0.10,
            output_usd_per_mtok=3.00,
            context_window=262_144,
            # Moonshot documents JSON mode (json_object), not strict schemas.
            structured_output="json_object",
        ),
        # DeepSeek "Models & Pricing" for V3.2: $0.28 in (cache miss), $0.028 (cache hit),
        # $0.42 out; 128K.
        ModelInfo(
            name="deepseek-v3.2",
            provider="deepseek",
            upstream_name="deepseek-chat",
            input_usd_per_mtok=0.28,
            cached_input_usd_per_mtok=0.028,
            output_usd_per_mtok=0.42,
            context_window=131_072,
            # DeepSeek's JSON Output is json_object only.
            structured_output="json_object",
        ),
        # OpenAI API pricing: $2.00 in ($0.50 cached), $8.00 out; 1M context.
        ModelInfo(
            name="gpt-4.1",
            provider="openai",
            input_usd_per_mtok=2.00,
            cached_input_usd_per_mtok=0.50,
            output_usd_per_mtok=8.00,
            context_window=1_047_576,
        ),
        # Anthropic pricing (prompts ≤ 200K tokens): $3 in, $15 out.
        ModelInfo(
            name="claude-sonnet-4.5",
            provider="anthropic",
            upstream_name="claude-sonnet-4-5",
            input_usd_per_mtok=3.00,
            output_usd_per_mtok=15.00,
            context_window=200_000,
            # The OpenAI compatibility layer does not enforce response_format schemas.
            structured_output="json_object",
        ),
        # Gemini API pricing (text): $0.30 in, $2.50 out; 1M context.
        ModelInfo(
            name="gemini-2.5-flash",
            provider="google",
            input_usd_per_mtok=0.30,
            output_usd_per_mtok=2.50,
            context_window=1_048_576,
        ),
    )
}


class RegistryFileError(ValueError):
    """The models file cannot be read or does not describe valid providers and models."""


class _StrictLoader(yaml.SafeLoader):
    """YAML that refuses a key given twice (plain YAML keeps the last one silently)."""


def _mapping_without_duplicates(loader: _StrictLoader, node: yaml.MappingNode) -> Any:
    keys = [loader.construct_object(k, deep=True) for k, _ in node.value]
    seen = set()
    for key in keys:
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} appears twice", node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates
)


class ModelRegistry:
    def __init__(
        self,
        models: Mapping[str, ModelInfo] | None = None,
        providers: Mapping[str, ProviderInfo] | None = None,
        *,
        from_file: frozenset[str] = frozenset(),
    ) -> None:
        self.models = dict(BUILTIN_MODELS if models is None else models)
        self.providers = dict(BUILTIN_PROVIDERS if providers is None else providers)
        # Models whose provider was chosen explicitly in the file: they never fall back to
        # the default upstream.
        self.pinned = from_file

    def get(self, name: str) -> ModelInfo:
        return self.models.get(name) or ModelInfo(name=name)

    def names(self) -> list[str]:
        return sorted(self.models)

    def context_windows(self) -> dict[str, int]:
        """Each model's context window where known, by our name and by the name sent
        upstream (an OpenAI-compatible server sees the latter)."""
        windows: dict[str, int] = {}
        for info in self.models.values():
            if info.context_window is not None:
                windows.setdefault(info.wire_name, info.context_window)
                windows[info.name] = info.context_window
        return windows

    @classmethod
    def load(cls, path: str | Path | None) -> ModelRegistry:
        """Built-in defaults, overlaid with the file at `path` (YAML or JSON) if given."""
        if path is None:
            return cls()
        try:
            raw = Path(path).read_text()
            data = (
                json.loads(raw)
                if str(path).endswith(".json")
                else yaml.load(raw, Loader=_StrictLoader)  # a SafeLoader subclass
            )
        except (OSError, ValueError, yaml.YAMLError) as exc:
            raise RegistryFileError(f"cannot read models file {path}: {exc}") from None
        if data is None:
            data = {}
        if not isinstance(data, dict) or not set(data) <= {"providers", "models"}:
            raise RegistryFileError(
                f"models file {path}: expected a mapping with 'providers' and/or 'models'"
            )
        providers = dict(BUILTIN_PROVIDERS)
        models = dict(BUILTIN_MODELS)
        pinned: set[str] = set()
        try:
            for name, spec in (data.get("providers") or {}).items():
                providers[str(name)] = ProviderInfo.model_validate(spec)
            for name, spec in (data.get("models") or {}).items():
                spec = dict(spec or {})
                base = models.get(str(name))
                merged = {**(base.model_dump() if base else {}), **spec, "name": str(name)}
                models[str(name)] = ModelInfo.model_validate(merged)
                if "provider" in spec:
                    pinned.add(str(name))
        except (ValidationError, AttributeError, TypeError) as exc:
            raise RegistryFileError(f"models file {path}: {exc}") from None
        for name in pinned:
            provider = models[name].provider
            if provider is not None and provider not in providers:
                raise RegistryFileError(
                    f"models file {path}: model {name!r} names unknown provider {provider!r}"
                )
        return cls(models, providers, from_file=frozenset(pinned))
