"""The archive's contract, held by both implementations: the local disk and S3
(the stack's real SeaweedFS). Content-addressed, published only whole, read as a
stream, idempotent; a large file goes to S3 in multipart parts."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.records_fetch import archive as archives
from services.records_fetch.archive import Archive, IncomingFile

BUCKET = "records"


def s3_client(infra: dict[str, Any]) -> Any:
    return archives.s3_client(
        infra["s3_url"],
        infra["s3_region"],
        infra["s3_access_key_id"],
        infra["s3_secret_access_key"],
    )


@pytest.fixture(params=["local", "s3"])
def archive(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Archive]:
    if request.param == "local":
        yield archives.LocalArchive(tmp_path / "records")
        return
    infra = request.getfixturevalue("infra")
    s3 = archives.S3Archive(
        s3_client(infra), BUCKET, tmp_path / "spool", prefix=f"it-{uuid.uuid4().hex[:8]}/"
    )
    s3.ensure_bucket(create=True)
    s3.ensure_bucket(create=True)  # idempotent
    yield s3


def spool_files(archive: Archive) -> list[Path]:
    if isinstance(archive, archives.LocalArchive):
        spool = archive.root / "tmp"
    else:
        assert isinstance(archive, archives.S3Archive)
        spool = archive.spool
    return [p for p in spool.iterdir()] if spool.exists() else []


def write(archive: Archive, data: bytes) -> IncomingFile:
    incoming = archive.incoming()
    for at in range(0, len(data), 1 << 20):
        incoming.write(data[at : at + (1 << 20)])
    incoming.flush()
    return incoming


def write_by_spool_writer(archive: Archive, datas: list[bytes]) -> list[IncomingFile]:
    """As a series stream does: every part handed to one SpoolWriter in 64 KiB chunks."""
    writer = archives.SpoolWriter()
    files = []
    for data in datas:
        incoming = archive.incoming()
        for at in range(0, len(data), 1 << 16):
            writer.write(incoming, data[at : at + (1 << 16)])
        writer.end(incoming)
        files.append(incoming)
    writer.close()
    return files


def read(archive: Archive, sha: str) -> bytes:
    with archive.open(sha) as f:
        blocks = iter(lambda: f.read(1 << 20), b"")
        return b"".join(blocks)


def test_a_file_is_published_under_its_checksum_and_read_back(archive: Archive) -> None:
    data = os.urandom(100_000)
    sha = hashlib.sha256(data).hexdigest()
    assert not archive.holds(sha)
    got, location = archive.commit(write(archive, data))
    assert got == sha and location == archive.location(sha) and sha in location
    assert archive.holds(sha) and archive.size(sha) == len(data) and read(archive, sha) == data
    assert spool_files(archive) == []
    # The same content again: stored once, nothing left in the spool.
    assert archive.commit(write(archive, data))[0] == sha
    assert spool_files(archive) == []
    archive.delete(sha)
    assert not archive.holds(sha) and archive.held([sha]) == set()


def test_a_batch_includes_a_multipart_sized_file_and_reports_in_order(archive: Archive) -> None:
    datas = [os.urandom(50_000), os.urandom(archives.PART_BYTES + 1_000_000), os.urandom(10)]
    files = write_by_spool_writer(archive, datas)
    placed = archive.commit_batch(files)
    shas = [hashlib.sha256(d).hexdigest() for d in datas]
    assert [sha for sha, _ in placed] == shas
    assert archive.held([*shas, "0" * 64]) == set(shas)
    assert read(archive, shas[1]) == datas[1] and archive.size(shas[1]) == len(datas[1])
    assert spool_files(archive) == []
    for sha in shas:
        archive.delete(sha)


def test_a_discarded_file_leaves_nothing(archive: Archive) -> None:
    data = b"half a file"
    incoming = write(archive, data)
    incoming.discard()
    assert spool_files(archive) == []
    assert not archive.holds(hashlib.sha256(data).hexdigest())


def test_an_upload_cut_before_completion_is_not_under_its_address(
    infra: dict[str, Any], tmp_path: Path
) -> None:
    """What a crash mid-upload leaves: parts of an unfinished multipart upload are
    never an object under the key (the write-then-publish the S3 archive relies on)."""
    client = s3_client(infra)
    s3 = archives.S3Archive(client, BUCKET, tmp_path, prefix=f"it-{uuid.uuid4().hex[:8]}/")
    s3.ensure_bucket(create=True)
    data = os.urandom(archives.PART_BYTES // 4)
    sha = hashlib.sha256(data).hexdigest()
    upload = client.create_multipart_upload(Bucket=BUCKET, Key=s3.key(sha))
    client.upload_part(
        Bucket=BUCKET, Key=s3.key(sha), UploadId=upload["UploadId"], PartNumber=1, Body=data
    )
    assert not s3.holds(sha)
    client.abort_multipart_upload(Bucket=BUCKET, Key=s3.key(sha), UploadId=upload["UploadId"])
    assert not s3.holds(sha)


def test_not_a_checksum_is_refused_as_an_address(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        archives.LocalArchive(tmp_path).location("../../etc/passwd")
