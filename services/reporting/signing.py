"""Standard signatures: a report (or addendum) document canonicalised with
RFC 8785 (JSON Canonicalization Scheme, the `rfc8785` library) and signed as a
compact JWS (RFC 7515) with EdDSA / Ed25519 (RFC 8037), its header naming the
signing key's `kid`; the public keys are published as a JWK set.

Why a compact JWS with the payload attached, not a detached one with
`"b64": false` (RFC 7797): every JOSE library verifies a plain compact JWS,
while RFC 7797 needs `crit` support that several lack or disable by default;
and the JWS alone carries what was signed, so a partner needs no canonicaliser
of its own: verify the JWS against the published key, and the payload *is* the
signed document (the JSON beside it in the API is a readable copy, which
`verification_problems` checks is the same document).

Pure computation, no I/O: `keys.KeyRing` holds the private keys. The `kid`
names the reviewer and the key's fingerprint, so a partner picks the right
published key and a rotated key never verifies a report it did not sign.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pydantic import BaseModel, ConfigDict

ALGORITHM = "EdDSA"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def canonical_bytes(document: dict[str, Any]) -> bytes:
    """The document's RFC 8785 canonical form: the JWS payload, what is hashed."""
    return rfc8785.dumps(document)


def content_sha256(document: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_bytes(document)).hexdigest()


class Signature(BaseModel):
    """A document's signature: the compact JWS (payload: the canonical document),
    with its key id and the canonical document's SHA-256 repeated for readers."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    alg: str = ALGORITHM
    kid: str
    content_sha256: str
    jws: str  # compact serialisation: header.payload.signature, all base64url

    @property
    def value(self) -> str:
        """The Ed25519 signature itself (base64url, 64 bytes)."""
        return self.jws.rsplit(".", 1)[-1]


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def fingerprint(key: Ed25519PublicKey) -> str:
    return hashlib.sha256(raw_public(key)).hexdigest()[:16]


def key_id(owner: str, key: Ed25519PublicKey) -> str:
    return f"{owner}#{fingerprint(key)}"


def public_jwk(owner: str, key: Ed25519PublicKey) -> dict[str, str]:
    """The published verification key (RFC 8037 OKP); `owner` is the reviewer it
    belongs to (an extra member, ignored by JOSE libraries)."""
    return {
        "kty": "OKP",
        "crv": "Ed25519",
        "alg": ALGORITHM,
        "use": "sig",
        "kid": key_id(owner, key),
        "x": b64url(raw_public(key)),
        "owner": owner,
    }


def _header(kid: str) -> str:
    header = {"alg": ALGORITHM, "kid": kid, "typ": "JOSE"}
    return b64url(json.dumps(header, separators=(",", ":")).encode())


def sign(document: dict[str, Any], owner: str, key: Ed25519PrivateKey) -> Signature:
    kid = key_id(owner, key.public_key())
    payload = canonical_bytes(document)
    signing_input = f"{_header(kid)}.{b64url(payload)}"
    value = key.sign(signing_input.encode("ascii"))
    return Signature(
        kid=kid,
        content_sha256=hashlib.sha256(payload).hexdigest(),
        jws=f"{signing_input}.{b64url(value)}",
    )


def _jws_parts(jws: str) -> tuple[dict[str, Any], bytes, bytes, bytes]:
    """(header, payload, signing input, signature) of a compact JWS; ValueError if malformed."""
    parts = jws.split(".")
    if len(parts) != 3:
        raise ValueError("not a compact JWS")
    header = json.loads(b64url_decode(parts[0]))
    if not isinstance(header, dict):
        raise ValueError("JWS header is not an object")
    signing_input = f"{parts[0]}.{parts[1]}".encode("ascii")
    return header, b64url_decode(parts[1]), signing_input, b64url_decode(parts[2])


def verification_problems(
    document: dict[str, Any], signature: Signature, jwks: list[dict[str, Any]]
) -> list[str]:
    """Why the signature does not verify against the published keys ([] = valid)."""
    try:
        header, payload, signing_input, value = _jws_parts(signature.jws)
    except ValueError:
        return ["the signature is not a compact JWS"]
    if header.get("alg") != ALGORITHM or header.get("crit"):
        return [f"unsupported JWS header (alg {header.get('alg')!r})"]
    kid = header.get("kid")
    if kid != signature.kid:
        return ["the JWS header names another key than the signature"]
    jwk = next((k for k in jwks if k.get("kid") == kid), None)
    if jwk is None:
        return [f"no published key {kid}"]
    problems = []
    if jwk.get("owner") != document.get("reviewer_id"):
        problems.append("the key does not belong to the reviewer the report names")
    try:
        public = Ed25519PublicKey.from_public_bytes(b64url_decode(jwk["x"]))
        public.verify(value, signing_input)
    except (InvalidSignature, ValueError, KeyError):
        return [*problems, "signature does not verify"]
    if payload != canonical_bytes(document):
        problems.append("the signed payload is not this document")
    if hashlib.sha256(payload).hexdigest() != signature.content_sha256:
        problems.append("content_sha256 does not match the signed payload")
    return problems
