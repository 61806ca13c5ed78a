"""The records archive: retrieved files kept for the reviewer, content-addressed
on disk (``<root>/<sha256[:2]>/<sha256>``), so the same instance retrieved twice
(a retry, two cases of one patient) is stored once and a checksum is its name.

A file is written under a temporary name while it streams in and only moved to
its content address once complete, so a crash never leaves a partial file
under a valid name.

Two ways in, with the same guarantee:
* `commit(incoming)`: one file: fsync, rename, fsync of its directory.
* `commit_batch(files)`: a series' worth (study/series-level WADO-RS): every
  file written and checked under its temporary name, then all fsynced, then
  renamed, then each directory touched fsynced once. A crash at any point leaves
  every file either under its temporary name (swept as garbage) or complete
  under its address; the instance records are written only after the batch.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO


class IncomingFile:
    """One file being streamed in: written and hashed chunk by chunk."""

    def __init__(self, root: Path, *, hash_as_written: bool = True) -> None:
        tmp_dir = root / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=tmp_dir, suffix=".part")
        self.path = Path(name)
        self._file: BinaryIO = os.fdopen(fd, "wb")
        # Hashing as the bytes arrive costs the event loop as much as the parse; a
        # series' parts are hashed instead by their check's worker thread (`rehash`).
        self._hash: hashlib._Hash | None = hashlib.sha256() if hash_as_written else None
        self._digest = ""
        self.size = 0

    def write(self, data: bytes) -> None:
        self._file.write(data)
        if self._hash is not None:
            self._hash.update(data)
        self.size += len(data)

    def rehash(self) -> str:
        """Hash what is on disk (after `flush`), in the caller's thread."""
        h = hashlib.sha256()
        with open(self.path, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
        self._digest = h.hexdigest()
        return self._digest

    def flush(self) -> None:
        """Hand what was written to the OS (readable by the checks; not yet durable)."""
        self._file.flush()

    def fsync(self) -> None:
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()

    @property
    def sha256(self) -> str:
        if self._hash is None:
            return self._digest or self.rehash()
        return self._hash.hexdigest()

    def close(self) -> str:
        """Flush to disk and return the sha256 (hex) of what was written (again if
        already closed: a file is checked under its temporary name, then committed)."""
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
        return self.sha256

    def discard(self) -> None:
        if not self._file.closed:
            self._file.close()
        self.path.unlink(missing_ok=True)


class Archive:
    """The content-addressed store under `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path_for(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def incoming(self, *, hash_as_written: bool = True) -> IncomingFile:
        return IncomingFile(self.root, hash_as_written=hash_as_written)

    def commit(self, incoming: IncomingFile) -> tuple[str, Path]:
        """Give a complete file its content address (a no-op if already stored)."""
        sha = incoming.close()
        final = self.path_for(sha)
        if final.exists():
            incoming.path.unlink(missing_ok=True)
        else:
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(incoming.path, final)
            _fsync_dir(final.parent)
        return sha, final

    def commit_batch(self, files: list[IncomingFile]) -> list[tuple[str, Path]]:
        """Give complete files their content addresses with one durable step per batch:
        fsync every file, rename each, then fsync each directory renamed into."""
        for f in files:
            f.fsync()
        placed: list[tuple[str, Path]] = []
        dirs: set[Path] = set()
        for f in files:
            sha = f.sha256
            final = self.path_for(sha)
            if final.exists():
                f.path.unlink(missing_ok=True)
            else:
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(f.path, final)
                dirs.add(final.parent)
            placed.append((sha, final))
        for d in sorted(dirs):
            _fsync_dir(d)
        return placed

    def holds(self, sha256: str) -> bool:
        return bool(sha256) and self.path_for(sha256).exists()


def _fsync_dir(path: Path) -> None:
    """Make a rename into `path` durable (the name, not only the data)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
