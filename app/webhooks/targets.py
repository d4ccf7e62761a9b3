"""Which webhook (and tool) URLs a job may name: no private, loopback or link-local target
(the service must not be a way into the network it runs in), unless the operator allows it."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit


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


def check_target(
    url: str,
    *,
    allow_private: bool,
    what: str = "webhooks go",
    setting: str = "SWARM_WEBHOOK_ALLOW_PRIVATE",
) -> None:
    """Raise WebhookTargetError unless `url` is an http(s) URL whose host is (or resolves
    only to) public addresses. Blocking (it may resolve a name): run it in a thread."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise WebhookTargetError(f"not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookTargetError("must be an http:// or https:// URL with a host")
    if parts.username or parts.password:
        raise WebhookTargetError("must not carry a user name or password")
    if allow_private:
        return
    host = parts.hostname
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, port or 443, proto=socket.IPPROTO_TCP)
        except (OSError, UnicodeError):
            raise WebhookTargetError(f"the host {host!r} cannot be resolved") from None
        addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
    for address in addresses:
        kind = _refused(address)
        if kind is not None:
            raise WebhookTargetError(
                f"the host {host!r} is a {kind} address ({address}): {what} to public "
                f"addresses only (an operator may set {setting}=true)"
            )
