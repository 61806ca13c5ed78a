"""The signing keys: one Ed25519 key per reviewer, in a key directory.

Per reviewer rather than per organisation because the signature attests that
*this* reviewer signed *this* opinion (the report names them and their
credentials), and one reviewer's key can be revoked or rotated without
touching anyone else's reports.

Private keys live only in files (`<key_dir>/<reviewer>.ed25519.pem`, PKCS#8,
mode 0600, directory 0700) created on first need; they never go to Mongo,
logs or events. In production the directory is a mounted secret (or the
files are replaced by an HSM/KMS behind the same two methods). Public keys
are published by `public_jwks()` (GET /v1/keys).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)

from services.reporting.signing import public_jwk

_SAFE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_SUFFIX = ".ed25519.pem"


class KeyRing:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._loaded: dict[str, Ed25519PrivateKey] = {}

    def _path(self, owner: str) -> Path:
        if not _SAFE.match(owner) or owner.startswith("."):
            raise ValueError("unsafe key owner id")
        return self.directory / f"{owner}{_SUFFIX}"

    def private_key(self, owner: str) -> Ed25519PrivateKey:
        """The owner's key, created (0600) on first use."""
        if owner in self._loaded:
            return self._loaded[owner]
        path = self._path(owner)
        if not path.exists():
            self._create(path)
        key = load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError("not an Ed25519 key")
        self._loaded[owner] = key
        return key

    def _create(self, path: Path) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        pem = Ed25519PrivateKey.generate().private_bytes(
            Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()
        )
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        try:  # two instances racing: the first link wins, both then read that one
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()

    def public_jwks(self) -> list[dict[str, Any]]:
        if not self.directory.exists():
            return []
        owners = [p.name.removesuffix(_SUFFIX) for p in sorted(self.directory.glob(f"*{_SUFFIX}"))]
        return [public_jwk(o, self.private_key(o).public_key()) for o in owners]
