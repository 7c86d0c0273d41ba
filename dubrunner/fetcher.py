"""Download each completed job's output: streamed to a .part file, resumed with Range after an
interruption, renamed into place when complete (so a file at its final name is always whole),
skipped when already there. API credentials are never sent to the output's host.

Every job has names of its own (safe_name), and its .part is locked by the one process and thread
writing it. A resume continues a part only with the bytes it asked for, of the file it started
(checked against the part's sidecar); anything else starts the file over."""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, replace
from datetime import timedelta
from io import FileIO
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from dubrunner import __version__
from dubrunner.api import ApiClient
from dubrunner.errors import (
    Action,
    ResponseTooLarge,
    classify_answer,
    classify_exception,
    is_not_found,
    parse_json,
)
from dubrunner.forgotten import ADVICE as FORGOTTEN_ADVICE
from dubrunner.forgotten import ApiMemory
from dubrunner.governor import Governor, Stopped
from dubrunner.outanswer import (
    Restart,
    Retryable,
    bare,
    continued_total,
    header_length,
    is_a_page,
    starts_like_text,
)
from dubrunner.outfiles import (
    EXTENSIONS,
    Busy,
    DownloadFailed,
    LocalWriteFailed,
    PartInfo,
    is_at,
    lock_if_present,
    mtime_ns,
    owned_part,
    safe_name,
    sha256_of,
    sha256_of_file,
    sidecar,
    vouched,
    write_all,
)
from dubrunner.poller import interpret
from dubrunner.records import AttemptRecord, FetchTarget, utcnow
from dubrunner.redact import is_http_url, scrub
from dubrunner.running import Report, Run
from dubrunner.storage import STORAGE_ADVICE, STORAGE_ADVICE_NO_API, StorageHealth
from dubrunner.store import Store

log = logging.getLogger("dubrunner")
PAGE = 500
TRIES = 3
REFRESHES = 2  # fresh output URLs asked of the API per download
# An output URL recorded longer ago than this is asked for afresh before downloading: the API's
# URLs are signed and time-limited (for how long is not documented).
STALE_AFTER = timedelta(minutes=10)
BUSY_RECHECK = 0.5  # seconds between looks at outputs another process is downloading
# ... waited for while its files change; this long without a change, it is taken as stuck
# (a live download writes, or times out and lets go, well within it).
BUSY_STALL = 90.0
_EXPIRED = frozenset({401, 403, 404, 410})  # a storage host's answers to an expired signature
_TYPES = {"video/mp4": ".mp4", "video/quicktime": ".mov", "video/webm": ".webm"}


@dataclass
class FetchReport(Report):
    downloaded: int = 0
    skipped: int = 0
    failed: int = 0
    resumed: int = 0
    restarted: int = 0  # partial files dropped because the server's answer did not continue them
    busy: int = 0  # left to another process downloading them: neither done nor failed
    busy_stalled: tuple[str, ...] = ()  # ... whose holder wrote nothing for BUSY_STALL seconds
    refreshed: int = 0  # fresh output URLs the API gave (the ones kept had expired or aged)
    bytes: int = 0


class _StorageFailed(DownloadFailed):
    """The storage host refused the output, or could not be reached, to the last try."""


class _Unknown(DownloadFailed):
    """The API does not know the job's request, and its stored output URL failed too."""


class _Expired(Exception):
    """The storage host refused the output URL (its signature expired, most likely)."""


def extension_for(url: str, content_type: str | None = None) -> str:
    suffix = Path(urlsplit(url).path).suffix.lower()
    if suffix in EXTENSIONS:
        return suffix
    if content_type:
        return _TYPES.get(content_type.split(";")[0].strip().lower(), ".mp4")
    return ".mp4"


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
        api: ApiClient | None = None,
        governor: Governor | None = None,
        verify: bool = False,
        busy_stall: float | None = None,
    ) -> None:
        super().__init__()
        self.busy_stall = BUSY_STALL if busy_stall is None else busy_stall
        self.verify = verify  # hash every file already there, changed or not
        self.api = api  # to ask for fresh output URLs; without it, the recorded ones are used
        self.governor = governor or Governor(None, concurrency)
        self.store = store
        self.out_dir = out_dir
        self.batch = batch
        self.concurrency = concurrency
        self.report = FetchReport()
        self._in_use: set[str] = set()  # parts this process is writing, under _lock
        self._busy_targets: list[FetchTarget] = []  # left to another process, under _lock
        self._waited_for: set[int] = set()  # jobs said to be waited for, under _lock
        self.storage = StorageHealth(self._failed)
        self.memory = ApiMemory(self._failed)  # whether the API knows the requests asked of it
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
                    break
                after = page[-1].id
                list(pool.map(self._fetch_one, page))
            self._wait_for_others(pool)
        if self.storage.down is None:
            stop = self.storage.settle()
            if stop is not None:
                self._storage_down(stop)
        if self.storage.down is not None:
            self.memory.drop()
        elif self.api is not None:
            forgotten = self.memory.settle(self.api.base_url)
            if forgotten is not None:
                self.halt(forgotten, FORGOTTEN_ADVICE)

    def _wait_for_others(self, pool: ThreadPoolExecutor) -> None:
        """Outputs another process is downloading are waited for: skipped once there, taken
        over if it lets go without them, left when its files stop changing. A run that ends
        well has every output (found by an outside attack: coordinators fetching at once all
        exited 1, every file there)."""
        signs: dict[int, tuple[int, int] | None] = {}
        changed = time.monotonic()
        while self._busy_targets and not self.stop.wait(BUSY_RECHECK):
            with self._lock:
                again = self._busy_targets
                now = {t.id: self._written(t) for t in again}
                if now != signs:
                    signs, changed = now, time.monotonic()
                elif time.monotonic() - changed > self.busy_stall:
                    self.report.busy_stalled = tuple(sorted(t.reference_id for t in again))
                    return
                self._busy_targets = []
                self.report.busy -= len(again)
            list(pool.map(self._fetch_one, again))

    def _written(self, target: FetchTarget) -> tuple[int, int] | None:
        """The size and time of the job's partial file as another process writes it."""
        dest = self.destination(target)
        try:
            st = os.stat(dest.with_name(dest.name + ".part"))
        except OSError:
            return None
        return st.st_size, st.st_mtime_ns

    def destination(self, target: FetchTarget, content_type: str | None = None) -> Path:
        ext = extension_for(target.output_url, content_type)
        return self.out_dir / safe_name(target.batch) / f"{safe_name(target.reference_id)}{ext}"

    def _folder(self, target: FetchTarget) -> Path:
        return self.out_dir / safe_name(target.batch)

    def _fetch_one(self, target: FetchTarget) -> None:
        if self.stop.is_set():
            return
        if vouched(target, self._folder(target), self.verify):
            self.add("skipped")
            return
        if not is_http_url(target.output_url):
            reason = "the API's output_url is not a valid http(s) URL"
            attempt = AttemptRecord("download", "failed", None, reason, 0)
            self.store.mark_download_failed(target.id, self.owner, attempt, reason)
            self.add("failed")
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
            with owned_part(part) as f:
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
                    mtime_ns(final),
                )
                self.add("downloaded")
            self.storage.served(target.output_url)
        except Busy as exc:
            self._busy(target, str(exc))
        except _StorageFailed as exc:
            stop = self.storage.failed(target, scrub(str(exc)), _ms(started))
            if stop is not None:
                self._storage_down(stop)
        except LocalWriteFailed as exc:
            # Every download would fail alike: the run stops, the job stays fetchable.
            self.halt(
                f"{exc}; stopped", "make room (or fix the folder), then run `dubrunner fetch` again"
            )
        except _Unknown as exc:
            if self.storage.down is None:
                self.memory.failed(target, scrub(str(exc)), _ms(started))
        except DownloadFailed as exc:
            if self.storage.down is None:  # else stopped by it: the job stays as it was
                self._failed(target, scrub(str(exc)), _ms(started))
        finally:
            with self._lock:
                self._in_use.discard(key)

    def _storage_down(self, sentence: str) -> None:
        self.halt(sentence, STORAGE_ADVICE if self.api else STORAGE_ADVICE_NO_API)

    def _failed(self, target: FetchTarget, reason: str, ms: int) -> None:
        """The download failed for this job's own reasons: recorded (a later fetch tries again).
        Not over another process's download made meanwhile (a failure held back until the
        storage served something, found by an outside attack: a whole output marked failed)."""
        fresh = self._reread(target)
        if fresh is not None and vouched(fresh, self._folder(target), self.verify):
            self.add("skipped")
            return
        attempt = AttemptRecord("download", "failed", None, reason, ms)
        self.store.mark_download_failed(target.id, self.owner, attempt, reason)
        self.add("failed")
        log.info("%s: download failed: %s", target.reference_id, reason)

    def _busy(self, target: FetchTarget, reason: str) -> None:
        """Left to whoever holds it for now: not failed, not downloaded; looked at again."""
        with self._lock:
            self.report.busy += 1
            self._busy_targets.append(target)
            first = target.id not in self._waited_for
            self._waited_for.add(target.id)
        if first:
            log.warning("%s: waiting: %s", target.reference_id, reason)

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
                found = lock_if_present(final)
                if found is not None:
                    held.enter_context(found)
                    present.append(final)
            fresh = self._reread(target)
            if fresh is None or vouched(fresh, self._folder(target), self.verify):
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
        last = Retryable("no attempt")
        tries = refreshes = 0
        # Why the next try first asks the API for a fresh output URL, if it does.
        refresh = "it was had long ago" if self.api is not None and _stale(target) else None
        tried = False  # the stored (or a fresh) URL was asked of the storage host
        unknown = False  # the API does not know the request: the stored URL is tried anyway
        while True:
            if self.stop.is_set():
                raise DownloadFailed("interrupted")
            try:
                if refresh is not None:
                    try:
                        target = self._refreshed(target, refresh)
                        refreshes += 1
                    except _Unknown:
                        if tried:
                            raise
                        unknown = True  # the stored URL may still be valid
                    refresh = None
                tried = True
                return self._stream(target, dest, part, f, present)
            except _Expired as exc:
                if unknown:
                    raise _Unknown(f"{exc}, and the API no longer knows this request") from None
                if self.api is None or refreshes >= REFRESHES:
                    again = (
                        f", also with {refreshes} fresh URL(s) from the API" if refreshes else ""
                    )
                    raise _StorageFailed(f"{exc}{again}") from None
                refresh = str(exc)
            except Restart as exc:
                # Not an error, and no try used: the next request asks for the whole file, so a
                # restart only comes again after a cut, and cuts use up tries.
                self.add("restarted")
                log.info("%s: starting the download over: %s", target.reference_id, exc)
                # Emptied, not removed: a removed part could be created again by another
                # process while this one still holds the lock on the old one.
                f.truncate(0)
                sidecar(part).unlink(missing_ok=True)
            except Retryable as exc:
                last = exc
                tries += 1
                if tries >= TRIES:
                    failed = _StorageFailed if last.storage else DownloadFailed
                    raise failed(f"gave up after {TRIES} tries: {last}") from None
                self.stop.wait(0.5 * 2 ** (tries - 1))

    def _stream(
        self, target: FetchTarget, dest: Path, part: Path, f: FileIO, present: list[Path]
    ) -> tuple[Path, int, str]:
        side = sidecar(part)
        url_path = urlsplit(target.output_url).path
        have = os.fstat(f.fileno()).st_size
        info = PartInfo.load(side) if have else None
        if have and (info is None or info.url_path != url_path):
            # Bytes of unknown origin (an older version named parts of several jobs alike) or
            # of another output of this job (polled again since): never continue them.
            raise Restart("the partial file is not known to come from this output")
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
                    raise Restart(f"the server cannot resume at byte {have}")
                if status in (408, 429) or status >= 500:
                    raise Retryable(f"HTTP {status}")
                if status in _EXPIRED:
                    raise _Expired(f"HTTP {status} for the output URL")
                if status not in (200, 206):
                    raise DownloadFailed(f"HTTP {status} for the output URL")
                content_type = resp.headers.get("content-type")
                if is_a_page(content_type):
                    # A login or error page served with 200 (an expired or refused URL behind a
                    # portal): never kept as the output (found by an outside attack).
                    raise _Expired(f"the output URL served {bare(content_type)}, not the video")
                if status == 206:
                    total: int | None = continued_total(resp, have, info)
                    if have:
                        self.add("resumed")
                else:
                    if have:
                        # The whole file again (no ranges there, or If-Range found a change).
                        self.add("restarted")
                        log.info("%s: the server sent the whole file again", target.reference_id)
                        f.truncate(0)
                        have, info = 0, None
                    total = header_length(resp.headers.get("content-length"))
                # The final name is fixed by the answer that starts the file, before a byte is
                # written, and kept by every resume.
                ext = (
                    info.ext if info is not None else extension_for(target.output_url, content_type)
                )
                final = dest.with_name(safe_name(target.reference_id) + ext)
                if have == 0:
                    # A whole file the row was never told about (no SHA-256 there): this job's
                    # own output renamed into place just before a crash (no other job has this
                    # name). The server vouches for its length; anything else (and a file whose
                    # SHA-256 differs from the row's) is downloaded again.
                    untold = target.sha256 is None and final in present
                    if status == 200 and untold and total == final.stat().st_size:
                        return final, total, sha256_of(final)
                    PartInfo(
                        url_path,
                        ext,
                        total,
                        resp.headers.get("etag"),
                        resp.headers.get("last-modified"),
                    ).save(side)
                # Each piece is written as it arrives: a cut keeps every byte received.
                first = have == 0
                written = have
                for chunk in resp.iter_bytes():
                    if self.stop.is_set():
                        raise DownloadFailed("interrupted")
                    if first and chunk:
                        first = False
                        if starts_like_text(chunk):
                            raise _Expired("the output URL served a page or JSON, not the video")
                    write_all(f, chunk)
                    written += len(chunk)
                    self.add("bytes", len(chunk))
                    if os.fstat(f.fileno()).st_size != written:
                        # Cut or grown by someone else (found by an outside attack: appended
                        # after a truncation, then resumed, a whole-length file of shifted bytes).
                        raise Restart("the partial file was changed while it was being written")
                os.fsync(f.fileno())
                size = os.fstat(f.fileno()).st_size
                if total is not None and size != total:
                    raise Retryable(f"got {size} of {total} bytes")
                if not is_at(part, f):
                    # Someone removed the part while it was written (another fetch waiting for
                    # it may have started its own there): what is at the name is not ours.
                    raise Busy("its partial file was removed while it was being written")
                # Read through a handle on the file itself: a folder watcher may move it away
                # the moment it has its final name (found by an outside attack).
                with part.open("rb") as reader:
                    if not os.path.samestat(os.fstat(reader.fileno()), os.fstat(f.fileno())):
                        raise Busy("its partial file was replaced while it was being written")
                    side.unlink(missing_ok=True)
                    os.replace(part, final)
                    digest = sha256_of_file(reader)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise LocalWriteFailed(f"the disk is full (writing {part})") from None
            raise LocalWriteFailed(f"cannot write {part}: {exc.strerror}") from None
        except (httpx.TransportError, httpx.StreamError, httpx.DecodingError) as exc:
            raise Retryable(f"{type(exc).__name__}: {exc}") from None
        return final, size, digest

    def _refreshed(self, target: FetchTarget, why: str) -> FetchTarget:
        """The target with a fresh output_url from the API (recorded in the row); the API not
        having one fails this download only, never the job."""
        log.info("%s: asking the API for a fresh output URL: %s", target.reference_id, why)
        if not target.request_id:
            raise DownloadFailed(f"{why}, and the job has no request_id to ask the API with")
        assert self.api is not None
        try:
            with self.governor.slot(self.stop):
                answer = self.api.get_request(target.request_id)
        except Stopped:
            raise DownloadFailed("interrupted") from None
        except (httpx.TransportError, httpx.StreamError, ResponseTooLarge) as exc:
            outcome = classify_exception(exc, idempotent=True)
            message = f"asking the API for a fresh URL: {outcome.message}"
            raise Retryable(message, storage=False) from None
        if is_not_found(answer.status, answer.body):
            self.memory.not_found()
            raise _Unknown(f"{why}, and the API no longer knows this request")
        outcome = classify_answer(answer.status, answer.headers, answer.body, idempotent=True)
        if outcome.retry_after:
            self.governor.pause(outcome.retry_after)
        if outcome.action is not Action.ACCEPTED:
            message = f"asking the API for a fresh URL: {scrub(outcome.message)}"
            if outcome.action is Action.RETRY:
                raise Retryable(message, storage=False)
            raise DownloadFailed(message)
        self.memory.knew()
        view = interpret(parse_json(answer.body), base=self.api.base_url)
        if view.output_url is None:
            raise DownloadFailed(f"{why}, and the API gives no output_url now ({view.status!r})")
        self.store.record_output_url(target.id, self.owner, view.output_url)
        self.add("refreshed")
        return replace(target, output_url=view.output_url, polled_at=utcnow())


def _final_names(target: FetchTarget, dest: Path) -> list[Path]:
    """Every name this job's output can have: the URL's extension, or one per content type."""
    if Path(urlsplit(target.output_url).path).suffix.lower() in EXTENSIONS:
        return [dest]
    stem = safe_name(target.reference_id)
    return [dest.with_name(stem + ext) for ext in sorted({".mp4", *_TYPES.values()})]


def _stale(target: FetchTarget) -> bool:
    return target.polled_at is None or utcnow() - target.polled_at > STALE_AFTER


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
