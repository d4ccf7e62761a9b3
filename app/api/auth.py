"""Who is calling: `Authorization: Bearer KEY` → tenant. Keys are looked up by their
SHA-256 in a small cache; with no keys at all the service is open, but only on loopback."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from app.config import AuthMode, Settings
from app.errors import ServiceError
from app.keys import hash_key
from app.store import api_keys
from app.store.models import DEFAULT_TENANT
from app.store.store import Store

# Headers that mean a proxy stands between the caller and us.
_FORWARDING_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip", "via")


class UnauthorizedError(ServiceError):
    status_code = 401

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"})


def is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Authenticator:
    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self._keys: dict[str, str] = {}  # key hash → tenant, active keys only
        self._loaded_at = -1e9
        self._lock = asyncio.Lock()

    async def refresh(self, *, force: bool = False) -> None:
        async with self._lock:
            if not force and time.monotonic() - self._loaded_at < self.settings.auth_cache_s:
                return
            self._keys = await self.store.read(api_keys.active_key_tenants)
            self._loaded_at = time.monotonic()

    async def _lookup(self, digest: str) -> str | None:
        tenant = await self.store.read(lambda c: api_keys.tenant_of_key(c, digest))
        if tenant is not None:
            self._keys[digest] = tenant
        return tenant

    @property
    def has_keys(self) -> bool:
        return bool(self._keys)

    def startup_problem(self) -> str | None:
        """Why the service must not start as configured, if it must not."""
        mode = self.settings.auth
        if mode is AuthMode.auto and not self._keys and not is_loopback(self.settings.host):
            return (
                f"no API keys exist and the service binds {self.settings.host}, which is not "
                "loopback: create a key (python -m app.admin keys create --tenant NAME), or "
                "set SWARM_AUTH=off to serve without authentication on purpose"
            )
        return None

    def describe(self) -> str:
        mode = self.settings.auth
        if mode is AuthMode.off:
            return "authentication OFF (SWARM_AUTH=off): every caller is tenant 'default'"
        if mode is AuthMode.auto and not self._keys:
            return "no API keys yet: serving WITHOUT authentication, on loopback only"
        return "API keys required"

    async def tenant_for(self, request: Request) -> str:
        mode = self.settings.auth
        if mode is AuthMode.off:
            return DEFAULT_TENANT
        await self.refresh()
        header = request.headers.get("authorization")
        if header:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise UnauthorizedError("Authorization must be 'Bearer <API key>'")
            digest = hash_key(token.strip())
            tenant = self._keys.get(digest)
            if tenant is None:
                # Maybe a key created a moment ago: one indexed lookup of this digest (not a
                # reload of every key, which junk keys could otherwise force on each request).
                tenant = await self._lookup(digest)
            if tenant is None:
                raise UnauthorizedError("the API key is not valid (unknown or revoked)")
            return tenant
        if mode is AuthMode.on or self._keys:
            raise UnauthorizedError("an API key is required: send 'Authorization: Bearer <key>'")
        # No keys exist: open, but only to callers on this machine, talking to us directly.
        # A proxy on the same host would make the whole internet look like loopback, so a
        # forwarded request is refused too.
        server = request.scope.get("server")
        client = request.scope.get("client")
        forwarded = any(h in request.headers for h in _FORWARDING_HEADERS)
        if (
            server is None
            or not is_loopback(server[0])
            or (client is not None and not is_loopback(client[0]))
            or forwarded
        ):
            raise UnauthorizedError(
                "this service has no API keys yet and answers only direct requests over "
                "loopback; ask its operator for a key"
            )
        return DEFAULT_TENANT


# Declares the scheme in the OpenAPI document; the header is checked in `tenant_for`.
_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer KEY`.")


async def get_tenant(
    request: Request,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    auth: Authenticator = request.app.state.services.auth
    return await auth.tenant_for(request)


TenantDep = Annotated[str, Depends(get_tenant)]


class ErrorBody(BaseModel):
    detail: Any = Field(description="What went wrong: a message, or a list of problems.")


# Declared on every route that needs a tenant, so clients (and the OpenAPI document) know.
AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "Missing, unknown or revoked API key."},
}
