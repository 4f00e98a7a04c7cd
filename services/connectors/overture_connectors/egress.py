"""Where a message's own URL may send data: the guard against server-side request forgery.

A journey step can name the URL it calls (``Message.webhook.url``), and a
URL written in a template can be made to point anywhere: at the cloud's
metadata service (169.254.169.254), at a database on the private network,
at the connectors service itself. So a provider calls a message's URL only
when

1. its host is on the provider's ``allowed_hosts`` (deny by default): an
   exact name (``api.example.com``), a wildcard over subdomains
   (``*.example.com``, which does not match ``example.com`` itself), or an
   IP literal; and
2. every address the host resolves to is a public one, unless it lies in
   one of the provider's ``allowed_private_networks`` (``127.0.0.1/32`` for
   a test, ``10.1.0.0/16`` for an internal service): private, loopback,
   link-local, shared, reserved and multicast addresses are refused.

The second check runs where the connection is made (a network backend
under httpx), on the addresses the connection actually uses, so a name that
resolves to a public address when checked and to a private one when
connected (DNS rebinding) is still refused; the connection goes to the very
address that was checked, while TLS still verifies the name. Redirects are
never followed, and environment proxies are ignored, so nothing else can
steer the request. A provider's own ``url`` (configuration, not message
content) is not subject to this guard.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx
import pydantic

__all__ = ["MAX_URL", "EgressPolicy", "EgressRefused", "GuardedBackend", "guarded_transport", "parse_url", "valid_host"]

MAX_URL = 2048
"""The longest URL a message may carry."""

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class EgressRefused(Exception):
    """The URL may not be called: its host is not allowed, or it resolves to a refused address.
    The message names neither the URL nor the address (a URL can hold secrets or personal data)."""


class EgressPolicy(pydantic.BaseModel, frozen=True, extra="forbid"):
    """The hosts a provider may call for messages that carry their own URL."""

    allowed_hosts: tuple[str, ...] = pydantic.Field(default=(), max_length=256)
    """Host names (``api.example.com``), subdomain wildcards (``*.example.com``) or IP literals; none by default."""
    allowed_private_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = pydantic.Field(default=(), max_length=256)
    """Non-public networks a message's URL may reach nonetheless (``127.0.0.1/32``, ``10.1.0.0/16``)."""

    @pydantic.field_validator("allowed_hosts")
    @classmethod
    def _hosts(cls, hosts: tuple[str, ...]) -> tuple[str, ...]:
        checked = []
        for host in hosts:
            name = host.strip().lower().rstrip(".")
            if _ip(name.strip("[]")) is not None:
                checked.append(name.strip("[]"))
            elif valid_host(name.removeprefix("*.")):
                checked.append(name)
            else:
                raise ValueError(f"{host!r} is not a host name, a *.domain wildcard or an IP address")
        return tuple(checked)

    def host_allowed(self, host: str) -> bool:
        """Whether *host* (as a URL names it) is on ``allowed_hosts``."""
        name = host.strip("[]").lower().rstrip(".")
        literal = _ip(name)
        for allowed in self.allowed_hosts:
            if allowed.startswith("*."):
                if literal is None and name.endswith(allowed[1:]) and len(name) > len(allowed) - 1:
                    return True
            elif literal is not None:
                if _ip(allowed) == literal:
                    return True
            elif name == allowed:
                return True
        return False

    def address_allowed(self, address: str) -> bool:
        """Whether a connection to *address* (an IP) is allowed: a public address, or one in ``allowed_private_networks``."""
        ip = _ip(address)
        if ip is None:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if any(ip in network for network in self.allowed_private_networks):
            return True
        return ip.is_global and not ip.is_multicast

    def check_url(self, url: str) -> httpx.URL:
        """*url* parsed, when a message may carry it to this provider; raises :class:`EgressRefused` otherwise."""
        parsed, problem = parse_url(url)
        if parsed is None:
            raise EgressRefused(f"the message's URL is refused: {problem}")
        if not self.host_allowed(parsed.host):
            raise EgressRefused("the message's URL names a host the provider does not allow (allowed_hosts)")
        return parsed


def parse_url(url: str) -> tuple[httpx.URL | None, str]:
    """*url* parsed when it is a URL a message may carry (http or https, a valid host and port, no user or
    password, at most :data:`MAX_URL` characters), else None and what is wrong, without the URL."""
    if len(url) > MAX_URL:
        return None, f"a URL must be at most {MAX_URL} characters"
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        return None, "not a valid URL"
    if parsed.scheme not in ("http", "https") or not valid_host(parsed.host):
        return None, "it must be an http or https URL with a valid host"
    if parsed.port is not None and not 0 < parsed.port < 65536:
        return None, "its port must be 1 to 65535"
    if parsed.userinfo:
        return None, "it must not carry a user or password"
    return parsed, ""


def valid_host(host: str) -> bool:
    """Whether *host* is an IP literal or a DNS name (dot-separated labels of letters, digits and hyphens)."""
    host = host.strip("[]").rstrip(".")
    if _ip(host) is not None:
        return True
    labels = host.split(".")
    return len(host) <= 253 and all(
        label and len(label) <= 63 and not label.startswith("-") and all(c.isalnum() or c == "-" for c in label) for label in labels)


def _ip(text: str) -> _Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, connecting only to addresses the policy allows (see the module docstring)."""

    def __init__(self, policy: EgressPolicy, inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self._policy = policy
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,  # noqa: ASYNC109 - httpcore's signature
                          local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        addresses = await self._resolve(host, port, timeout)
        refused = [a for a in addresses if not self._policy.address_allowed(a)]
        if refused:
            raise EgressRefused("the message's URL resolves to a private or reserved address the provider does not allow")
        error: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(address, port, timeout=timeout, local_address=local_address,
                                                     socket_options=socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as failure:
                error = failure
        assert error is not None
        raise error

    async def connect_unix_socket(self, path: str, timeout: float | None = None,  # noqa: ASYNC109 - httpcore's signature
                                  socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        raise EgressRefused("a message's URL cannot reach a Unix socket")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)

    async def _resolve(self, host: str, port: int, within: float | None) -> list[str]:
        if _ip(host) is not None:
            return [host]
        try:
            infos = await asyncio.wait_for(
                asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM), within)
        except TimeoutError:
            raise httpcore.ConnectTimeout("the name did not resolve in time") from None
        except OSError as error:
            raise httpcore.ConnectError(f"the name did not resolve: {type(error).__name__}") from None
        addresses: list[str] = []
        for info in infos:
            address = str(info[4][0]).split("%")[0]  # an IPv6 scope id is not part of the address
            if address not in addresses:
                addresses.append(address)
        if not addresses:
            raise httpcore.ConnectError("the name resolved to no address")
        return addresses


def guarded_transport(policy: EgressPolicy, *, limits: httpx.Limits) -> httpx.AsyncHTTPTransport:
    """An httpx transport whose connections go only where *policy* allows.

    httpx does not take a network backend, so the transport's connection
    pool is replaced by one built with the same arguments and the guarded
    backend (httpx 0.28's ``AsyncHTTPTransport`` keeps it in ``_pool``;
    ``tests/integration/test_connectors_webhook_urls.py`` fails if that
    changes, since a private address would then be reached).
    """
    transport = httpx.AsyncHTTPTransport(limits=limits, trust_env=False)
    transport._pool = httpcore.AsyncConnectionPool(  # see the docstring
        ssl_context=httpx.create_ssl_context(trust_env=False), max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections, keepalive_expiry=limits.keepalive_expiry,
        network_backend=GuardedBackend(policy),
    )
    return transport
