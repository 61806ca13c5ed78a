"""The SpoolWriter: a series stream's parts written and hashed in a thread of its
own. What the stream and the checks rely on: every byte handed over is in the file
(in order) and in its sha256 once the part is settled; unwritten bytes are bounded;
a part discarded while its writes are pending leaves nothing; a failed write is
the part's error, not a lost byte."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from pathlib import Path

import pytest

from services.records_fetch import archive as archives
from services.records_fetch.archive import IncomingFile, SpoolWriter


def chunks(data: bytes, size: int) -> list[bytes]:
    return [data[at : at + size] for at in range(0, len(data), size)]


def held_writes(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Every write of a spool file waits until the returned event is set."""
    gate = threading.Event()
    real_put = IncomingFile._put

    def slow_put(self: IncomingFile, data: bytes | bytearray) -> None:
        gate.wait(10)
        real_put(self, data)

    monkeypatch.setattr(IncomingFile, "_put", slow_put)
    return gate


def test_parts_are_written_whole_in_order_and_hashed_as_written(tmp_path: Path) -> None:
    archive = archives.LocalArchive(tmp_path)
    datas = [os.urandom(n) for n in (0, 1, 65_536, 3 * SpoolWriter.WRITE_BYTES + 17)]
    writer = SpoolWriter()
    files: list[IncomingFile] = []
    for data in datas:
        incoming = archive.incoming()
        for chunk in chunks(data, 7_919):  # odd chunk sizes, as a socket gives them
            writer.write(incoming, chunk)
        writer.end(incoming)
        assert incoming.size == len(data)  # counted as handed over, not as written
        files.append(incoming)
    for data, incoming in zip(datas, files, strict=True):
        incoming.settle()
        assert incoming.path.read_bytes() == data
        assert incoming.sha256 == hashlib.sha256(data).hexdigest()
    placed = archive.commit_batch(files)
    assert [sha for sha, _ in placed] == [hashlib.sha256(d).hexdigest() for d in datas]
    writer.close()


def test_unwritten_bytes_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer that cannot keep up makes the stream wait: `drained` returns only
    once at most PENDING_BYTES are still to be written."""
    gate = held_writes(monkeypatch)
    monkeypatch.setattr(SpoolWriter, "WRITE_BYTES", 1 << 16)
    monkeypatch.setattr(SpoolWriter, "PENDING_BYTES", 1 << 18)
    archive = archives.LocalArchive(tmp_path)
    writer = SpoolWriter()
    incoming = archive.incoming()
    data = os.urandom(1 << 20)

    async def stream() -> list[int]:
        seen = []
        for chunk in chunks(data, 1 << 16):
            writer.write(incoming, chunk)
            waiting = asyncio.ensure_future(writer.drained())
            await asyncio.sleep(0.01)
            if not waiting.done():
                seen.append(writer._pending_bytes)  # the stream is held back here
                gate.set()
            await waiting
            assert writer._pending_bytes <= SpoolWriter.PENDING_BYTES
        return seen

    held_back = asyncio.run(stream())
    assert held_back and held_back[0] > SpoolWriter.PENDING_BYTES
    writer.end(incoming)
    incoming.settle()
    assert incoming.path.read_bytes() == data
    writer.close()


def test_a_part_discarded_with_writes_pending_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = held_writes(monkeypatch)
    archive = archives.LocalArchive(tmp_path)
    writer = SpoolWriter()
    incoming = archive.incoming()
    writer.write(incoming, os.urandom(2 * SpoolWriter.WRITE_BYTES))
    writer.end(incoming)  # a cut stream ends its open part before discarding it
    threading.Timer(0.05, gate.set).start()
    incoming.discard()  # waits for the pending writes, then removes the file
    assert not incoming.path.exists()
    assert list((tmp_path / "tmp").iterdir()) == []
    writer.close()


def test_a_failed_write_is_the_parts_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Also when a middle write fails and the part's last one would succeed: the
    part is never a shorter file that hashes and checks as if it were whole."""
    real_put = IncomingFile._put
    writes = []

    def full_disk_once(self: IncomingFile, data: bytes | bytearray) -> None:
        writes.append(len(data))
        if len(writes) == 2:
            raise OSError(28, "No space left on device")
        real_put(self, data)

    monkeypatch.setattr(IncomingFile, "_put", full_disk_once)
    archive = archives.LocalArchive(tmp_path)
    writer = SpoolWriter()
    incoming = archive.incoming()
    for _ in range(3):
        writer.write(incoming, b"x" * SpoolWriter.WRITE_BYTES)  # one write each
    writer.write(incoming, b"tail")
    writer.end(incoming)
    with pytest.raises(OSError, match="No space left"):
        incoming.settle()
    with pytest.raises(OSError, match="No space left"):
        archive.commit_batch([incoming])  # never published under an address
    assert not any((tmp_path).glob("??/*"))
    assert writes == [SpoolWriter.WRITE_BYTES] * 2  # nothing written after the failure
    incoming.discard()
    writer.close()
