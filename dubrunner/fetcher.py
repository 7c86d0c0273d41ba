"""Download each completed job's output: streamed to a .part file, resumed with Range after an
interruption, renamed into place when complete (so a file at its final name is always whole),
skipped when already there. API credentials are never sent to the output's host."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from io import FileIO
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

import httpx

from dubrunner import __version__
from dubrunner.redact import scrub
from dubrunner.store import AttemptRecord, FetchTarget, Store, StoreError
from dubrunner.worker import run_ticking, worker_id

log = logging.getLogger("dubrunner")
PAGE = 500
CHUNK = 256 * 1024
TRIES = 3
_EXTENSIONS = {".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi"}
_TYPES = {"video/mp4": ".mp4", "video/quicktime": ".mov", "video/webm": ".webm"}
# Names keep these characters only; the rest is replaced (and the name then suffixed).
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_LEADING_DOT = re.compile(r"^\.")
# Leaves room for "~" + 12 hex digits, an extension and ".part.json" in a 255-byte file name.
MAX_NAME = 180


@dataclass
class FetchReport:
    downloaded: int = 0
    skipped: int = 0
    failed: int = 0
    resumed: int = 0
    busy: int = 0  # left to another process downloading them: neither done nor failed
    bytes: int = 0
    fatal: str | None = None
    interrupted: bool = False


class DownloadFailed(Exception):
    """This output cannot be had now; the reason is said in the message."""


class _Retryable(Exception):
    pass


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


def extension_for(url: str, content_type: str | None = None) -> str:
    suffix = Path(urlsplit(url).path).suffix.lower()
    if suffix in _EXTENSIONS:
        return suffix
    if content_type:
        return _TYPES.get(content_type.split(";")[0].strip().lower(), ".mp4")
    return ".mp4"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


class Fetcher:
    def __init__(
        self,
        store: Store,
        out_dir: Path,
        batch: str | None,
        concurrency: int = 4,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.store = store
        self.out_dir = out_dir
        self.batch = batch
        self.concurrency = concurrency
        self.owner = worker_id()
        self.stop = threading.Event()
        self.report = FetchReport()
        self._lock = threading.Lock()
        self._in_use: set[str] = set()  # parts this process is writing, under _lock
        # A plain client: output URLs are pre-signed and must never see the API's credentials.
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            follow_redirects=True,
            headers={"user-agent": f"dubrunner/{__version__}"},
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
            transport=transport,
        )

    def request_stop(self) -> None:
        self.report.interrupted = True
        self.stop.set()

    def _add(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self.report, name, getattr(self.report, name) + n)

    def run(self, tick: Callable[[], None] | None = None) -> FetchReport:
        self.store.start_group_commit()
        run_ticking(self._all, tick)
        self._client.close()
        return self.report

    def _all(self) -> None:
        after = 0
        try:
            with ThreadPoolExecutor(self.concurrency, thread_name_prefix="fetch") as pool:
                while not self.stop.is_set():
                    page = self.store.fetch_targets(self.batch, after, PAGE)
                    if not page:
                        return
                    after = page[-1].id
                    list(pool.map(self._fetch_one, page))
        except StoreError as exc:
            self.report.fatal = f"the database failed: {exc}"
        except Exception as exc:  # a bug: say so, stop safely
            log.exception("unexpected error while fetching")
            self.report.fatal = f"internal error: {type(exc).__name__}: {scrub(str(exc))}"

    def destination(self, target: FetchTarget, content_type: str | None = None) -> Path:
        ext = extension_for(target.output_url, content_type)
        return self.out_dir / safe_name(target.batch) / f"{safe_name(target.reference_id)}{ext}"

    def _fetch_one(self, target: FetchTarget) -> None:
        if self.stop.is_set():
            return
        if _vouched(target):
            self._add("skipped")
            return
        # The part is named for this job alone (its extension is the URL's, or .mp4); the final
        # name differs from it at most by an extension chosen from the first answer.
        dest = self.destination(target)
        part = dest.with_name(dest.name + ".part")
        key = os.path.abspath(part)
        with self._lock:
            taken = key in self._in_use
            self._in_use.add(key)
        if taken:  # cannot happen with one name per job; never let two threads share a part
            self._busy(target, "another download in this run is writing it")
            return
        started = time.monotonic()
        try:
            with _owned_part(part) as f:
                got = self._obtain(target, dest, part, f)
                if got is None:
                    self._add("skipped")
                    return
                final, size, digest = got
                # Recorded before the part's lock is let go: a process that finds the file
                # unlocked finds the row too.
                self.store.record_download(
                    target.id,
                    AttemptRecord("download", "downloaded", 200, None, _ms(started)),
                    self.owner,
                    download_state="downloaded",
                    download_error=None,
                    local_path=str(final),
                    size_bytes=size,
                    sha256=digest,
                )
                self._add("downloaded")
        except _Busy as exc:
            self._busy(target, str(exc))
        except DownloadFailed as exc:
            reason = scrub(str(exc))
            self.store.record_download(
                target.id,
                AttemptRecord("download", "failed", None, reason, _ms(started)),
                self.owner,
                download_state="failed",
                download_error=reason,
            )
            self._add("failed")
            log.info("%s: download failed: %s", target.reference_id, reason)
        finally:
            with self._lock:
                self._in_use.discard(key)

    def _busy(self, target: FetchTarget, reason: str) -> None:
        """Left to whoever holds it: not failed, not downloaded; a later fetch looks again."""
        self._add("busy")
        log.warning("%s: left alone this run: %s", target.reference_id, reason)

    def _obtain(
        self, target: FetchTarget, dest: Path, part: Path, f: FileIO
    ) -> tuple[Path, int, str] | None:
        """With the part locked: the job's output as (file, size, sha256), or None when the row
        (read again now) says it is already there."""
        with ExitStack() as held:
            present = []
            for final in _final_names(target, dest):
                # A holder renames its part into place and records the row before letting go of
                # the lock, which then sits on the final file: wait for neither, skip the job.
                found = _lock_if_present(final)
                if found is not None:
                    held.enter_context(found)
                    present.append(final)
            fresh = self._reread(target)
            if fresh is None or _vouched(fresh):
                return None
            return self._download(target, dest, part, f, present)

    def _reread(self, target: FetchTarget) -> FetchTarget | None:
        """The row as it is now (another process may have downloaded it since our page was
        read); None when it is no longer an output to fetch."""
        rows = self.store.fetch_targets(target.batch, target.id - 1, 1)
        return rows[0] if rows and rows[0].id == target.id else None

    def _download(
        self, target: FetchTarget, dest: Path, part: Path, f: FileIO, present: list[Path]
    ) -> tuple[Path, int, str]:
        last = "no attempt"
        for attempt in range(TRIES):
            if self.stop.is_set():
                raise DownloadFailed("interrupted")
            try:
                return self._stream(target, dest, part, f, present)
            except _Retryable as exc:
                last = str(exc)
                if attempt + 1 < TRIES:
                    self.stop.wait(0.5 * 2**attempt)
        raise DownloadFailed(f"gave up after {TRIES} tries: {last}")

    def _stream(
        self, target: FetchTarget, dest: Path, part: Path, f: FileIO, present: list[Path]
    ) -> tuple[Path, int, str]:
        have = os.fstat(f.fileno()).st_size
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            with self._client.stream("GET", target.output_url, headers=headers) as resp:
                if resp.status_code == 416 and have:
                    f.truncate(0)  # our partial file does not fit the server's: start over
                    raise _Retryable("the partial download did not match; starting over")
                if resp.status_code in (408, 429) or resp.status_code >= 500:
                    raise _Retryable(f"HTTP {resp.status_code}")
                if resp.status_code not in (200, 206):
                    raise DownloadFailed(f"HTTP {resp.status_code} for the output URL")
                append = resp.status_code == 206 and have > 0
                if append:
                    self._add("resumed")
                else:
                    f.truncate(0)
                    have = 0
                expected = _length(resp.headers.get("content-length"))
                # The final name is fixed here, before a byte is written, and never changes.
                final = self.destination(target, resp.headers.get("content-type"))
                if (
                    not append
                    and final in present
                    and expected is not None
                    and final.stat().st_size == expected
                ):
                    # A whole file the row was never told about: this job's own output renamed
                    # into place just before a crash (no other job has this name). The server
                    # vouches for its length; anything else is downloaded again and replaced.
                    return final, expected, sha256_of(final)
                for chunk in resp.iter_bytes(CHUNK):
                    if self.stop.is_set():
                        raise DownloadFailed("interrupted")
                    _write_all(f, chunk)
                    self._add("bytes", len(chunk))
                os.fsync(f.fileno())
                size = os.fstat(f.fileno()).st_size
                if expected is not None and size - have != expected:
                    raise _Retryable(f"got {size - have} of {expected} bytes")
                os.replace(part, final)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise DownloadFailed("the disk is full") from None
            raise DownloadFailed(f"cannot write {part}: {exc.strerror}") from None
        except (httpx.TransportError, httpx.StreamError) as exc:
            raise _Retryable(f"{type(exc).__name__}: {exc}") from None
        return final, size, sha256_of(final)


class _Busy(Exception):
    """Another download holds this job's files."""


@contextmanager
def _owned_part(part: Path) -> Iterator[FileIO]:
    """The job's partial file, opened and locked (flock, exclusive, not waiting) for the whole
    download: one process and one thread write it. A part left empty is removed at the end."""
    try:
        part.parent.mkdir(parents=True, exist_ok=True)
        f = _open_locked(part)
    except OSError as exc:
        raise DownloadFailed(f"cannot write {part}: {exc.strerror}") from None
    try:
        yield f
    finally:
        try:
            if os.fstat(f.fileno()).st_size == 0 and _is_at(part, f):
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
            raise _Busy("another dubrunner process is downloading it") from None
        except OSError:
            f.close()
            raise
        if _is_at(part, f):
            return f
        # Its holder renamed it into place between our open and our lock: what we hold is no
        # longer the part. Open the name again.
        f.close()
    raise _Busy("its partial file keeps being replaced")


def _is_at(path: Path, f: FileIO) -> bool:
    """Whether `path` still names the file open as `f`."""
    try:
        return os.path.samestat(os.stat(path), os.fstat(f.fileno()))
    except FileNotFoundError:
        return False


def _lock_if_present(final: Path) -> BinaryIO | None:
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
        raise _Busy("another dubrunner process is finishing it") from None
    except OSError as exc:
        f.close()
        raise DownloadFailed(f"cannot lock {final}: {exc.strerror}") from None
    return f


def _final_names(target: FetchTarget, dest: Path) -> list[Path]:
    """Every name this job's output can have: the URL's extension, or one per content type."""
    if Path(urlsplit(target.output_url).path).suffix.lower() in _EXTENSIONS:
        return [dest]
    stem = safe_name(target.reference_id)
    return [dest.with_name(stem + ext) for ext in sorted({".mp4", *_TYPES.values()})]


def _write_all(f: FileIO, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[f.write(view) or 0 :]


def _length(value: str | None) -> int | None:
    try:
        return int(value) if value is not None and value.strip().isdigit() else None
    except ValueError:
        return None


def _named_for(target: FetchTarget, path: Path) -> bool:
    """Whether a file's name is the one this job's output gets (in any output directory).
    Older versions gave several jobs one name; such a file may hold another job's video."""
    return (
        path.suffix in _EXTENSIONS
        and path.name == safe_name(target.reference_id) + path.suffix
        and path.parent.name == safe_name(target.batch)
    )


def _vouched(target: FetchTarget) -> bool:
    """The row says this job's output was downloaded to a file that is there, whole, and named
    for this job alone."""
    if target.download_state != "downloaded" or not target.local_path:
        return False
    local = Path(target.local_path)
    try:
        return _named_for(target, local) and local.stat().st_size == target.size_bytes
    except OSError:
        return False


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
