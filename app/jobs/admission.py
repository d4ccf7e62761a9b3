"""Every check a submit passes before anything is stored, where it needs the settings or
the model registry: the tenant's submit rate, the graph's limits, routes, prices, prompt
sizes, chunk windows and what can be stored; and the digest of a request's meaning."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from app.config import Settings
from app.engine.answer_room import NoRoom, answer_room
from app.engine.chunking import count_tokens
from app.engine.graph import Graph, validate_graph
from app.engine.map_checks import MapPlan, mappable_items
from app.engine.problems import GraphValidationError
from app.engine.spec import JobSpec, ResolvedAgent
from app.engine.templates import (
    MapItem,
    RefKind,
    build_task_prompt,
    format_value,
    lookup_context,
    render_system_prompt,
    scan_refs,
)
from app.errors import UnprocessableError
from app.jobs.errors import TooManySubmits
from app.jobs.tool_checks import check_tools
from app.scheduler.gates import shared_limits
from app.scheduler.limits import TokenBucket
from app.scheduler.shared_limits import SharedTokenBucket
from app.upstream.pool import NoRouteError, UpstreamPool
from app.webhooks.targets import WebhookTargetError, allowed_hosts, check_target

# How deep `context` and `metadata` may nest. Deeper JSON cannot be read back by the
# parser that restores jobs after a restart (its limit is 200), and no prompt needs it.
MAX_JSON_DEPTH = 64
# Problems reported at most per check: enough to fix a batch, never a huge response.
MAX_PROBLEMS = 20
# What the appended <item index="…" count="…"> block adds around an item, at most.
_ITEM_BLOCK_CHARS = 64

Problem = dict[str, Any]


@dataclass(frozen=True)
class Admitted:
    """A job that passed every check: what the store and the scheduler need of it."""

    spec: JobSpec
    graph: Graph
    model: str  # the job's default model
    agents: list[ResolvedAgent]
    spec_json: str  # the spec as stored


class Admission:
    """The submit-time checks; owns the per-tenant submit buckets (in Redis, shared by
    every API process, when SWARM_REDIS_URL is set)."""

    def __init__(self, settings: Settings, upstreams: UpstreamPool) -> None:
        self.settings = settings
        self.upstreams = upstreams
        self._buckets: dict[str, TokenBucket] = {}
        self.shared = shared_limits(settings, "submitters")

    def _bucket(self, tenant: str) -> TokenBucket:
        rate = self.settings.tenant_submits_per_s
        bucket = self._buckets.get(tenant)
        if bucket is None:
            capacity = max(1.0, 2 * rate)
            if self.shared is not None:
                bucket = SharedTokenBucket(
                    self.shared, "submits:" + tenant, rate_per_s=rate, capacity=capacity
                )
            else:
                bucket = TokenBucket(rate_per_s=rate, capacity=capacity)
            self._buckets[tenant] = bucket
        return bucket

    def take_submit(self, tenant: str) -> None:
        """Per-tenant submit rate in this process: a bucket of two seconds' worth,
        refilled continuously."""
        wait = self._bucket(tenant).try_take(1)
        if wait > 0:
            raise TooManySubmits(self.settings.tenant_submits_per_s, wait)

    async def check_submit(self, tenant: str) -> None:
        """Per-tenant submit rate, across every API process when the limits are shared."""
        bucket = self._bucket(tenant)
        if not isinstance(bucket, SharedTokenBucket):
            self.take_submit(tenant)
            return
        wait = await bucket.try_take_shared(1)
        if wait > 0:
            raise TooManySubmits(self.settings.tenant_submits_per_s, wait)

    @contextlib.asynccontextmanager
    async def active_jobs_turn(self, tenant: str) -> AsyncIterator[None]:
        """Held around the insert that checks the tenant's active-job limit: with the
        limits shared, one process at a time counts and inserts for a tenant, so
        parallel submits to several API processes cannot all slip under the limit."""
        if self.shared is None:
            yield
            return
        async with self.shared.lock("active-jobs:" + tenant, hold_s=10, wait_s=10):
            yield

    async def admit(self, spec: JobSpec) -> Admitted:
        """Validate the job against the graph rules and this service's limits, models and
        prices. The work proportional to the body (up to SWARM_MAX_REQUEST_BYTES) runs in
        a worker thread, so a large submit never stalls the event loop."""
        settings = self.settings
        try:
            graph = await asyncio.to_thread(
                functools.partial(
                    validate_graph,
                    spec,
                    max_agents=settings.max_agents_per_job,
                    max_map_items=settings.max_map_items,
                    max_map_items_per_job=settings.max_map_items_per_job,
                )
            )
        except GraphValidationError as exc:
            raise UnprocessableError(exc.detail()) from None
        model = spec.model or settings.default_model
        agents = spec.resolved_agents()
        self._check_routes(agents, model)
        self._check_max_tokens(spec, graph, agents, model)
        if spec.budget_usd is not None:
            self._check_prices(agents, model)
        await asyncio.to_thread(check_prompt_sizes, spec, graph, agents, settings.max_prompt_chars)
        await asyncio.to_thread(self._check_prompt_windows, spec, graph, agents, model)
        self._check_chunk_windows(spec, graph, agents, model)
        if spec.webhook is not None:
            await self._check_webhook(spec.webhook.url)
        await asyncio.to_thread(check_tools, spec, settings)
        spec_json = await asyncio.to_thread(storable_json, spec)
        return Admitted(spec=spec, graph=graph, model=model, agents=agents, spec_json=spec_json)

    async def _check_webhook(self, url: str) -> None:
        try:
            await asyncio.to_thread(
                check_target,
                url,
                allow_private=self.settings.webhook_allow_private,
                allowed=allowed_hosts(self.settings.webhook_allowed_hosts),
            )
        except WebhookTargetError as exc:
            raise UnprocessableError(
                [{"loc": ["body", "webhook", "url"], "type": "webhook_target", "msg": str(exc)}]
            ) from None

    def _check_routes(self, agents: list[ResolvedAgent], default: str) -> None:
        """Every model the job uses must have an upstream, or nothing is stored."""
        problems: list[Problem] = []
        seen: dict[str, str | None] = {}
        for i, agent in enumerate(agents):
            model = agent.model or default
            if model not in seen:
                try:
                    self.upstreams.route(model)
                    seen[model] = None
                except NoRouteError as exc:
                    seen[model] = str(exc)
            if seen[model] is not None:
                loc = ["body", "agents", i, "model"] if agent.model else ["body", "model"]
                problems.append({"loc": loc, "msg": seen[model], "type": "no_upstream"})
                if len(problems) >= MAX_PROBLEMS:
                    break
        if problems:
            raise UnprocessableError(problems)

    def _check_max_tokens(
        self, spec: JobSpec, graph: Graph, agents: list[ResolvedAgent], default: str
    ) -> None:
        """`max_tokens` must leave room for a prompt in the model's window (the registry's
        figure): one that does not could only fail when it runs. A job-wide max_tokens is
        reported once per model, naming the agents that inherit it."""
        registry = self.upstreams.registry
        problems: list[Problem] = []
        inherited: dict[str, list[str]] = {}
        for i, agent in enumerate(agents):
            info = registry.get(agent.model or default)
            window = info.context_window
            if agent.max_tokens is None or window is None or agent.max_tokens < window:
                continue
            if spec.agents[i].max_tokens is None:  # the job's default
                inherited.setdefault(info.name, []).append(agent.id)
                continue
            what = f"agent {agent.id!r}"
            if agent.id in graph.maps:
                what = f"map node {agent.id!r} (each of its items)"
            elif any(d in graph.maps for d in agent.depends_on):
                what = f"agent {agent.id!r} (and its merge steps)"
            problems.append(
                {
                    "loc": ["body", "agents", i, "max_tokens"],
                    "type": "max_tokens_over_window",
                    "msg": f"{what}: max_tokens {agent.max_tokens:,} does not fit the "
                    f"{window:,}-token context window of model {info.name!r} (from the model "
                    "registry), which must also hold the prompt; lower max_tokens below "
                    f"{window:,} or use a model with a larger window",
                }
            )
        for name, ids in inherited.items():
            window = registry.get(name).context_window
            shown = ", ".join(repr(a) for a in ids[:5]) + (
                f" and {len(ids) - 5:,} more" if len(ids) > 5 else ""
            )
            problems.append(
                {
                    "loc": ["body", "max_tokens"],
                    "type": "max_tokens_over_window",
                    "msg": f"the job's max_tokens {spec.max_tokens:,} does not fit the "
                    f"{window:,}-token context window of model {name!r} (from the model "
                    f"registry), which must also hold the prompt; used by agent(s) {shown}; "
                    f"lower max_tokens below {window:,}, or set a smaller one on those agents",
                }
            )
        if problems:
            raise UnprocessableError(problems[:MAX_PROBLEMS])

    def _check_prompt_windows(
        self, spec: JobSpec, graph: Graph, agents: list[ResolvedAgent], default: str
    ) -> None:
        """A prompt known now (an agent with no dependencies, not a map node) that cannot
        fit its model's window, with its max_tokens if set, could only fail when it runs;
        the same check is made at run time for the others (`app.scheduler.answer_fit`)."""
        registry = self.upstreams.registry
        problems: list[Problem] = []
        for i, agent in enumerate(agents):
            if agent.depends_on or agent.id in graph.maps:
                continue
            info = registry.get(agent.model or default)
            if info.context_window is None:
                continue
            system = (
                render_system_prompt(agent.system_prompt, context=spec.context)
                if agent.system_prompt
                else ""
            )
            prompt = build_task_prompt(agent.task, depends_on=(), context=spec.context, outputs={})
            tokens = count_tokens(system) + count_tokens(prompt)
            room = answer_room(
                window=info.context_window,
                prompt_tokens=tokens,
                max_tokens=agent.max_tokens,
                default_max_tokens=self.settings.default_max_tokens,
            )
            if not isinstance(room, NoRoom):
                continue
            asked = f"its prompt (about {tokens:,} tokens)" + (
                f" plus max_tokens {agent.max_tokens:,}" if agent.max_tokens else ""
            )
            problems.append(
                {
                    "loc": ["body", "agents", i, "task"],
                    "type": "prompt_over_window",
                    "msg": f"agent {agent.id!r}: {asked} cannot fit the "
                    f"{info.context_window:,}-token context window of model {info.name!r} "
                    "(from the model registry); shorten the task or the context it uses, "
                    "lower max_tokens, or use a model with a larger window",
                }
            )
            if len(problems) >= MAX_PROBLEMS:
                break
        if problems:
            raise UnprocessableError(problems)

    def _check_prices(self, agents: list[ResolvedAgent], default: str) -> None:
        """A budget can only be enforced in money: every model must have a price."""
        registry = self.upstreams.registry
        unpriced = sorted(
            {
                m
                for m in (a.model or default for a in agents)
                if registry.get(m).input_usd_per_mtok is None
                or registry.get(m).output_usd_per_mtok is None
            }
        )
        if unpriced:
            raise UnprocessableError(
                [
                    {
                        "loc": ["body", "budget_usd"],
                        "type": "budget_without_prices",
                        "msg": "budget_usd needs a price for every model, and these have none: "
                        + ", ".join(unpriced)
                        + " (set their prices in the models file)",
                    }
                ]
            )

    def _check_chunk_windows(
        self, spec: JobSpec, graph: Graph, agents: list[ResolvedAgent], default: str
    ) -> None:
        """A chunk, its task and the room for the answer must fit the map node's model."""
        problems: list[Problem] = []
        for i, agent in enumerate(agents):
            plan = graph.maps.get(agent.id)
            if plan is None or plan.known_items is None or plan.source_agent is not None:
                continue
            if not isinstance(lookup_context(spec.context, plan.context_path), str):
                continue
            info = self.upstreams.registry.get(agent.model or default)
            window = info.context_window
            needed = plan.chunk_tokens + (agent.max_tokens or 0)
            if window is not None and needed > window:
                problems.append(
                    {
                        "loc": ["body", "agents", i, "map", "chunk_tokens"],
                        "type": "map.chunk_too_large",
                        "msg": f"map node {agent.id!r}: chunks of {plan.chunk_tokens:,} tokens"
                        + (f" plus max_tokens {agent.max_tokens:,}" if agent.max_tokens else "")
                        + f" do not fit the {window:,}-token window of {info.name}; lower "
                        "chunk_tokens",
                    }
                )
        if problems:
            raise UnprocessableError(problems)


def request_hash(spec: JobSpec) -> str:
    """A digest of the request's meaning: key order and whitespace do not change it."""
    canonical = json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def json_depth(value: Any) -> int:
    """Nesting depth of a JSON value, without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if isinstance(item, dict):
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, level + 1) for v in item)
    return deepest


def storable_json(spec: JobSpec) -> str:
    """The spec as stored; a job the service could not read back after a restart is a 422
    now rather than a failure then."""
    for field in ("context", "metadata"):
        if json_depth(getattr(spec, field)) > MAX_JSON_DEPTH:
            raise UnprocessableError(
                [
                    {
                        "loc": ["body", field],
                        "type": "too_deep",
                        "msg": f"{field} nests more than {MAX_JSON_DEPTH} levels deep",
                    }
                ]
            )
    try:
        return spec.model_dump_json()
    except ValueError as exc:  # e.g. a lone surrogate, which JSON cannot carry as UTF-8
        raise UnprocessableError(
            [
                {
                    "loc": ["body"],
                    "type": "unencodable",
                    "msg": "the job contains text that cannot be stored as UTF-8 "
                    f"({type(exc).__name__})",
                }
            ]
        ) from None


def check_prompt_sizes(
    spec: JobSpec, graph: Graph, agents: list[ResolvedAgent], limit: int
) -> None:
    """What the templates make of the context is known now: refuse prompts that would
    exceed the limit before any of them runs (outputs of dependencies come on top)."""
    sizes: dict[str, int] = {}

    def rendered_size(text: str | None) -> int:
        if not text:
            return 0
        size = len(text)
        for ref in scan_refs(text)[0]:
            if ref.kind is RefKind.context and ref.key is not None:
                if ref.key not in sizes:
                    sizes[ref.key] = len(format_value(lookup_context(spec.context, ref.path)))
                size += sizes[ref.key] - len(ref.raw)
        return size

    problems: list[Problem] = []
    for i, agent in enumerate(agents):
        size = rendered_size(agent.task) + rendered_size(agent.system_prompt)
        plan = graph.maps.get(agent.id)
        item, item_size = (None, 0) if plan is None else _largest_list_item(spec, plan, agent)
        what = "the context is filled in"
        if item is not None:
            size += item_size
            what = f"the context and its largest item (item {item}) are filled in"
        if size > limit:
            problems.append(
                {
                    "loc": ["body", "agents", i, "task"],
                    "type": "prompt_too_large",
                    "msg": f"agent {agent.id!r}: its prompt would be {size:,} characters once "
                    f"{what}, over the limit of {limit:,}",
                }
            )
            if len(problems) >= MAX_PROBLEMS:
                break
    if problems:
        raise UnprocessableError(problems)


def _largest_list_item(
    spec: JobSpec, plan: MapPlan, agent: ResolvedAgent
) -> tuple[int | None, int]:
    """For a map over a list in the context: the item whose rendering in the task is the
    longest, and that length (the task's {{item…}} references, or the appended block)."""
    if plan.source_agent is not None:
        return None, 0
    items = mappable_items(lookup_context(spec.context, plan.context_path))
    if not items:
        return None, 0
    refs = [r for r in scan_refs(agent.task)[0] if r.kind is RefKind.item]
    best, best_size = None, -1
    for k, value in enumerate(items):
        item = MapItem(index=k, count=len(items), value=value)
        if refs:
            size = sum(len(item.render(r.path)) - len(r.raw) for r in refs)
        else:
            size = len(item.render()) + _ITEM_BLOCK_CHARS
        if size > best_size:
            best, best_size = k, size
    return best, max(best_size, 0)
