"""The output files on disk: one name per job, a partial file owned by one process, and the
sidecar that says which file a partial one is part of."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from io import FileIO
from pathlib import Path
from typing import BinaryIO

from dubrunner.records import FetchTarget

EXTENSIONS = {".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi"}
# Names keep these characters only; the rest is replaced (and the name then suffixed).
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_LEADING_DOT = re.compile(r"^\.")
# Leaves room for "~" + 12 hex digits, an extension and ".part.json" in a 255-byte file name.
MAX_NAME = 180


class DownloadFailed(Exception):
    """This output cannot be had now; the reason is said in the message."""


def unwritable(folder: Path) -> str | None:
    """Why files cannot be written into `folder` (created if missing), proved by writing one;
    None when they can."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".dubrunner-probe-") as probe:
            probe.write(b"\0")
            probe.flush()
    except OSError as exc:
        return f"cannot write into the folder {folder}: {exc.strerror or exc}"
    return None


class LocalWriteFailed(DownloadFailed):
    """A file could not be written here (disk full, permissions): not the job's fault."""


class Busy(Exception):
    """Another download holds this job's files."""


def safe_name(text: str) -> str:
    """A file (or directory) name for an id, distinct for distinct ids, also where the file
    system ignores case (macOS, Windows): two jobs never share an output.

    An id of lower-case letters, digits and . _ - that neither starts nor ends with a dot
    (Windows drops a trailing one, so `b.` would be the directory `b`) and is at most MAX_NAME
    long is its own name, so names stay readable. Any other id has the other characters
    replaced and gets `~` plus 12 hex digits of its SHA-256. `~` is never in an unsuffixed name,
    so a suffixed name cannot equal an unsuffixed one, and two suffixed names differ by the hash.
    """
    name = _UNSAFE.sub("_", text)
    plain = name == text and name == name.lower() and 0 < len(name) <= MAX_NAME
    if plain and not name.startswith(".") and not name.endswith("."):
        return name
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    # No leading dot: a hidden file would look lost. The hash keeps the name apart anyway.
    return f"{_LEADING_DOT.sub('_', name[:MAX_NAME])}~{digest}"


def sha256_of(path: Path) -> str:
    with path.open("rb") as f:
        return sha256_of_file(f)


def sha256_of_file(f: BinaryIO) -> str:
    """The SHA-256 of an open file, from its start (whatever its name is by now)."""
    digest = hashlib.sha256()
    f.seek(0)
    while chunk := f.read(1024 * 1024):
        digest.update(chunk)
    return digest.hexdigest()


@dataclass
class PartInfo:
    """What a part was started from, kept beside it (`<part>.json`) so that a resume continues
    only the same file: the output URL's path (never its query, which holds the signature), the
    final extension, the total length and the validators."""

    url_path: str
    ext: str
    total: int | None = None
    etag: str | None = None
    last_modified: str | None = None

    @classmethod
    def load(cls, path: Path) -> PartInfo | None:
        try:
            info = cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None
        fields_ok = (
            isinstance(info.url_path, str)
            and info.ext in EXTENSIONS
            and (info.total is None or (type(info.total) is int and info.total >= 0))
            and all(v is None or isinstance(v, str) for v in (info.etag, info.last_modified))
        )
        return info if fields_ok else None

    def save(self, path: Path) -> None:
        # Not fsynced: a sidecar lost or torn in a crash only means starting that file over.
        path.write_text(json.dumps(asdict(self)))


def sidecar(part: Path) -> Path:
    return part.with_name(part.name + ".json")


@contextmanager
def owned_part(part: Path) -> Iterator[FileIO]:
    """The job's partial file, opened and locked (flock, exclusive, not waiting) for the whole
    download: one process and one thread write it. A part left empty is removed at the end."""
    try:
        part.parent.mkdir(parents=True, exist_ok=True)
        f = _open_locked(part)
    except OSError as exc:
        raise LocalWriteFailed(f"cannot write {part}: {exc.strerror}") from None
    try:
        yield f
    finally:
        try:
            if os.fstat(f.fileno()).st_size == 0 and is_at(part, f):
                part.unlink()
        except OSError:
            pass
        f.close()


def _open_locked(part: Path) -> FileIO:
    for _ in range(3):
        f = open(part, "ab", buffering=0)  # noqa: SIM115 - handed to the caller, locked
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise Busy("another dubrunner process is downloading it") from None
        except OSError:
            f.close()
            raise
        if is_at(part, f):
            return f
        # Its holder renamed it into place between our open and our lock: what we hold is no
        # longer the part. Open the name again.
        f.close()
    raise Busy("its partial file keeps being replaced")


def is_at(path: Path, f: BinaryIO | FileIO) -> bool:
    """Whether `path` still names the file open as `f`."""
    try:
        return os.path.samestat(os.stat(path), os.fstat(f.fileno()))
    except FileNotFoundError:
        return False


def lock_if_present(final: Path) -> BinaryIO | None:
    try:
        f = open(final, "rb")  # noqa: SIM115 - handed to the caller, locked
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DownloadFailed(f"cannot read {final}: {exc.strerror}") from None
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise Busy("another dubrunner process is finishing it") from None
    except OSError as exc:
        f.close()
        raise DownloadFailed(f"cannot lock {final}: {exc.strerror}") from None
    return f


def write_all(f: FileIO, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[f.write(view) or 0 :]


def mtime_ns(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def vouched(target: FetchTarget, folder: Path, verify: bool = False) -> bool:
    """The row says this job's output was downloaded to a file that is there, in `folder` (the
    --out asked for now: a fetch into another folder downloads again), named for this job alone,
    of the size and SHA-256 the row recorded. The file is hashed again when it changed since it
    was recorded (its modification time), or always with `verify`."""
    if target.download_state != "downloaded" or not target.local_path or not target.sha256:
        return False
    local = Path(target.local_path)
    try:
        if local.resolve().parent != folder.resolve():
            return False
        stat = local.stat()
        if not (named_for(target, local) and stat.st_size == target.size_bytes):
            return False
        if not verify and stat.st_mtime_ns == target.local_mtime_ns:
            return True
        return sha256_of(local) == target.sha256
    except OSError:
        return False


def named_for(target: FetchTarget, path: Path) -> bool:
    """Whether a file's name is the one this job's output gets (in any output directory).
    Older versions gave several jobs one name; such a file may hold another job's video."""
    return (
        path.suffix in EXTENSIONS
        and path.name == safe_name(target.reference_id) + path.suffix
        and path.parent.name == safe_name(target.batch)
    )
