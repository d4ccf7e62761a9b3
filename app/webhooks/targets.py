"""Which webhook (and tool) URLs a job may name: no private, loopback or link-local target (the
service must not be a way into the network it runs in), unless the operator allows it.
Checked at submit, and again at each delivery on the addresses then connected to (a name
may resolve elsewhere by then: DNS rebinding)."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit


class WebhookTargetError(ValueError):
    """The URL may not be used; the message says why."""


def _refused(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return _refused(address.ipv4_mapped)
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_private or address.is_reserved or address.is_unspecified:
        return "private"
    if address.is_multicast:
        return "multicast"
    return None


Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _parse(url: str) -> SplitResult:
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError on a bad port
    except ValueError as exc:
        raise WebhookTargetError(f"not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookTargetError("must be an http:// or https:// URL with a host")
    if parts.username or parts.password:
        raise WebhookTargetError("must not carry a user name or password")
    return parts


# Whose URL it is, in the refusal: (what may only go to public addresses, the setting).
_WEBHOOKS = ("webhooks go", "SWARM_WEBHOOK_ALLOW_PRIVATE")


def _public_addresses(parts: SplitResult, whose: tuple[str, str] = _WEBHOOKS) -> list[Address]:
    """Every address the URL's host is (or resolves to now), all public; else raises."""
    host = parts.hostname
    assert host is not None
    try:
        addresses: list[Address] = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, parts.port or 443, proto=socket.IPPROTO_TCP)
        except (OSError, UnicodeError):
            raise WebhookTargetError(f"the host {host!r} cannot be resolved") from None
        addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
    for address in addresses:
        kind = _refused(address)
        if kind is not None:
            what, setting = whose
            raise WebhookTargetError(
                f"the host {host!r} is a {kind} address ({address}): {what} to public "
                f"addresses only (an operator may set {setting}=true)"
            )
    return addresses


def allowed_hosts(setting: str | None) -> frozenset[str] | None:
    """The hosts of an allow-list setting ("a.example, 10.0.0.5"); None: no allow-list."""
    if setting is None or not setting.strip():
        return None
    return frozenset(h.strip().lower().strip("[]") for h in setting.split(",") if h.strip())


def _check_allowed(parts: SplitResult, allowed: frozenset[str] | None, setting: str) -> None:
    if allowed is None:
        return
    host = (parts.hostname or "").lower()
    if host not in allowed:
        raise WebhookTargetError(
            f"the host {host!r} is not one this service may call (it allows "
            f"{', '.join(sorted(allowed))}: {setting})"
        )


def check_target(
    url: str,
    *,
    allow_private: bool,
    allowed: frozenset[str] | None = None,
    what: str = _WEBHOOKS[0],
    setting: str = _WEBHOOKS[1],
    allowed_setting: str = "SWARM_WEBHOOK_ALLOWED_HOSTS",
) -> None:
    """Raise WebhookTargetError unless `url` is an http(s) URL whose host is on the
    allow-list (when there is one) and is (or resolves only to) public addresses. Blocking
    (it may resolve a name): run it in a thread."""
    parts = _parse(url)
    _check_allowed(parts, allowed, allowed_setting)
    if not allow_private:
        _public_addresses(parts, (what, setting))


@dataclass(frozen=True, slots=True)
class PinnedTarget:
    """Where one delivery connects: `url` names the checked address itself, so nothing
    resolves the name again between the check and the connection."""

    url: str
    # The Host header (the name in the job's URL), and the name TLS verifies the
    # certificate for (https only).
    host: str | None
    sni_hostname: str | None


def pin_target(
    url: str, *, allow_private: bool, allowed: frozenset[str] | None = None
) -> PinnedTarget:
    """Resolve the URL's host now, refuse it unless it is on the allow-list (when there is
    one) and every address is public, and point the connection at the first. With private
    targets allowed, the URL as it is. Blocking."""
    parts = _parse(url)
    _check_allowed(parts, allowed, "SWARM_WEBHOOK_ALLOWED_HOSTS")
    if allow_private:
        return PinnedTarget(url=url, host=None, sni_hostname=None)
    address = _public_addresses(parts)[0]
    literal = f"[{address}]" if address.version == 6 else str(address)
    netloc = literal if parts.port is None else f"{literal}:{parts.port}"
    pinned = parts._replace(netloc=netloc).geturl()
    host = parts.netloc
    return PinnedTarget(
        url=pinned, host=host, sni_hostname=parts.hostname if parts.scheme == "https" else None
    )
