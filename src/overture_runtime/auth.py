"""Bearer-token authentication and role-based authorization.

Tokens come from configuration (``OVERTURE_AUTH_TOKENS``) and map to one
tenant and a set of roles. Internal service principals carry the tenant
``*`` and name the tenant of each call in the ``x-overture-tenant`` header.
Tokens are looked up by their sha256 digest and never logged.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .config import TokenGrant
from .errors import InvalidArgument, PermissionDenied, Unauthenticated

__all__ = ["ANY_TENANT", "TENANT_HEADER", "Principal", "TokenTable", "bearer_token"]

ANY_TENANT = "*"
TENANT_HEADER = "x-overture-tenant"


@dataclass(frozen=True)
class Principal:
    """An authenticated caller acting for one tenant."""

    name: str
    """Who the caller is, for audit records (never the token)."""
    tenant: str
    """The tenant this call acts for."""
    roles: frozenset[str]
    """The roles held; ``*`` means every role."""

    def has_role(self, role: str) -> bool:
        """Whether the principal holds *role* (or every role)."""
        return "*" in self.roles or role in self.roles


def bearer_token(metadata: Mapping[str, str]) -> str | None:
    """The token of an ``authorization: Bearer <token>`` header, if any."""
    value = metadata.get("authorization", "")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenTable:
    """Resolves bearer tokens to principals. Immutable after construction."""

    def __init__(self, grants: Iterable[TokenGrant], *, extra_tenants: Iterable[str] = ()) -> None:
        self._by_digest: dict[str, TokenGrant] = {}
        for grant in grants:
            if grant.token is not None:
                digest = _digest(grant.token.get_secret_value())
            elif grant.token_sha256:
                digest = grant.token_sha256.lower()
            else:
                raise ValueError(f"token grant for tenant {grant.tenant!r} has neither token nor token_sha256")
            self._by_digest[digest] = grant
        self.tenants = frozenset(
            {g.tenant for g in self._by_digest.values() if g.tenant != ANY_TENANT} | set(extra_tenants)
        )

    def authenticate(self, metadata: Mapping[str, str]) -> Principal:
        """Resolve the caller of a request from its metadata.

        Raises :class:`Unauthenticated` for a missing or unknown token, and
        :class:`PermissionDenied` when a service principal names a tenant
        that does not exist.
        """
        token = bearer_token(metadata)
        if token is None:
            raise Unauthenticated(
                "missing credentials: send 'authorization: Bearer <token>'", reason="MISSING_TOKEN"
            )
        digest = _digest(token)
        # Looking up the digest, not the token, leaks nothing about stored
        # secrets through timing.
        grant = self._by_digest.get(digest)
        if grant is None:
            raise Unauthenticated("the bearer token is not valid", reason="UNKNOWN_TOKEN")
        tenant = grant.tenant
        named = metadata.get(TENANT_HEADER, "").strip()
        if tenant == ANY_TENANT:
            if not named:
                raise InvalidArgument(
                    f"a service token must name the tenant in the {TENANT_HEADER!r} header",
                    reason="MISSING_TENANT",
                )
            tenant = named
        elif named and named != tenant:
            raise PermissionDenied(f"this token cannot act for tenant {named!r}", reason="TENANT_MISMATCH")
        if tenant not in self.tenants:
            raise PermissionDenied(f"unknown tenant {tenant!r}", reason="UNKNOWN_TENANT")
        return Principal(name=grant.principal or f"token:{digest[:8]}", tenant=tenant, roles=frozenset(grant.roles))

    @staticmethod
    def authorize(principal: Principal, role: str) -> None:
        """Raise :class:`PermissionDenied` unless *principal* holds *role*."""
        if not principal.has_role(role):
            raise PermissionDenied(f"this call needs the role {role!r}", reason="MISSING_ROLE", metadata={"role": role})
