"""Simulator settings: one pydantic model, shared by the CLI flags and the ``/_sim/config`` API.

Every field maps 1:1 to a kebab-case CLI flag (``latency_base_ms`` -> ``--latency-base-ms``).
"""

from __future__ import annotations

from enum import StrEnum
from functools import lru_cache
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from app.upstream.registry import ModelRegistry, RegistryFileError

# Fields that only make sense at start-up; ``POST /_sim/config`` rejects them.
STARTUP_ONLY_FIELDS = frozenset({"host", "port", "exit_with_parent", "models_file"})
# The window of a model the registry does not describe (the smallest of the built-in ones).
FALLBACK_CONTEXT_WINDOW = 131_072


@lru_cache(maxsize=8)
def registry_models(models_file: str | None) -> tuple[tuple[str, ...], dict[str, int]]:
    """The model names the service's registry knows (as sent upstream) and their windows."""
    registry = ModelRegistry.load(models_file)
    # The names the service sends a default upstream (OpenAI-compatible, like this one):
    # a model with a provider goes by our name, one without by its upstream name.
    sent = (
        info.wire_name if info.provider is None else info.name
        for info in (registry.get(n) for n in registry.names())
    )
    return tuple(dict.fromkeys(sent)), registry.context_windows()


class Profile(StrEnum):
    """Which server the simulator behaves like."""

    # A hosted API: 429 past its caps, context errors coded context_length_exceeded, an
    # answer of its usual length when no max_tokens is sent.
    openai = "openai"
    # llama.cpp's llama-server: N slots and a FIFO queue (never a 429), a prompt over the
    # window refused as exceed_context_size_error (with n_prompt_tokens and n_ctx), and
    # without max_tokens an answer that runs until the window is full (finish_reason length).
    llamacpp = "llamacpp"
    # vLLM: N sequences at once and a FIFO queue (never a 429), prompt + max_tokens over the
    # window refused as a plain 400 (BadRequestError, code 400), and without max_tokens an
    # answer that runs until the window is full.
    vllm = "vllm"


# Slots of the llamacpp and vllm profiles when --slots is not given (llama-server -np 4).
DEFAULT_SLOTS = 4


def _split_pair(value: Any) -> Any:
    """Accept ``"A,B"`` (CLI form) as well as a two-item list/tuple (JSON form)."""
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",")]
        if len(parts) != 2 or not all(parts):
            raise ValueError('expected "A,B"')
        return tuple(parts)
    return value


class SimulatorConfig(BaseModel):
    """All simulator options. Immutable: a run-time change builds a new validated instance."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field("127.0.0.1", description="Interface to bind.")
    port: int = Field(9100, ge=0, le=65535, description="TCP port; 0 picks a free one.")
    seed: int = Field(0, description="Seed of the RNG behind jitter and fault draws.")

    latency_base_ms: float = Field(20.0, ge=0, description="Fixed latency per request.")
    latency_per_token_ms: float = Field(0.0, ge=0, description="Extra latency per output token.")
    latency_jitter_ms: float = Field(0.0, ge=0, description="Uniform +/- jitter on the latency.")
    latency_uniform_ms: tuple[float, float] | None = Field(
        None, description='"A,B": latency uniform in [A, B] ms; overrides the other latency knobs.'
    )
    output_tokens: tuple[int, int] = Field(
        (20, 120), description='"A,B": output length range, picked from the prompt hash.'
    )

    api_key: SecretStr | None = Field(
        None, description="Required bearer token (also read from $SIMULATOR_API_KEY)."
    )
    models: tuple[str, ...] | None = Field(
        None, description="Comma list of accepted models; unset accepts any model."
    )
    context_window: int | None = Field(
        None,
        ge=1,
        description="Prompt + max_tokens limit for every model; unset: each model's window "
        f"from the model registry ({FALLBACK_CONTEXT_WINDOW} for a model it does not know).",
    )
    models_file: str | None = Field(
        None,
        description="The service's models file (also read from $SWARM_MODELS_FILE): its models "
        "are listed and its windows applied; unset: the built-in registry.",
    )

    profile: Profile = Field(
        Profile.openai,
        description="Server to behave like: openai (429s), llamacpp or vllm (slots and a "
        "queue, their error shapes, no default max_tokens).",
    )
    slots: int | None = Field(
        None,
        ge=1,
        description=f"Requests generated at once; more wait in a FIFO queue (llamacpp and vllm "
        f"profiles; default {DEFAULT_SLOTS}).",
    )
    model_windows: dict[str, int] | None = Field(
        None,
        description='"NAME=N,NAME=N": the prompt + answer limit of these models (over '
        "context_window and the registry).",
    )

    concurrency_cap: int | None = Field(None, ge=1, description="Max in-flight chat requests.")
    rpm_cap: int | None = Field(None, ge=1, description="Max chat requests per rolling minute.")
    retry_after_ms: int = Field(200, ge=0, description="Retry delay announced on 429.")
    no_ratelimit_headers: bool = Field(
        False,
        description="Announce the rpm cap with no x-ratelimit-* headers (an upstream that "
        "only says 429).",
    )

    error_rate: float = Field(0.0, ge=0, le=1, description="Probability of a 500/502/503.")
    hang_rate: float = Field(0.0, ge=0, le=1, description="Probability of never answering.")
    drop_rate: float = Field(0.0, ge=0, le=1, description="Probability of closing the socket.")
    malformed_rate: float = Field(0.0, ge=0, le=1, description="Probability of a non-JSON 200.")
    slow_rate: float = Field(0.0, ge=0, le=1, description="Probability of adding slow_ms.")
    slow_ms: float = Field(2000.0, ge=0, description="Extra latency of a slow request.")

    request_log_size: int = Field(10000, ge=0, description="Entries kept by /_sim/requests.")
    exit_with_parent: bool = Field(False, description="Exit when the parent process dies.")

    @field_validator("latency_uniform_ms", "output_tokens", mode="before")
    @classmethod
    def _parse_pair(cls, value: Any) -> Any:
        if value == "":
            return None
        return _split_pair(value)

    @field_validator("model_windows", mode="before")
    @classmethod
    def _parse_windows(cls, value: Any) -> Any:
        if isinstance(value, str):
            windows: dict[str, Any] = {}
            for part in (p.strip() for p in value.split(",") if p.strip()):
                name, sep, size = part.rpartition("=")
                if not sep or not name:
                    raise ValueError('expected "NAME=N,NAME=N"')
                windows[name.strip()] = size.strip()
            return windows or None
        return value

    @field_validator("model_windows")
    @classmethod
    def _positive_windows(cls, value: dict[str, int] | None) -> dict[str, int] | None:
        if value is not None and any(n < 1 for n in value.values()):
            raise ValueError("every window must be at least 1 token")
        return value

    @property
    def queued(self) -> bool:
        """Whether requests past the slots wait in a queue (a local server) rather than
        being refused."""
        return self.profile is not Profile.openai

    @property
    def slot_count(self) -> int:
        return self.slots or DEFAULT_SLOTS

    @field_validator("models", mode="before")
    @classmethod
    def _parse_models(cls, value: Any) -> Any:
        if isinstance(value, str):
            names = tuple(n.strip() for n in value.split(",") if n.strip())
            return names or None
        return value

    @field_validator("models_file")
    @classmethod
    def _readable_models_file(cls, value: str | None) -> str | None:
        if value:
            try:
                ModelRegistry.load(value)
            except RegistryFileError as exc:
                raise ValueError(str(exc)) from None
        return value or None

    def window_for(self, model: str) -> int:
        """The prompt + max_tokens limit of ``model`` on this simulator."""
        if self.model_windows is not None and model in self.model_windows:
            return self.model_windows[model]
        if self.context_window is not None:
            return self.context_window
        return registry_models(self.models_file)[1].get(model, FALLBACK_CONTEXT_WINDOW)

    def listed_models(self) -> tuple[str, ...]:
        """What ``GET /v1/models`` lists: the accepted models, else the registry's."""
        return self.models or registry_models(self.models_file)[0]

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_key_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @model_validator(mode="after")
    def _check_ranges(self) -> SimulatorConfig:
        if self.latency_uniform_ms is not None:
            low, high = self.latency_uniform_ms
            if low < 0 or high < low:
                raise ValueError("latency_uniform_ms must be 0 <= A <= B")
        low_t, high_t = self.output_tokens
        if low_t < 1 or high_t < low_t:
            raise ValueError("output_tokens must be 1 <= A <= B")
        if self.models is not None and not self.models:
            raise ValueError("models must not be empty")
        return self

    def public_dict(self) -> dict[str, Any]:
        """JSON-ready view with the API key masked (it must never be echoed)."""
        data = self.model_dump(mode="json")
        data["api_key"] = "***" if self.api_key is not None else None
        return data

    def updated(self, patch: dict[str, Any]) -> SimulatorConfig:
        """Validated copy with ``patch`` applied; raises ``ValueError`` on a bad patch."""
        frozen = STARTUP_ONLY_FIELDS.intersection(patch)
        if frozen:
            raise ValueError(f"cannot change at run time: {', '.join(sorted(frozen))}")
        merged = self.model_dump()
        merged.update(patch)
        return SimulatorConfig.model_validate(merged)
