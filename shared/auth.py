"""API credentials: per-tenant keys, stored only as SHA-256 hashes.

A key looks like ``<key_id>.<secret>``. The credentials file (JSON list) holds
for each key id its tenant, role, subject (e.g. the reviewer id) and the
SHA-256 of the whole key; the plaintext is shown once to whoever issues it
(`python -m shared.auth issue ...`). A high-entropy random secret makes a fast
hash adequate (no password stretching needed), and lookup by key id keeps the
comparison constant-time.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field, TypeAdapter

from shared.errors import Forbidden, RouterError
from shared.events import TENANT_ID_PATTERN


class Unauthorized(RouterError):
    status_code = 401
    title = "Unauthorized"


class Principal(BaseModel):
    key_id: str
    # A tenant id also names the tenant's partner channel on Kafka
    # (shared.events.partner_topic): a credentials file with another shape is refused.
    tenant_id: str = Field(pattern=TENANT_ID_PATTERN)
    role: str
    subject: str
    key_sha256: str = ""


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class Credentials:
    """The loaded credentials file, indexed by key id."""

    def __init__(self, principals: list[Principal]) -> None:
        self._by_id = {p.key_id: p for p in principals}

    @classmethod
    def load(cls, path: Path) -> Credentials:
        raw = json.loads(path.read_text())
        return cls(TypeAdapter(list[Principal]).validate_python(raw))

    def has_tenant(self, tenant_id: str) -> bool:
        return any(p.tenant_id == tenant_id for p in self._by_id.values())

    def tenants(self, *roles: str) -> list[str]:
        """The tenants with a key of one of `roles` (every tenant without roles)."""
        return sorted({p.tenant_id for p in self._by_id.values() if not roles or p.role in roles})

    def authenticate(self, key: str) -> Principal:
        key_id, _, secret = key.partition(".")
        principal = self._by_id.get(key_id)
        if principal is None or not secret:
            raise Unauthorized("unknown or malformed API key")
        if not hmac.compare_digest(principal.key_sha256, hash_key(key)):
            raise Unauthorized("unknown or malformed API key")
        return principal


def bearer_key(authorization: str) -> str:
    scheme, _, key = authorization.partition(" ")
    if scheme.lower() != "bearer" or not key:
        raise Unauthorized("expected 'Authorization: Bearer <key>'")
    return key.strip()


# Declared as the OpenAPI `bearer` security scheme, so generated clients and the
# /docs page send the key (a header parameter named Authorization is ignored by
# OpenAPI 3.1 tooling).
BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="apiKey",
    description="Authorization: Bearer <key_id>.<secret> (a per-tenant API key)",
)


def require(credentials: Credentials, *roles: str) -> Callable[..., Principal]:
    """A FastAPI dependency that authenticates and checks the caller's role."""

    def dependency(
        given: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
    ) -> Principal:
        if given is None:
            raise Unauthorized("expected 'Authorization: Bearer <key>'")
        principal = credentials.authenticate(given.credentials.strip())
        if roles and principal.role not in roles:
            raise Forbidden(f"role {principal.role!r} may not call this endpoint")
        return principal

    return dependency


def issue(key_id: str, tenant_id: str, role: str, subject: str) -> tuple[str, Principal]:
    """A new random key and the principal record to store (hash only)."""
    key = f"{key_id}.{secrets.token_urlsafe(32)}"
    record = Principal(
        key_id=key_id, tenant_id=tenant_id, role=role, subject=subject, key_sha256=hash_key(key)
    )
    return key, record


def main() -> None:
    parser = argparse.ArgumentParser(description="Issue an API key (prints key, then record)")
    parser.add_argument("key_id")
    parser.add_argument("tenant_id")
    parser.add_argument(
        "role", choices=["integrator", "partner", "reviewer", "operations", "service"]
    )
    parser.add_argument("subject")
    args = parser.parse_args()
    key, record = issue(args.key_id, args.tenant_id, args.role, args.subject)
    print(key)
    print(record.model_dump_json())


if __name__ == "__main__":
    main()
