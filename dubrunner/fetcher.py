"""Download each completed job's output: streamed to a .part file, resumed with Range after an
interruption, renamed into place when complete (so a file at its final name is always whole),
skipped when already there. API credentials are never sent to the output's host.

Every job has names of its own (safe_name), and its .part is locked by the one process and thread
writing it. A resume continues a part only with the bytes it asked for, of the file it started
(checked against the part's sidecar); anything else starts the file over."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from io import FileIO
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

import httpx

from dubrunner import __version__
from dubrunner.records import AttemptRecord, FetchTarget
from dubrunner.redact import scrub
from dubrunner.running import Report, Run
from dubrunner.store import Store

log = logging.getLogger("dubrunner")
PAGE = 500
TRIES = 3
_EXTENSIONS = {".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi"}
_TYPES = {"video/mp4": ".mp4", "video/quicktime": ".mov", "video/webm": ".webm"}
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)", re.IGNORECASE)
# Names keep these characters only; the rest is replaced (and the name then suffixed).
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_LEADING_DOT = re.compile(r"^\.")
# Leaves room for "~" + 12 hex digits, an extension and ".part.json" in a 255-byte file name.
MAX_NAME = 180


@dataclass
class FetchReport(Report):
    downloaded: int = 0
    skipped: int = 0
    failed: int = 0
    resumed: int = 0
    restarted: int = 0  # partial files dropped because the server's answer did not continue them
    busy: int = 0  # left to another process downloading them: neither done nor failed
    bytes: int = 0


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


class Fetcher(Run):
    report: FetchReport

    def __init__(
        self,
        store: Store,
        out_dir: Path,
        batch: str | None,
        concurrency: int = 4,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__()
        self.store = store
        self.out_dir = out_dir
        self.batch = batch
        self.concurrency = concurrency
        self.report = FetchReport()
        self._in_use: set[str] = set()  # parts this process is writing, under _lock
        # A plain client: output URLs are pre-signed and must never see the API's credentials.
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            follow_redirects=True,
            headers={"user-agent": f"dubrunner/{__version__}"},
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
            transport=transport,
        )

    def run(self, tick: Callable[[], None] | None = None) -> FetchReport:
        self.store.start_group_commit()
        self.ticking(self._all, tick)
        self._client.close()
        return self.report

    def _all(self) -> None:
        after = 0
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="fetch") as pool:
            while not self.stop.is_set():
                page = self.store.fetch_targets(self.batch, after, PAGE)
                if not page:
                    return
                after = page[-1].id
                list(pool.map(self._fetch_one, page))

    def destination(self, target: FetchTarget, content_type: str | None = None) -> Path:
        ext = extension_for(target.output_url, content_type)
        return self.out_dir / safe_name(target.batch) / f"{safe_name(target.reference_id)}{ext}"

    def _fetch_one(self, target: FetchTarget) -> None:
        if self.stop.is_set():
            return
        if _vouched(target):
            self.add("skipped")
            return
        # The part is named for this job alone (its extension is the URL's, or .mp4); the final
        # name differs from it at most by an extension chosen from the first answer.
        dest = self.destination(target)
        part = dest.with_name(dest.name + ".part")
        key = os.path.abspath(part)
        with self._lock:
            taken = key in self._in_use
            if not taken:
                self._in_use.add(key)
        if taken:  # cannot happen with one name per job; never let two threads share a part
            self._busy(target, "another download in this run is writing it")
            return
        started = time.monotonic()
        try:
            with _owned_part(part) as f:
                got = self._obtain(target, dest, part, f)
                if got is None:
                    self.add("skipped")
                    return
                final, size, digest = got
                # Recorded before the part's lock is let go: a process that finds the file
                # unlocked finds the row too.
                self.store.mark_downloaded(
                    target.id,
                    self.owner,
                    AttemptRecord("download", "downloaded", 200, None, _ms(started)),
                    str(final),
                    size,
                    digest,
                )
                self.add("downloaded")
        except _Busy as exc:
            self._busy(target, str(exc))
        except DownloadFailed as exc:
            reason = scrub(str(exc))
            self.store.mark_download_failed(
                target.id,
                self.owner,
                AttemptRecord("download", "failed", None, reason, _ms(started)),
                reason,
            )
            self.add("failed")
            log.info("%s: download failed: %s", target.reference_id, reason)
        finally:
            with self._lock:
                self._in_use.discard(key)

    def _busy(self, target: FetchTarget, reason: str) -> None:
        """Left to whoever holds it: not failed, not downloaded; a later fetch looks again."""
        self.add("busy")
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
        tries = 0
        while True:
            if self.stop.is_set():
                raise DownloadFailed("interrupted")
            try:
                return self._stream(target, dest, part, f, present)
            except _Restart as exc:
                # Not an error, and no try used: the next request asks for the whole file, so a
                # restart only comes again after a cut, and cuts use up tries.
                self.add("restarted")
                log.info("%s: starting the download over: %s", target.reference_id, exc)
                # Emptied, not removed: a removed part could be created again by another
                # process while this one still holds the lock on the old one.
                f.truncate(0)
                _sidecar(part).unlink(missing_ok=True)
            except _Retryable as exc:
                last = str(exc)
                tries += 1
                if tries >= TRIES:
                    raise DownloadFailed(f"gave up after {TRIES} tries: {last}") from None
                self.stop.wait(0.5 * 2 ** (tries - 1))

    def _stream(
        self, target: FetchTarget, dest: Path, part: Path, f: FileIO, present: list[Path]
    ) -> tuple[Path, int, str]:
        sidecar = _sidecar(part)
        url_path = urlsplit(target.output_url).path
        have = os.fstat(f.fileno()).st_size
        info = _PartInfo.load(sidecar) if have else None
        if have and (info is None or info.url_path != url_path):
            # Bytes of unknown origin (an older version named parts of several jobs alike) or
            # of another output of this job (polled again since): never continue them.
            raise _Restart("the partial file is not known to come from this output")
        # Byte offsets must count the bytes stored, so no transfer encoding of the body.
        headers = {"Accept-Encoding": "identity"}
        if have and info is not None:
            headers["Range"] = f"bytes={have}-"
            # If-Range takes a strong ETag only; otherwise the date.
            strong = info.etag if info.etag and not info.etag.startswith("W/") else None
            validator = strong or info.last_modified
            if validator:
                headers["If-Range"] = validator
        try:
            with self._client.stream("GET", target.output_url, headers=headers) as resp:
                status = resp.status_code
                if status == 416 and have:
                    raise _Restart(f"the server cannot resume at byte {have}")
                if status in (408, 429) or status >= 500:
                    raise _Retryable(f"HTTP {status}")
                if status not in (200, 206):
                    raise DownloadFailed(f"HTTP {status} for the output URL")
                content_type = resp.headers.get("content-type")
                if status == 206:
                    total: int | None = _continued_total(resp, have, info)
                    if have:
                        self.add("resumed")
                else:
                    if have:
                        # The whole file again (no ranges there, or If-Range found a change).
                        self.add("restarted")
                        log.info("%s: the server sent the whole file again", target.reference_id)
                        f.truncate(0)
                        have, info = 0, None
                    total = _length(resp.headers.get("content-length"))
                # The final name is fixed by the answer that starts the file, before a byte is
                # written, and kept by every resume.
                ext = (
                    info.ext if info is not None else extension_for(target.output_url, content_type)
                )
                final = dest.with_name(safe_name(target.reference_id) + ext)
                if have == 0:
                    if status == 200 and final in present and total == final.stat().st_size:
                        # A whole file the row was never told about: this job's own output
                        # renamed into place just before a crash (no other job has this name).
                        # The server vouches for its length; anything else is downloaded again.
                        return final, total, sha256_of(final)
                    _PartInfo(
                        url_path,
                        ext,
                        total,
                        resp.headers.get("etag"),
                        resp.headers.get("last-modified"),
                    ).save(sidecar)
                # Each piece is written as it arrives: a cut keeps every byte received.
                for chunk in resp.iter_bytes():
                    if self.stop.is_set():
                        raise DownloadFailed("interrupted")
                    _write_all(f, chunk)
                    self.add("bytes", len(chunk))
                os.fsync(f.fileno())
                size = os.fstat(f.fileno()).st_size
                if total is not None and size != total:
                    raise _Retryable(f"got {size} of {total} bytes")
                sidecar.unlink(missing_ok=True)
                os.replace(part, final)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise DownloadFailed("the disk is full") from None
            raise DownloadFailed(f"cannot write {part}: {exc.strerror}") from None
        except (httpx.TransportError, httpx.StreamError) as exc:
            raise _Retryable(f"{type(exc).__name__}: {exc}") from None
        return final, size, sha256_of(final)


class _Restart(Exception):
    """The bytes kept do not belong with what the server sends: start the file over."""


@dataclass
class _PartInfo:
    """What a part was started from, kept beside it (`<part>.json`) so that a resume continues
    only the same file: the output URL's path (never its query, which holds the signature), the
    final extension, the total length and the validators."""

    url_path: str
    ext: str
    total: int | None = None
    etag: str | None = None
    last_modified: str | None = None

    @classmethod
    def load(cls, path: Path) -> _PartInfo | None:
        try:
            info = cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None
        fields_ok = (
            isinstance(info.url_path, str)
            and info.ext in _EXTENSIONS
            and (info.total is None or (type(info.total) is int and info.total >= 0))
            and all(v is None or isinstance(v, str) for v in (info.etag, info.last_modified))
        )
        return info if fields_ok else None

    def save(self, path: Path) -> None:
        # Not fsynced: a sidecar lost or torn in a crash only means starting that file over.
        path.write_text(json.dumps(asdict(self)))


def _sidecar(part: Path) -> Path:
    return part.with_name(part.name + ".json")


def _continued_total(resp: httpx.Response, have: int, info: _PartInfo | None) -> int:
    """The file's length from a 206, which must run from byte `have` to the end of the file this
    part was started from; anything else would splice two different byte ranges or files."""
    found = _CONTENT_RANGE.fullmatch(resp.headers.get("content-range", "").strip())
    problem = None
    total = 0
    if found is None:
        problem = "an unreadable Content-Range"
    else:
        first, last, total = (int(g) for g in found.groups())
        length = _length(resp.headers.get("content-length"))
        if first != have or last != total - 1:
            problem = f"bytes {first}-{last}/{total} for a request from byte {have}"
        elif info is not None and info.total is not None and total != info.total:
            problem = f"a file of {total} bytes, not the {info.total} it started with"
        elif length is not None and length != total - have:
            problem = f"{length} bytes for bytes {first}-{last}"
        elif info is not None and _changed(info, resp):
            problem = "another version of the file"
    if problem is None:
        return total
    if have:
        raise _Restart(f"the server resumed with {problem}")
    raise _Retryable(f"a partial answer to a request for the whole file: {problem}")


def _changed(info: _PartInfo, resp: httpx.Response) -> bool:
    """Whether the answer names a different version than the one the part was started from."""
    for kept, header in ((info.etag, "etag"), (info.last_modified, "last-modified")):
        sent = resp.headers.get(header)
        if kept is not None and sent is not None and sent != kept:
            return True
    return False


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
