"""The signing keys: one current Ed25519 key per reviewer, in a key directory,
plus the reviewer's earlier keys, kept public-only until retired.

Per reviewer rather than per organisation because the signature attests that
*this* reviewer signed *this* opinion (the report names them and their
credentials), and one reviewer's key can be revoked or rotated without
touching anyone else's reports.

Files (directory 0700, private files 0600, created on first need):

- `<key_dir>/<reviewer>.ed25519.pem`: the current private key (PKCS#8);
- `<key_dir>/previous/<reviewer>.<fingerprint>.pub.pem`: a rotated-out key's
  public half, published so reports it signed still verify, until retired.

Private keys never go to Mongo, logs or events. In production the directory is
a mounted secret shared by the replicas (or an HSM/KMS behind the same
methods). Rotation and retirement are operator actions:

    python -m services.reporting.keys rotate rev-neuro-1
    python -m services.reporting.keys retire 'rev-neuro-1#0123456789abcdef'
    python -m services.reporting.keys list

A running service reads the files on every signature and every JWKS request,
so a rotation takes effect without a restart.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
    load_pem_public_key,
)

from services.reporting.signing import fingerprint, key_id, public_jwk

_SAFE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$")
_SUFFIX = ".ed25519.pem"
_PUBLIC_SUFFIX = ".pub.pem"


class KeyRing:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.previous = directory / "previous"

    def _path(self, owner: str) -> Path:
        if not _SAFE.match(owner):
            raise ValueError("unsafe key owner id")
        return self.directory / f"{owner}{_SUFFIX}"

    def private_key(self, owner: str) -> Ed25519PrivateKey:
        """The owner's current key, created (0600) on first use."""
        path = self._path(owner)
        if not path.exists():
            self._write_new(path, replace=False)
        key = load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError("not an Ed25519 key")
        return key

    def _write_new(self, path: Path, *, replace: bool) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        pem = Ed25519PrivateKey.generate().private_bytes(
            Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()
        )
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        if replace:
            os.replace(tmp, path)
            return
        try:  # two instances racing: the first link wins, both then read that one
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()

    def rotate(self, owner: str) -> str:
        """Sign from now on with a new key; the old one stays published. Returns the new kid."""
        path = self._path(owner)
        if path.exists():
            old = self.private_key(owner).public_key()
            self.previous.mkdir(parents=True, exist_ok=True, mode=0o700)
            public = old.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
            (self.previous / f"{owner}.{fingerprint(old)}{_PUBLIC_SUFFIX}").write_bytes(public)
        self._write_new(path, replace=True)
        return key_id(owner, self.private_key(owner).public_key())

    def retire(self, kid: str) -> bool:
        """Stop publishing a rotated-out key: reports it signed no longer verify.
        The current key of a reviewer cannot be retired (rotate first)."""
        owner, _, print_ = kid.partition("#")
        self._path(owner)  # validates the owner id
        if not re.fullmatch(r"[0-9a-f]{16}", print_):
            raise ValueError("not a key id")
        path = self.previous / f"{owner}.{print_}{_PUBLIC_SUFFIX}"
        if not path.exists():
            return False
        path.unlink()
        return True

    def public_jwks(self) -> list[dict[str, Any]]:
        """Every published key: each reviewer's current one and the rotated-out ones."""
        if not self.directory.exists():
            return []
        keys = []
        for path in sorted(self.directory.glob(f"*{_SUFFIX}")):
            owner = path.name.removesuffix(_SUFFIX)
            keys.append(public_jwk(owner, self.private_key(owner).public_key()))
        for path in sorted(self.previous.glob(f"*{_PUBLIC_SUFFIX}")):
            owner = path.name.removesuffix(_PUBLIC_SUFFIX).rsplit(".", 1)[0]
            public = load_pem_public_key(path.read_bytes())
            if isinstance(public, Ed25519PublicKey):
                keys.append(public_jwk(owner, public))
        return keys


def main(argv: list[str] | None = None) -> int:
    from services.reporting.settings import ReportingSettings

    parser = argparse.ArgumentParser(description="Rotate, retire and list reviewers' keys.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("rotate").add_argument("reviewer_id")
    commands.add_parser("retire").add_argument("kid")
    commands.add_parser("list")
    parser.add_argument("--key-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    ring = KeyRing(args.key_dir or ReportingSettings().key_dir)
    if args.command == "rotate":
        print(ring.rotate(args.reviewer_id))
    elif args.command == "retire":
        if not ring.retire(args.kid):
            print(f"no rotated-out key {args.kid}", file=sys.stderr)
            return 1
    else:
        print(json.dumps({"keys": ring.public_jwks()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
