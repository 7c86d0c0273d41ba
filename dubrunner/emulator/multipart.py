"""The emulator's reading of a multipart/form-data body, as a stream: constant memory whatever
the size of the files; each part's size and SHA-256 are what it keeps."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from email.message import Message
from typing import Any, Protocol

CHUNK = 64 * 1024
MAX_HEADERS = 16 * 1024  # of one part
MAX_FIELD = 4096  # a text field's value (reference_id, disable_active_speaker_detection)


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class BadBody(Exception):
    """Not a multipart body the API could read (it answers "invalid request body")."""


@dataclass
class Part:
    name: str
    filename: str | None
    content_type: str | None
    size: int = 0
    sha256: str = ""
    value: bytes = b""  # the first MAX_FIELD bytes (text fields)
    _hash: Any = field(default_factory=hashlib.sha256, repr=False)

    def feed(self, data: bytes) -> None:
        self.size += len(data)
        self._hash.update(data)
        if len(self.value) < MAX_FIELD:
            self.value += data[: MAX_FIELD - len(self.value)]

    def close(self) -> None:
        self.sha256 = self._hash.hexdigest()


def boundary_of(content_type: str) -> bytes | None:
    msg = Message()
    msg["content-type"] = content_type
    if msg.get_content_type() != "multipart/form-data":
        return None
    boundary = msg.get_param("boundary")
    if not isinstance(boundary, str) or not 1 <= len(boundary) <= 70:
        return None
    return boundary.encode("latin-1")


def _part_of(head: bytes) -> Part:
    msg = Message()
    for line in head.decode("latin-1").split("\r\n"):
        name, sep, value = line.partition(":")
        if not sep:
            raise BadBody("a part header without ':'")
        msg[name.strip()] = value.strip()
    disposition = msg.get("content-disposition", "")
    carrier = Message()
    carrier["content-type"] = "x/y; " + disposition.partition(";")[2]
    field_name = carrier.get_param("name")
    if not disposition.startswith("form-data") or not isinstance(field_name, str):
        raise BadBody("a part without a form-data name")
    filename = carrier.get_param("filename")
    kind = msg.get("content-type")
    return Part(
        field_name, filename if isinstance(filename, str) else None, str(kind) if kind else None
    )


def read_parts(
    stream: Readable, length: int, boundary: bytes, rate: float | None = None
) -> list[Part]:
    """Every part of a body of `length` bytes. Raises BadBody for a malformed body (read to its
    end first, so the connection stays usable), ConnectionError when the body ends early.
    `rate`: read at most this many bytes per second (a slow server)."""
    delimiter = b"\r\n--" + boundary
    buf = b"\r\n"  # the first delimiter has no line break before it
    left = length
    parts: list[Part] = []
    current: Part | None = None
    state = "preamble"
    problem: str | None = None
    started = time.monotonic()
    done = 0
    ended = False
    while True:
        if not ended:
            want = min(CHUNK, left)
            chunk = stream.read(want) if want else b""
            if want and not chunk:
                raise ConnectionError("the body ended early")
            left -= len(chunk)
            done += len(chunk)
            buf += chunk
            ended = left == 0
            if rate:
                ahead = done / rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
        if problem is not None:  # only draining
            buf = b""
            if ended:
                raise BadBody(problem)
            continue
        progressed = True
        while progressed and problem is None:
            progressed = False
            if state in ("preamble", "data"):
                at = buf.find(delimiter)
                if at < 0:
                    keep = len(delimiter) + 2
                    if current is not None and len(buf) > keep:
                        current.feed(buf[:-keep])
                        buf = buf[-keep:]
                    elif current is None and len(buf) > keep:
                        buf = buf[-keep:]
                    break
                if current is not None:
                    current.feed(buf[:at])
                    current.close()
                    parts.append(current)
                    current = None
                buf = buf[at + len(delimiter) :]
                state = "after"
                progressed = True
            elif state == "after":
                if len(buf) < 2:
                    break
                if buf[:2] == b"--":
                    return _finish(parts, stream, left)
                if buf[:2] != b"\r\n":
                    problem = "a delimiter not followed by a line break"
                    break
                buf = buf[2:]
                state = "headers"
                progressed = True
            elif state == "headers":
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > MAX_HEADERS:
                        problem = "part headers too long"
                    break
                try:
                    current = _part_of(buf[:end])
                except BadBody as exc:
                    problem = str(exc)
                    break
                buf = buf[end + 4 :]
                state = "data"
                progressed = True
        if ended and problem is None:
            problem = "the body ends before its closing delimiter"
            raise BadBody(problem)


def _finish(parts: list[Part], stream: Readable, left: int) -> list[Part]:
    while left > 0:  # an epilogue: read and ignored
        chunk = stream.read(min(CHUNK, left))
        if not chunk:
            raise ConnectionError("the body ended early")
        left -= len(chunk)
    return parts
