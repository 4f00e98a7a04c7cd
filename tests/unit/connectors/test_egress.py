"""Unit tests of the egress policy: which hosts and addresses a message's own URL may reach."""

from __future__ import annotations

import httpcore
import pydantic
import pytest

from overture_connectors.egress import EgressPolicy, EgressRefused, GuardedBackend

POLICY = EgressPolicy(allowed_hosts=("api.example.com", "*.hooks.example.org", "203.0.113.9", "[2001:db8::1]"))


@pytest.mark.parametrize(("host", "allowed"), [
    ("api.example.com", True), ("API.Example.com.", True), ("x.api.example.com", False), ("example.com", False),
    ("a.hooks.example.org", True), ("a.b.hooks.example.org", True), ("hooks.example.org", False), ("evilhooks.example.org", False),
    ("203.0.113.9", True), ("203.0.113.10", False), ("2001:db8::1", True), ("[2001:db8:0::1]", True),
])
def test_hosts_match_exactly_by_wildcard_over_subdomains_or_as_ip_literals(host: str, allowed: bool) -> None:
    """A name matches an exact entry case-insensitively, a *.domain wildcard matches subdomains only, and IP literals compare as addresses."""
    assert POLICY.host_allowed(host) is allowed


@pytest.mark.parametrize(("address", "allowed"), [
    ("93.184.215.14", True), ("2606:4700::1111", True),
    ("127.0.0.1", False), ("10.1.2.3", False), ("172.16.0.1", False), ("192.168.1.1", False), ("169.254.169.254", False),
    ("100.64.0.1", False), ("0.0.0.0", False), ("224.0.0.1", False), ("::1", False), ("fe80::1", False), ("fd00::1", False),
    ("::ffff:127.0.0.1", False), ("::ffff:10.0.0.1", False), ("not-an-ip", False),
])
def test_only_public_addresses_are_reached_by_default(address: str, allowed: bool) -> None:
    """Private, loopback, link-local (the cloud metadata address), shared, unspecified and multicast addresses are refused,
    also when written as IPv4-mapped IPv6."""
    assert EgressPolicy().address_allowed(address) is allowed


def test_private_networks_listed_explicitly_are_reached() -> None:
    """An address inside allowed_private_networks is allowed; its neighbours outside it are not."""
    policy = EgressPolicy(allowed_private_networks=("127.0.0.1/32", "10.1.0.0/16"))  # type: ignore[arg-type]
    assert policy.address_allowed("127.0.0.1") and policy.address_allowed("10.1.200.3") and policy.address_allowed("::ffff:127.0.0.1")
    assert not policy.address_allowed("127.0.0.2") and not policy.address_allowed("10.2.0.1")


@pytest.mark.parametrize("url", [
    "https://other.example.com/x", "ftp://api.example.com/x", "https://user:pw@api.example.com/x", "https://api.example.com:99999/",
    "api.example.com/x", "https:///x",
])
def test_urls_off_the_policy_are_refused_without_naming_them(url: str) -> None:
    """A host off the list, a non-HTTP scheme, credentials in the URL, or no host is refused, and the error names neither URL nor host."""
    with pytest.raises(EgressRefused) as refused:
        POLICY.check_url(url)
    assert "example.com" not in str(refused.value)


def test_an_allowed_url_is_returned_parsed() -> None:
    """An https URL on an allowed host passes, query and all."""
    assert str(POLICY.check_url("https://api.example.com/v1/orders?x=1")) == "https://api.example.com/v1/orders?x=1"


@pytest.mark.parametrize("hosts", [["exa mple.com"], ["a/b"], ["*.*.example.com"], ["-bad.example.com"], [""]])
def test_malformed_allowed_hosts_are_refused_at_start_up(hosts: list[str]) -> None:
    """An allowed_hosts entry that is not a name, a *.domain wildcard or an IP literal fails validation."""
    with pytest.raises(pydantic.ValidationError):
        EgressPolicy.model_validate({"allowed_hosts": hosts})


class _Recording(httpcore.AsyncNetworkBackend):
    def __init__(self) -> None:
        self.connected: list[str] = []

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                          socket_options: object = None) -> httpcore.AsyncNetworkStream:
        self.connected.append(host)
        raise httpcore.ConnectError("recorded")


async def test_the_guarded_backend_connects_to_the_checked_address_and_refuses_private_ones() -> None:
    """A name resolving to loopback is refused before any connection; an allowed private network lets the connection go to
    the resolved address itself (not the name, which could resolve elsewhere a moment later)."""
    inner = _Recording()
    with pytest.raises(EgressRefused):
        await GuardedBackend(EgressPolicy(allowed_hosts=("localhost",)), inner).connect_tcp("localhost", 80)
    assert inner.connected == []
    policy = EgressPolicy(allowed_hosts=("localhost",), allowed_private_networks=("127.0.0.0/8", "::1/128"))  # type: ignore[arg-type]
    with pytest.raises(httpcore.ConnectError):
        await GuardedBackend(policy, inner).connect_tcp("localhost", 80)
    assert inner.connected and set(inner.connected) <= {"127.0.0.1", "::1"}
