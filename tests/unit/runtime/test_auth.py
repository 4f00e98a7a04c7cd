"""Unit tests of :mod:`overture_runtime.auth`: bearer tokens, tenants and roles."""

from __future__ import annotations

import hashlib

import grpc
import pytest

from overture_runtime.auth import TENANT_HEADER, Principal, TokenTable, bearer_token
from overture_runtime.config import TokenGrant
from overture_runtime.errors import InvalidArgument, OvertureError, PermissionDenied, Unauthenticated

ADMIN = "admin-secret"
READER = "reader-secret"
HASHED = "hashed-secret"
SERVICE = "service-secret"


@pytest.fixture
def table() -> TokenTable:
    """A table with a plain admin token, a plain reader, a hashed token and a service token."""
    return TokenTable(
        [
            TokenGrant(token=ADMIN, tenant="acme", roles=("*",), principal="alice"),  # type: ignore[arg-type]
            TokenGrant(token=READER, tenant="acme", roles=("rules.read",)),  # type: ignore[arg-type]
            TokenGrant(token_sha256=hashlib.sha256(HASHED.encode()).hexdigest().upper(), tenant="globex", roles=("runs.read",), principal="bob"),
            TokenGrant(token=SERVICE, tenant="*", roles=("*",), principal="svc:orchestrator"),  # type: ignore[arg-type]
        ],
        extra_tenants=["initech"],
    )


def _bearer(token: str, **extra: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}", **extra}


def _raised(table: TokenTable, metadata: dict[str, str]) -> OvertureError:
    with pytest.raises(OvertureError) as caught:
        table.authenticate(metadata)
    return caught.value


def test_plain_token_resolves_to_its_grant(table: TokenTable) -> None:
    """A configured plain token authenticates as its principal, tenant and roles."""
    principal = table.authenticate(_bearer(ADMIN))
    assert principal == Principal(name="alice", tenant="acme", roles=frozenset({"*"}))


def test_sha256_grant_matches_the_token_whose_digest_it_holds(table: TokenTable) -> None:
    """A token_sha256 grant (any hex case) authenticates the token with that digest."""
    principal = table.authenticate(_bearer(HASHED))
    assert (principal.name, principal.tenant, principal.roles) == ("bob", "globex", frozenset({"runs.read"}))


def test_principal_without_a_name_is_named_by_a_digest_prefix(table: TokenTable) -> None:
    """A grant without a principal name is identified by a digest prefix, never by the token."""
    principal = table.authenticate(_bearer(READER))
    assert principal.name == "token:" + hashlib.sha256(READER.encode()).hexdigest()[:8]
    assert READER not in principal.name


def test_tenants_are_those_of_grants_plus_extras(table: TokenTable) -> None:
    """Known tenants are the grants' tenants except '*', plus the extra tenants."""
    assert table.tenants == frozenset({"acme", "globex", "initech"})


def test_grant_without_any_token_is_refused() -> None:
    """A grant with neither token nor token_sha256 is a configuration error."""
    with pytest.raises(ValueError, match="neither token nor token_sha256"):
        TokenTable([TokenGrant(tenant="acme")])


def test_missing_header_is_unauthenticated_missing_token(table: TokenTable) -> None:
    """A call without an authorization header is Unauthenticated with reason MISSING_TOKEN."""
    error = _raised(table, {})
    assert isinstance(error, Unauthenticated)
    assert error.reason == "MISSING_TOKEN"
    assert "authorization: Bearer" in error.message


def test_unknown_token_is_unauthenticated_unknown_token(table: TokenTable) -> None:
    """A well-formed but unconfigured token is Unauthenticated with reason UNKNOWN_TOKEN."""
    error = _raised(table, _bearer("not-a-configured-token"))
    assert isinstance(error, Unauthenticated)
    assert error.reason == "UNKNOWN_TOKEN"
    assert "not-a-configured-token" not in error.message


@pytest.mark.parametrize("value", [f"Basic {ADMIN}", ADMIN, "Bearer", "Bearer    ", f"Token {ADMIN}"])
def test_wrong_scheme_or_empty_token_is_missing_token(table: TokenTable, value: str) -> None:
    """Anything but 'Bearer <token>' counts as no credentials at all."""
    error = _raised(table, {"authorization": value})
    assert isinstance(error, Unauthenticated)
    assert error.reason == "MISSING_TOKEN"


def test_bearer_scheme_is_case_insensitive() -> None:
    """The Bearer scheme matches in any case and the token is trimmed."""
    assert bearer_token({"authorization": "bearer  abc "}) == "abc"
    assert bearer_token({"authorization": "BEARER abc"}) == "abc"
    assert bearer_token({}) is None


def test_service_principal_must_name_the_tenant(table: TokenTable) -> None:
    """A service token (tenant '*') without the tenant header is InvalidArgument MISSING_TENANT."""
    error = _raised(table, _bearer(SERVICE))
    assert isinstance(error, InvalidArgument)
    assert error.reason == "MISSING_TENANT"
    assert TENANT_HEADER in error.message


def test_service_principal_acts_for_the_named_tenant(table: TokenTable) -> None:
    """A service token naming a known tenant acts for that tenant, with its roles."""
    principal = table.authenticate(_bearer(SERVICE, **{TENANT_HEADER: " initech "}))
    assert (principal.name, principal.tenant, principal.roles) == ("svc:orchestrator", "initech", frozenset({"*"}))


@pytest.mark.parametrize("tenant", ["umbrella", "*"])
def test_service_principal_naming_an_unknown_tenant_is_denied(table: TokenTable, tenant: str) -> None:
    """A service token naming a tenant nobody configured is PermissionDenied UNKNOWN_TENANT."""
    error = _raised(table, _bearer(SERVICE, **{TENANT_HEADER: tenant}))
    assert isinstance(error, PermissionDenied)
    assert error.reason == "UNKNOWN_TENANT"


def test_tenant_token_naming_another_tenant_is_a_mismatch(table: TokenTable) -> None:
    """A tenant's token that names a different tenant in the header is PermissionDenied TENANT_MISMATCH."""
    error = _raised(table, _bearer(ADMIN, **{TENANT_HEADER: "globex"}))
    assert isinstance(error, PermissionDenied)
    assert error.reason == "TENANT_MISMATCH"
    assert error.code == grpc.StatusCode.PERMISSION_DENIED


def test_tenant_token_naming_its_own_tenant_is_accepted(table: TokenTable) -> None:
    """A tenant's token may repeat its own tenant in the header."""
    assert table.authenticate(_bearer(ADMIN, **{TENANT_HEADER: "acme"})).tenant == "acme"


def test_authorize_accepts_a_held_role(table: TokenTable) -> None:
    """authorize returns quietly when the principal holds the role."""
    TokenTable.authorize(table.authenticate(_bearer(READER)), "rules.read")


def test_authorize_refuses_a_missing_role(table: TokenTable) -> None:
    """authorize raises PermissionDenied MISSING_ROLE naming the role when the principal lacks it."""
    with pytest.raises(PermissionDenied) as caught:
        TokenTable.authorize(table.authenticate(_bearer(READER)), "rules.write")
    assert caught.value.reason == "MISSING_ROLE"
    assert caught.value.metadata == {"role": "rules.write"}


def test_wildcard_role_grants_every_role(table: TokenTable) -> None:
    """The role '*' satisfies any required role."""
    admin = table.authenticate(_bearer(ADMIN))
    for role in ("rules.write", "deliveries.send", "anything.at.all"):
        TokenTable.authorize(admin, role)
        assert admin.has_role(role)


def test_has_role_is_exact_without_wildcard() -> None:
    """Without '*', a principal holds exactly its listed roles: no prefix matching."""
    principal = Principal(name="p", tenant="t", roles=frozenset({"rules.read"}))
    assert principal.has_role("rules.read")
    assert not principal.has_role("rules")
    assert not principal.has_role("rules.read.all")
