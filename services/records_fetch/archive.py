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

import asyncio
import contextlib
import hashlib
import os
import tempfile
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
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
    temporary name in the spool directory.

    Written either by its caller (`write`) or by a `SpoolWriter`'s thread; in the
    second case every method that reads or ends the file first waits until what
    was handed to the writer is on the page cache (`settle`)."""

    def __init__(self, spool: Path, *, durable: bool = True) -> None:
        spool.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=spool, suffix=".part")
        self.path = Path(name)
        self._file: BinaryIO = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256()
        # A spool file that is uploaded elsewhere need not reach this disk durably.
        self._durable = durable
        self.size = 0
        # Set by a SpoolWriter: done once the writer has written and flushed it all.
        self.written: Future[None] | None = None
        self._failed: BaseException | None = None  # a SpoolWriter's write of it failed

    def write(self, data: bytes) -> None:
        self._put(data)
        self.size += len(data)

    def _put(self, data: bytes | bytearray) -> None:
        self._file.write(data)
        self._hash.update(data)

    def settle(self) -> None:
        """Wait until a SpoolWriter has written everything handed to it (re-raises
        its failure); immediate for a file written by its caller."""
        if self.written is not None:
            self.written.result()

    def flush(self) -> None:
        """Hand what was written to the OS (readable by the checks; not yet durable)."""
        self.settle()
        self._file.flush()

    def fsync(self) -> None:
        self.settle()
        if not self._file.closed:
            self._file.flush()
            if self._durable:
                os.fsync(self._file.fileno())
            self._file.close()

    @property
    def sha256(self) -> str:
        self.settle()
        return self._hash.hexdigest()

    def close(self) -> str:
        """Flush (to disk, if durable) and return the sha256 (hex) of what was
        written (again if already closed: a file is checked under its temporary
        name, then committed)."""
        self.fsync()
        return self.sha256

    def discard(self) -> None:
        if self.written is not None:
            wait([self.written])  # its failure, if any, is moot: the file goes
        if not self._file.closed:
            self._file.close()
        self.path.unlink(missing_ok=True)


class SpoolWriter:
    """The writing of one stream's parts (a series-level WADO-RS answer) in a
    thread of its own, so that the event loop only parses: the copy into the page
    cache and the sha256 (both release the GIL) run beside the parse and the
    checks, and each part is hashed as it is written, never read back for it.

    Chunks are gathered into writes of WRITE_BYTES; at most PENDING_BYTES are
    handed over and not yet written (`drained` waits), so memory stays bounded by
    that, whatever the size of the study or of one instance."""

    WRITE_BYTES = 1 << 20
    PENDING_BYTES = 16 << 20

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="spool-writer")
        self._buffer = bytearray()
        self._pending: deque[tuple[Future[None], int]] = deque()
        self._pending_bytes = 0

    def write(self, incoming: IncomingFile, data: bytes) -> None:
        incoming.size += len(data)
        self._buffer += data
        if len(self._buffer) >= self.WRITE_BYTES:
            self._hand_over(incoming, flush=False)

    def end(self, incoming: IncomingFile) -> None:
        """The part is complete: its last bytes are written and flushed, after which
        `incoming.written` is done (readable by a check thread)."""
        incoming.written = self._hand_over(incoming, flush=True)

    async def drained(self) -> None:
        """Back-pressure: wait (off the event loop) while too much is still unwritten.
        The one thread writes in the order handed over, so what is done is at the
        front of `_pending`."""
        pending = self._pending
        while pending and (pending[0][0].done() or self._pending_bytes > self.PENDING_BYTES):
            oldest, n = pending.popleft()
            if not oldest.done():
                await asyncio.wrap_future(oldest)
            self._pending_bytes -= n

    def close(self) -> None:
        """Finish what was handed over (the pool's thread ends with it)."""
        self._pool.shutdown(wait=True)

    def _hand_over(self, incoming: IncomingFile, *, flush: bool) -> Future[None]:
        data, self._buffer = self._buffer, bytearray()
        job = self._pool.submit(_write_part, incoming, data, flush)
        self._pending.append((job, len(data)))
        self._pending_bytes += len(data)
        return job


def _write_part(incoming: IncomingFile, data: bytearray, flush: bool) -> None:
    """A SpoolWriter thread's job: one write (and its hashing); the part's last one
    flushes it to the OS. Once a write of the part failed, every later job of it
    fails the same way, so the part's last job (`incoming.written`) carries it."""
    if incoming._failed is not None:
        raise incoming._failed
    try:
        if data:
            incoming._put(data)
        if flush:
            incoming._file.flush()
    except BaseException as exc:
        incoming._failed = exc
        raise


class Reader(Protocol):
    """What `Archive.open` yields: a stream read in blocks."""

    def read(self, amt: int | None = ..., /) -> bytes: ...


class Archive(Protocol):
    """The content-addressed store every reader and writer of archived files uses."""

    def incoming(self) -> IncomingFile:
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

    def incoming(self) -> IncomingFile:
        return IncomingFile(self.root / "tmp")

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

    def incoming(self) -> IncomingFile:
        return IncomingFile(self.spool, durable=False)

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
