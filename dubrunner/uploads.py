"""Uploading a local job's two files: what to send (checked unchanged since they were loaded),
and the multipart/form-data body, streamed from disk in chunks so that memory stays flat
whatever the size of the files, each file's SHA-256 checked as it is read. No database and no
HTTP here: the worker passes the digest cache in, and api.py sends the body."""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO, Protocol

import httpx

from dubrunner.localmedia import Digests, LocalFile, content_type, path_of_uri

CHUNK = 1024 * 1024
# An upload may take the request timeout plus this many seconds per MiB of body (a floor of
# 256 KiB/s on the link): a stalled link is cut by the write timeout sooner anyway.
SECONDS_PER_MIB = 4.0


class UploadInterrupted(httpx.WriteError):
    """The body stopped partway (a file changed or vanished, the job's hold lapsed): the API
    never saw its end, yet the job is looked up before it is sent again, like any cut POST."""


class FileChanged(Exception):
    """A file's bytes, as read for the body, are not those whose SHA-256 is the job's identity.
    Raised before the file's last chunk leaves: the body stops short of its Content-Length, so
    the API cannot have accepted it, and the job fails unsent (no look-up is owed for it)."""


def changed(which: str, path: str) -> str:
    """The one sentence for a local file that is not the file that was loaded."""
    return f"the {which} file {path} changed since it was loaded: load the manifest again"


@dataclass(frozen=True, slots=True)
class FilePart:
    name: str  # the form field: video | audio
    path: str
    size: int
    content_type: str
    sha256: str | None = None  # what its bytes must hash to (None: not checked)

    @property
    def filename(self) -> str:
        return os.path.basename(self.path)


def upload_timeout(size: int, request_timeout: float) -> float:
    """Seconds an upload of `size` bytes may take, from connect to the last byte of the answer."""
    return request_timeout + SECONDS_PER_MIB * size / (1024 * 1024)


class LoadedJob(Protocol):
    """A local job as loaded: its two files' URLs, sizes and SHA-256s (a claim, or a row)."""

    @property
    def video_url(self) -> str: ...
    @property
    def audio_url(self) -> str: ...
    @property
    def video_size(self) -> int | None: ...
    @property
    def audio_size(self) -> int | None: ...
    @property
    def video_sha256(self) -> str | None: ...
    @property
    def audio_sha256(self) -> str | None: ...


def loaded_file(
    which: str, uri: str, size: int | None, sha: str | None, digests: Digests
) -> FilePart | str:
    """One of a local job's files, ready to send, or why it cannot be: it must still be the file
    that was loaded (its size, and its SHA-256: from `digests`, which hashes it again when its
    stamp moved, or always when it has no cache: `check`)."""
    path = path_of_uri(uri)
    try:
        st = os.stat(path)
        if st.st_size != size or digests(LocalFile.of(path, st)) != sha:
            return changed(which, path)
        return FilePart(which, path, st.st_size, content_type(path, which), sha)
    except OSError as exc:
        return f"cannot read the {which} file {path}: {exc.strerror or exc}"


def parts_of(job: LoadedJob, digests: Digests) -> tuple[FilePart, FilePart] | str:
    """A local job's two files, ready to send, or why they cannot be (loaded_file). The body
    checks each file's SHA-256 again as it reads it (MultipartBody)."""
    video = loaded_file("video", job.video_url, job.video_size, job.video_sha256, digests)
    if isinstance(video, str):
        return video
    audio = loaded_file("audio", job.audio_url, job.audio_size, job.audio_sha256, digests)
    if isinstance(audio, str):
        return audio
    return video, audio


def _quote(value: str) -> str:
    """A form-data parameter value (a file name), quoted as browsers do (WHATWG)."""
    return value.replace("\\", "\\\\").replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


class MultipartBody:
    """A multipart/form-data body of text fields and files, produced chunk by chunk.

    Its length is known before the first byte (the files' sizes), so it goes with a
    Content-Length, not chunked. `check` is called before each chunk of a file (raising
    UploadInterrupted stops the body); `sent` is told each chunk's size.

    A file with a `sha256` is hashed as it is read, and its last chunk is held back until its
    hash is confirmed: bytes other than those the job was identified by raise FileChanged
    while the body is still short of its end (so the server never has a whole request)."""

    def __init__(
        self,
        fields: list[tuple[str, str]],
        files: list[FilePart],
        *,
        check: Callable[[], None] | None = None,
        sent: Callable[[int], None] | None = None,
        boundary: str | None = None,
    ) -> None:
        self.boundary = boundary or f"dubrunner-{secrets.token_hex(16)}"
        self.fields = fields
        self.files = files
        self.check = check
        self.sent = sent
        self._heads = [self._field_head(name) + value.encode() + b"\r\n" for name, value in fields]
        self._file_heads = [self._file_head(f) for f in files]
        self._tail = f"--{self.boundary}--\r\n".encode()

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    @property
    def length(self) -> int:
        heads = sum(len(h) for h in self._heads) + sum(len(h) for h in self._file_heads)
        return heads + sum(f.size + 2 for f in self.files) + len(self._tail)

    def headers(self) -> dict[str, str]:
        return {"Content-Type": self.content_type, "Content-Length": str(self.length)}

    def _field_head(self, name: str) -> bytes:
        return (
            f'--{self.boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        )

    def _file_head(self, f: FilePart) -> bytes:
        return (
            f"--{self.boundary}\r\n"
            f'Content-Disposition: form-data; name="{f.name}"; filename="{_quote(f.filename)}"\r\n'
            f"Content-Type: {f.content_type}\r\n\r\n"
        ).encode()

    def __iter__(self) -> Iterator[bytes]:
        yield b"".join(self._heads)
        for head, f in zip(self._file_heads, self.files, strict=True):
            yield head
            yield from self._file(f)
            yield b"\r\n"
        yield self._tail

    def _file(self, f: FilePart) -> Iterator[bytes]:
        """A file's bytes, each chunk read and hashed on a helper thread while the one before
        it is being sent (hashing alone, in turn with sending, cost a third of the throughput);
        the last chunk is held back until the whole file's SHA-256 is confirmed."""
        digest = hashlib.sha256() if f.sha256 else None

        def read(stream: BinaryIO, size: int) -> bytes:
            chunk = stream.read(size)
            if digest is not None:
                digest.update(chunk)  # hashlib lets go of the GIL for chunks this size
            return chunk

        held = b""  # the chunk read last: sent once the next one is being read
        left = f.size
        try:
            with (
                open(f.path, "rb") as stream,
                ThreadPoolExecutor(1, thread_name_prefix="upload-read") as ahead,
            ):
                while left > 0:
                    if self.check is not None:
                        self.check()
                    reading = ahead.submit(read, stream, min(CHUNK, left))
                    if held:
                        yield self._sending(held)
                    chunk = reading.result()
                    if not chunk:  # shorter than loaded: changed, if its digest was known
                        if f.sha256:
                            raise FileChanged(changed(f.name, f.path))
                        raise UploadInterrupted(f"the {f.name} file {f.path} became shorter")
                    left -= len(chunk)
                    held = chunk
        except OSError as exc:
            raise UploadInterrupted(f"cannot read the {f.name} file {f.path}: {exc}") from None
        if digest is not None and digest.hexdigest() != f.sha256:
            raise FileChanged(changed(f.name, f.path))
        if self.check is not None:
            self.check()
        if held:
            yield self._sending(held)

    def _sending(self, chunk: bytes) -> bytes:
        if self.sent is not None:
            self.sent(len(chunk))
        return chunk
