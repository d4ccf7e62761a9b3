"""A tool served by the caller: each call is a POST of {job_id, agent_id, call_id,
arguments}, signed with the Standard Webhooks headers exactly as the webhooks are
(app/webhooks/delivery.py), with call_id as the webhook-id (the idempotency key)."""

from __future__ import annotations

import json
from typing import Any

import httpx2
from sqlalchemy import Connection

from app.config import Settings
from app.engine.tool_spec import HttpTool
from app.store.models import DEFAULT_TENANT, utcnow
from app.store.secret_box import SecretKeyError, secret_box
from app.store.webhooks import tenant_secret
from app.tools.base import ToolCallContext, ToolError, function_definition
from app.webhooks.delivery import signed_headers

# How much of a tool server's error answer the model is shown.
_ERROR_CHARS = 500


class CallerTool:
    def __init__(self, spec: HttpTool, client: httpx2.AsyncClient, secret: str | None) -> None:
        self.spec = spec
        self.name = spec.name
        self._client = client
        self._secret = secret

    def definition(self) -> dict[str, Any]:
        return function_definition(self.spec.name, self.spec.description, self.spec.parameters)

    async def call(self, arguments: dict[str, Any], ctx: ToolCallContext) -> str:
        if self._secret is None:
            raise ToolError(
                "the service has no signing secret for this tenant, so it does not call "
                "caller-served tools (an operator creates one with `python -m app.admin "
                "webhooks secret`)"
            )
        body = json.dumps(
            {
                "job_id": ctx.job_id,
                "agent_id": ctx.agent_id,
                "call_id": ctx.call_id,
                "arguments": arguments,
            },
            ensure_ascii=False,
        )
        headers = signed_headers(self._secret, ctx.call_id, body, utcnow())
        headers["idempotency-key"] = ctx.call_id
        response = await self._client.post(self.spec.url, content=body, headers=headers)
        if response.is_redirect:
            raise ToolError(f"the tool answered a redirect ({response.status_code}), not followed")
        if not response.is_success:
            raise ToolError(
                f"the tool answered HTTP {response.status_code}: {response.text[:_ERROR_CHARS]}"
            )
        try:
            answer = response.json()
        except ValueError:
            raise ToolError("the tool's answer is not JSON") from None
        return answer if isinstance(answer, str) else json.dumps(answer, ensure_ascii=False)


def signing_secret(conn: Connection, tenant: str, settings: Settings) -> str | None:
    """The tenant's webhook signing secret (tenant 'default' may use SWARM_WEBHOOK_SECRET),
    which signs its tool calls as it signs its webhooks; None when it has none, or when
    this process cannot decrypt the stored one (the calls then get an error result)."""
    try:
        secret = tenant_secret(conn, tenant, lambda: secret_box(settings))
    except SecretKeyError:
        return None
    if secret is None and tenant == DEFAULT_TENANT and settings.webhook_secret is not None:
        secret = settings.webhook_secret.get_secret_value()
    return secret
