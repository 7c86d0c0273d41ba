"""Download each completed job's output: streamed to a .part file, resumed with Range after an
interruption, renamed into place when complete (so a file at its final name is always whole),
skipped when already there. API credentials are never sent to the output's host."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
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
        dest = self.destination(target)
        started = time.monotonic()
        try:
            if dest.is_file():
                # Renamed into place only when whole: a crash before the commit left it so.
                size, digest = dest.stat().st_size, sha256_of(dest)
            else:
                dest, size, digest = self._download(target, dest)
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
            return
        self.store.record_download(
            target.id,
            AttemptRecord("download", "downloaded", 200, None, _ms(started)),
            self.owner,
            download_state="downloaded",
            download_error=None,
            local_path=str(dest),
            size_bytes=size,
            sha256=digest,
        )
        self._add("downloaded")

    def _download(self, target: FetchTarget, dest: Path) -> tuple[Path, int, str]:
        last = "no attempt"
        for attempt in range(TRIES):
            if self.stop.is_set():
                raise DownloadFailed("interrupted")
            try:
                return self._stream(target, dest)
            except _Retryable as exc:
                last = str(exc)
                self.stop.wait(0.5 * 2**attempt)
        raise DownloadFailed(f"gave up after {TRIES} tries: {last}")

    def _stream(self, target: FetchTarget, dest: Path) -> tuple[Path, int, str]:
        part = dest.with_name(dest.name + ".part")
        have = part.stat().st_size if part.is_file() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            with self._client.stream("GET", target.output_url, headers=headers) as resp:
                if resp.status_code == 416 and have:
                    part.unlink()  # our partial file does not fit the server's: start over
                    raise _Retryable("the partial download did not match; starting over")
                if resp.status_code in (408, 429) or resp.status_code >= 500:
                    raise _Retryable(f"HTTP {resp.status_code}")
                if resp.status_code not in (200, 206):
                    raise DownloadFailed(f"HTTP {resp.status_code} for the output URL")
                append = resp.status_code == 206 and have > 0
                if append:
                    self._add("resumed")
                expected = resp.headers.get("content-length")
                part.parent.mkdir(parents=True, exist_ok=True)
                written = 0
                with part.open("ab" if append else "wb") as f:
                    for chunk in resp.iter_bytes(CHUNK):
                        if self.stop.is_set():
                            raise DownloadFailed("interrupted")
                        f.write(chunk)
                        written += len(chunk)
                        self._add("bytes", len(chunk))
                    f.flush()
                    os.fsync(f.fileno())
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise DownloadFailed("the disk is full") from None
            raise DownloadFailed(f"cannot write {part}: {exc.strerror}") from None
        except (httpx.TransportError, httpx.StreamError) as exc:
            raise _Retryable(f"{type(exc).__name__}: {exc}") from None
        if expected is not None and written != int(expected):
            raise _Retryable(f"got {written} of {expected} bytes")
        if dest.suffix == ".mp4" and not Path(urlsplit(target.output_url).path).suffix:
            better = self.destination(target, resp.headers.get("content-type"))
            dest = better if better != dest else dest
        size = part.stat().st_size
        digest = sha256_of(part)
        os.replace(part, dest)
        return dest, size, digest


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
