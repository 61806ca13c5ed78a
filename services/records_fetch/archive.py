"""The records archive: retrieved files kept for the reviewer, content-addressed
(``<sha256[:2]>/<sha256>``), so the same instance retrieved twice (a retry, two
cases of one patient) is stored once and a checksum is its name.

`Archive` is the interface; two implementations:

* `LocalArchive`: a directory on this node's disk (single-node use).
* `S3Archive`: any S3 bucket (SeaweedFS in the local stack), which every replica
  of a scaled-out deployment shares.

Both take a file in the same way: it streams into a local spool file
(`IncomingFile`, under a temporary name, hashed), is checked there, and only
then is published under its content address. A crash never leaves anything
under a valid address unless it is complete:

* local: fsync, rename, fsync of the directory (`commit`); for a series' worth
  (`commit_batch`) every file is fsynced, then all renamed, then each directory
  touched fsynced once.
* S3: the checked spool file is uploaded straight to its address. An S3 PUT (or
  the CompleteMultipartUpload of a large file, sent in PART_BYTES parts) makes
  the object visible whole or not at all, so no temporary key and copy is needed
  (a copy would write every byte twice; a server-side copy above 5 GB is itself
  a multipart job). The parts of an upload cut by a crash are invisible; a
  bucket lifecycle rule (AbortIncompleteMultipartUpload) reclaims their space.

Instance records are written only after their file is published.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, BinaryIO, Protocol

# S3 multipart: files above this are sent in parts of this size, a few at a time
# (memory per upload is bounded by PART_BYTES x UPLOAD_CONCURRENCY).
PART_BYTES = 16 * 1024 * 1024
UPLOAD_CONCURRENCY = 4
# Files of one batch published at once (each upload is one or more requests).
BATCH_CONCURRENCY = 8


class IncomingFile:
    """One file being streamed in: written (and hashed) chunk by chunk, under a
    temporary name in the spool directory."""

    def __init__(self, spool: Path, *, hash_as_written: bool = True, durable: bool = True) -> None:
        spool.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=spool, suffix=".part")
        self.path = Path(name)
        self._file: BinaryIO = os.fdopen(fd, "wb")
        # Hashing as the bytes arrive costs the event loop as much as the parse; a
        # series' parts are hashed instead by their check's worker thread (`rehash`).
        self._hash: hashlib._Hash | None = hashlib.sha256() if hash_as_written else None
        self._digest = ""
        # A spool file that is uploaded elsewhere need not reach this disk durably.
        self._durable = durable
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
            if self._durable:
                os.fsync(self._file.fileno())
            self._file.close()

    @property
    def sha256(self) -> str:
        if self._hash is None:
            return self._digest or self.rehash()
        return self._hash.hexdigest()

    def close(self) -> str:
        """Flush (to disk, if durable) and return the sha256 (hex) of what was
        written (again if already closed: a file is checked under its temporary
        name, then committed)."""
        self.fsync()
        return self.sha256

    def discard(self) -> None:
        if not self._file.closed:
            self._file.close()
        self.path.unlink(missing_ok=True)


class Reader(Protocol):
    """What `Archive.open` yields: a stream read in blocks."""

    def read(self, amt: int | None = ..., /) -> bytes: ...


class Archive(Protocol):
    """The content-addressed store every reader and writer of archived files uses."""

    def incoming(self, *, hash_as_written: bool = True) -> IncomingFile:
        """A new spool file to stream into."""
        ...

    def commit(self, incoming: IncomingFile) -> tuple[str, str]:
        """Publish one complete, checked file under its address (a no-op if already
        held); returns (sha256, location)."""
        ...

    def commit_batch(self, files: list[IncomingFile]) -> list[tuple[str, str]]:
        """Publish a batch with one durable step; (sha256, location) per file, in order."""
        ...

    def holds(self, sha256: str) -> bool: ...

    def held(self, shas: Iterable[str]) -> set[str]:
        """Which of `shas` are held (one call for a whole case's records)."""
        ...

    def open(self, sha256: str) -> contextlib.AbstractContextManager[Reader]:
        """The file's bytes, streamed (never read whole into memory)."""
        ...

    def size(self, sha256: str) -> int: ...

    def delete(self, sha256: str) -> None: ...

    def location(self, sha256: str) -> str:
        """Where the file is, for the records (a path, or s3://bucket/key)."""
        ...


def content_key(sha256: str) -> str:
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ValueError("not a sha256 (hex)")
    return f"{sha256[:2]}/{sha256}"


class LocalArchive:
    """The content-addressed store under `root` (spool: `root/tmp`)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path_for(self, sha256: str) -> Path:
        return self.root / content_key(sha256)

    def incoming(self, *, hash_as_written: bool = True) -> IncomingFile:
        return IncomingFile(self.root / "tmp", hash_as_written=hash_as_written)

    def location(self, sha256: str) -> str:
        return str(self.path_for(sha256))

    def commit(self, incoming: IncomingFile) -> tuple[str, str]:
        sha = incoming.close()
        final = self.path_for(sha)
        if final.exists():
            incoming.path.unlink(missing_ok=True)
        else:
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(incoming.path, final)
            _fsync_dir(final.parent)
        return sha, str(final)

    def commit_batch(self, files: list[IncomingFile]) -> list[tuple[str, str]]:
        """fsync every file, rename each, then fsync each directory renamed into."""
        for f in files:
            f.fsync()
        placed: list[tuple[str, str]] = []
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
            placed.append((sha, str(final)))
        for d in sorted(dirs):
            _fsync_dir(d)
        return placed

    def holds(self, sha256: str) -> bool:
        return bool(sha256) and self.path_for(sha256).exists()

    def held(self, shas: Iterable[str]) -> set[str]:
        return {s for s in set(shas) if self.holds(s)}

    @contextlib.contextmanager
    def open(self, sha256: str) -> Iterator[Reader]:
        with open(self.path_for(sha256), "rb") as f:
            yield f

    def size(self, sha256: str) -> int:
        return self.path_for(sha256).stat().st_size

    def delete(self, sha256: str) -> None:
        self.path_for(sha256).unlink(missing_ok=True)


class S3Archive:
    """The content-addressed store in an S3 bucket (key: `prefix` + content key);
    files spool under `spool` on this node's disk while they stream in and are
    checked. `client` is a boto3 S3 client (thread-safe; used from worker threads)."""

    def __init__(self, client: Any, bucket: str, spool: Path, *, prefix: str = "") -> None:
        from boto3.s3.transfer import TransferConfig

        self.client, self.bucket, self.spool, self.prefix = client, bucket, spool, prefix
        self.transfer = TransferConfig(
            multipart_threshold=PART_BYTES,
            multipart_chunksize=PART_BYTES,
            max_concurrency=UPLOAD_CONCURRENCY,
            use_threads=True,
        )
        self._pool = ThreadPoolExecutor(BATCH_CONCURRENCY, thread_name_prefix="s3-archive")

    def key(self, sha256: str) -> str:
        return self.prefix + content_key(sha256)

    def location(self, sha256: str) -> str:
        return f"s3://{self.bucket}/{self.key(sha256)}"

    def ensure_bucket(self, *, create: bool) -> None:
        """Check the bucket is there and ours to use; create it if asked (development).
        Idempotent: a bucket created meanwhile by another replica is fine."""
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code not in ("404", "NoSuchBucket", "NotFound") or not create:
                raise
        try:
            self.client.create_bucket(Bucket=self.bucket)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise

    def incoming(self, *, hash_as_written: bool = True) -> IncomingFile:
        return IncomingFile(self.spool, hash_as_written=hash_as_written, durable=False)

    def commit(self, incoming: IncomingFile) -> tuple[str, str]:
        sha = incoming.close()
        try:
            if not self.holds(sha):
                self.client.upload_file(
                    str(incoming.path),
                    self.bucket,
                    self.key(sha),
                    ExtraArgs={"ContentType": "application/dicom"},
                    Config=self.transfer,
                )
        finally:
            incoming.path.unlink(missing_ok=True)
        return sha, self.location(sha)

    def commit_batch(self, files: list[IncomingFile]) -> list[tuple[str, str]]:
        """Each file uploaded on its own (each PUT is atomic), several at once; the
        call returns once all are published (the records are written after)."""
        futures = [self._pool.submit(self.commit, f) for f in files]
        wait(futures)  # all settled (published or failed) before any spool file goes
        for incoming in files:
            incoming.path.unlink(missing_ok=True)
        return [f.result() for f in futures]

    def holds(self, sha256: str) -> bool:
        from botocore.exceptions import ClientError

        if not sha256:
            return False
        try:
            self.client.head_object(Bucket=self.bucket, Key=self.key(sha256))
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code", "")) in ("404", "NoSuchKey"):
                return False
            raise
        return True

    def held(self, shas: Iterable[str]) -> set[str]:
        wanted = sorted({s for s in shas if s})
        found = self._pool.map(self.holds, wanted)
        return {s for s, ok in zip(wanted, found, strict=True) if ok}

    @contextlib.contextmanager
    def open(self, sha256: str) -> Iterator[Reader]:
        body = self.client.get_object(Bucket=self.bucket, Key=self.key(sha256))["Body"]
        try:
            yield body
        finally:
            body.close()

    def size(self, sha256: str) -> int:
        head = self.client.head_object(Bucket=self.bucket, Key=self.key(sha256))
        return int(head["ContentLength"])

    def delete(self, sha256: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.key(sha256))


def s3_client(endpoint: str, region: str, access_key: str, secret_key: str) -> Any:
    """A boto3 S3 client for `endpoint` (path-style: SeaweedFS and most non-AWS S3s)."""
    import boto3
    from botocore.config import Config

    config = Config(
        region_name=region,
        s3={"addressing_style": "path"},
        retries={"max_attempts": 5, "mode": "standard"},
        max_pool_connections=BATCH_CONCURRENCY * UPLOAD_CONCURRENCY,
        connect_timeout=5,
        read_timeout=60,
    )
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint or None,
        aws_access_key_id=access_key or None,
        aws_secret_access_key=secret_key or None,
        config=config,
    )


def _fsync_dir(path: Path) -> None:
    """Make a rename into `path` durable (the name, not only the data)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def from_settings(settings: Any) -> LocalArchive | S3Archive:
    """The archive `settings` (RecordsFetchSettings) name: unset means local in
    development; outside it check_production has refused to start already."""
    kind = settings.archive or ("local" if settings.dev_mode else None)
    if kind is None:
        raise ValueError("RECORDS_FETCH_ARCHIVE is not set")
    if kind == "local":
        return LocalArchive(settings.records_dir)
    client = s3_client(
        settings.s3_endpoint,
        settings.s3_region,
        settings.s3_access_key_id,
        settings.s3_secret_access_key.get_secret_value(),
    )
    return S3Archive(client, settings.s3_bucket, settings.spool_dir, prefix=settings.s3_prefix)
