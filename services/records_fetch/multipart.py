"""An incremental reader of `multipart/related` bodies (WADO-RS responses), free
of I/O: fed chunks as they arrive, it hands back each part's bytes as they
come, so an instance of any size is streamed to disk and never held whole.

A body that ends before its closing delimiter is a truncated transfer and is
reported as such by `close()`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from email.message import Message
from enum import Enum, auto


class MultipartError(ValueError):
    """The body is not well-formed multipart (or was cut off)."""


def boundary_of(content_type: str) -> str:
    msg = Message()
    msg["content-type"] = content_type
    boundary = msg.get_param("boundary")
    if msg.get_content_type() != "multipart/related" or not isinstance(boundary, str):
        raise MultipartError("not a multipart/related response with a boundary")
    return boundary


class _State(Enum):
    PREAMBLE = auto()
    HEADERS = auto()
    BODY = auto()
    AFTER_DELIMITER = auto()
    DONE = auto()


@dataclass
class PartStart:
    headers: dict[str, str]


@dataclass
class PartData:
    data: bytes


@dataclass
class PartEnd:
    pass


Event = PartStart | PartData | PartEnd


@dataclass
class MultipartReader:
    boundary: str
    _buf: bytearray = field(default_factory=lambda: bytearray(b"\r\n"))
    _state: _State = _State.PREAMBLE

    @property
    def _delimiter(self) -> bytes:
        # The CRLF before "--boundary" belongs to the delimiter, not to the part.
        return b"\r\n--" + self.boundary.encode()

    def feed(self, chunk: bytes) -> list[Event]:
        self._buf += chunk
        events: list[Event] = []
        while self._step(events):
            pass
        return events

    def close(self) -> None:
        if self._state is not _State.DONE:
            raise MultipartError("body ended before the closing delimiter (truncated)")

    def _step(self, events: list[Event]) -> bool:
        """Advance one state if the buffer allows; False when more bytes are needed."""
        if self._state is _State.PREAMBLE:
            return self._skip_to_delimiter()
        if self._state is _State.AFTER_DELIMITER:
            return self._after_delimiter(events)
        if self._state is _State.HEADERS:
            return self._headers(events)
        if self._state is _State.BODY:
            return self._body(events)
        self._buf.clear()  # epilogue after the closing delimiter: ignored
        return False

    def _skip_to_delimiter(self) -> bool:
        at = self._buf.find(self._delimiter)
        if at < 0:
            del self._buf[: max(0, len(self._buf) - len(self._delimiter))]
            return False
        del self._buf[: at + len(self._delimiter)]
        self._state = _State.AFTER_DELIMITER
        return True

    def _after_delimiter(self, events: list[Event]) -> bool:
        if len(self._buf) < 2:
            return False
        tail = bytes(self._buf[:2])
        del self._buf[:2]
        if tail == b"--":
            self._state = _State.DONE
        elif tail == b"\r\n":
            self._state = _State.HEADERS
        else:
            raise MultipartError("malformed delimiter")
        return True

    def _headers(self, events: list[Event]) -> bool:
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > 16384:
                raise MultipartError("part headers too long")
            return False
        headers = {}
        for line in bytes(self._buf[:end]).decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name:
                headers[name.strip().lower()] = value.strip()
        del self._buf[: end + 4]
        events.append(PartStart(headers))
        self._state = _State.BODY
        return True

    def _take(self, n: int) -> bytes:
        """The buffer's first n bytes, copied once (a slice of a bytearray would be
        copied twice)."""
        with memoryview(self._buf) as view:
            return bytes(view[:n])

    def _body(self, events: list[Event]) -> bool:
        at = self._buf.find(self._delimiter)
        if at < 0:
            # Keep back what could be the start of a delimiter split across chunks.
            safe = len(self._buf) - len(self._delimiter) + 1
            if safe > 0:
                events.append(PartData(self._take(safe)))
                del self._buf[:safe]
            return False
        if at:
            events.append(PartData(self._take(at)))
        del self._buf[: at + len(self._delimiter)]
        events.append(PartEnd())
        self._state = _State.AFTER_DELIMITER
        return True
