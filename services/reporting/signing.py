"""Ed25519 signatures over a report's canonical bytes, and the published
verification keys (JWK, RFC 8037 "OKP"/"Ed25519").

Pure computation, no I/O: `keys.KeyRing` loads the private keys; this module
signs with one and verifies against a published public key. A signature
covers `domain.canonical_bytes(document)`, so changing any field, adding one
or removing one breaks it. The key id (`kid`) names the reviewer and the key's
fingerprint, so a partner can pick the right published key and a rotated key
never verifies a report it did not sign.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pydantic import BaseModel, ConfigDict

from services.reporting.domain import canonical_bytes, content_sha256

ALGORITHM = "Ed25519"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Signature(BaseModel):
    """A detached signature over one document's canonical bytes."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    alg: str = ALGORITHM
    kid: str
    content_sha256: str
    value: str  # base64url, 64 bytes


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_id(owner: str, key: Ed25519PublicKey) -> str:
    return f"{owner}#{hashlib.sha256(raw_public(key)).hexdigest()[:16]}"


def public_jwk(owner: str, key: Ed25519PublicKey) -> dict[str, str]:
    return {
        "kty": "OKP",
        "crv": "Ed25519",
        "alg": "EdDSA",
        "use": "sig",
        "kid": key_id(owner, key),
        "x": b64url(raw_public(key)),
        "owner": owner,
    }


def sign(document: dict[str, Any], owner: str, key: Ed25519PrivateKey) -> Signature:
    value = key.sign(canonical_bytes(document))
    return Signature(
        kid=key_id(owner, key.public_key()),
        content_sha256=content_sha256(document),
        value=b64url(value),
    )


def verification_problems(
    document: dict[str, Any], signature: Signature, jwks: list[dict[str, Any]]
) -> list[str]:
    """Why the signature does not verify against the published keys ([] = valid)."""
    jwk = next((k for k in jwks if k.get("kid") == signature.kid), None)
    if jwk is None:
        return [f"no published key {signature.kid}"]
    problems = []
    if jwk.get("owner") != document.get("reviewer_id"):
        problems.append("the key does not belong to the reviewer the report names")
    if content_sha256(document) != signature.content_sha256:
        problems.append("content_sha256 does not match the document")
    try:
        public = Ed25519PublicKey.from_public_bytes(b64url_decode(jwk["x"]))
        public.verify(b64url_decode(signature.value), canonical_bytes(document))
    except (InvalidSignature, ValueError, KeyError):
        problems.append("signature does not verify")
    return problems
