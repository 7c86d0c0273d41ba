"""Check every media URL before any paid request: it answers, and looks like what it should be.

HEAD first (a 1-byte ranged GET when HEAD is refused); each distinct URL once; bounded
concurrency overall and per host. The API's credentials are never sent to media hosts."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx

from dubrunner import __version__
from dubrunner.localmedia import DEFAULT_MAX_UPLOAD_BYTES, file_problem
from dubrunner.redact import redact_url

MIN_MEDIA_BYTES = 1024
_NOT_MEDIA = ("text/", "application/json", "application/xml", "application/xhtml")


@dataclass(frozen=True, slots=True)
class Pair:
    reference_id: str
    video_url: str
    audio_url: str


@dataclass(frozen=True, slots=True)
class MediaProblem:
    reference_id: str
    which: str  # video | audio
    url: str  # redacted
    problem: str


@dataclass
class PreflightReport:
    jobs: int = 0
    urls: int = 0
    checked: int = 0
    problems: list[MediaProblem] = field(default_factory=list)
    interrupted: bool = False

    @property
    def bad_references(self) -> set[str]:
        return {p.reference_id for p in self.problems}


def judge(which: str, status: int, content_type: str, size: int | None) -> str | None:
    """The problem with what a media URL answered, or None when it looks right."""
    if not 200 <= status < 300:
        return f"HTTP {status}"
    kind = content_type.split(";")[0].strip().lower()
    if kind.startswith(_NOT_MEDIA):
        return f"serves {kind}, not {which}"
    if which == "video" and kind.startswith("audio/"):
        return f"serves {kind}: audio where the video should be"
    if size is not None and size < MIN_MEDIA_BYTES:
        return f"only {size} bytes: too small to be {which}"
    return None


def _size(resp: httpx.Response) -> int | None:
    total = resp.headers.get("content-range", "").rpartition("/")[2]
    raw = total if total.isdigit() else resp.headers.get("content-length", "")
    return int(raw) if raw.isdigit() else None


class Stopped(Exception):
    """A stop was asked for before this probe started."""


class Preflight:
    def __init__(
        self,
        concurrency: int = 8,
        per_host: int = 2,
        timeout: float = 15.0,
        transport: httpx.BaseTransport | None = None,
        max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    ) -> None:
        self.max_upload_bytes = max_upload_bytes
        self.concurrency = concurrency
        self.per_host = per_host
        self._hosts: dict[str, threading.Semaphore] = {}
        self._lock = threading.Lock()
        self.stop = threading.Event()
        self.done = 0
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            follow_redirects=True,
            headers={"user-agent": f"dubrunner/{__version__} (preflight)"},
            limits=httpx.Limits(max_connections=concurrency),
            transport=transport,
        )

    def close(self) -> None:
        self._client.close()

    def _host_slot(self, url: str) -> threading.Semaphore:
        host = urlsplit(url).netloc.lower()
        with self._lock:
            return self._hosts.setdefault(host, threading.Semaphore(self.per_host))

    def probe(self, url: str, which: str) -> str | None:
        """One URL: None when fine, else what is wrong with it. Raises Stopped instead of
        starting once a stop was asked for."""
        slot = self._host_slot(url)
        while not slot.acquire(timeout=0.1):
            if self.stop.is_set():
                raise Stopped
        try:
            if self.stop.is_set():
                raise Stopped
            problem = self._ask(url, which)
        finally:
            slot.release()
        with self._lock:
            self.done += 1
        return problem

    def _ask(self, url: str, which: str) -> str | None:
        if url.startswith("file:"):  # a local file, to be uploaded: read, not fetched
            return file_problem(url, which, self.max_upload_bytes)
        try:
            resp = self._client.head(url)
            if resp.status_code in (403, 405, 501) or resp.status_code >= 500:
                # Some servers refuse HEAD (or presigned URLs sign GET only): ask for a byte.
                with self._client.stream("GET", url, headers={"Range": "bytes=0-0"}) as got:
                    resp = got
            return judge(which, resp.status_code, resp.headers.get("content-type", ""), _size(resp))
        except httpx.ConnectError as exc:
            return f"unreachable: {str(exc)[:120] or type(exc).__name__}"
        except httpx.TimeoutException:
            return "no answer in time"
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {str(exc)[:120]}"

    def run(
        self, pairs: Iterable[Pair], tick: Callable[[int, int], None] | None = None
    ) -> PreflightReport:
        """Every distinct URL once. After a stop no probe starts, and run returns at once with
        what was checked (report.interrupted): probes still waiting for an answer are left to
        their daemon threads, so that neither this call nor the process exit waits for them."""
        report = PreflightReport()
        users: dict[tuple[str, str], list[str]] = {}
        for pair in pairs:
            report.jobs += 1
            users.setdefault((pair.video_url, "video"), []).append(pair.reference_id)
            users.setdefault((pair.audio_url, "audio"), []).append(pair.reference_id)
        report.urls = len(users)
        todo = iter(list(users))
        found: dict[tuple[str, str], str | None] = {}
        failures: list[BaseException] = []

        def work() -> None:
            try:
                while not self.stop.is_set():
                    with self._lock:
                        key = next(todo, None)
                    if key is None:
                        return
                    problem = self.probe(*key)
                    with self._lock:
                        found[key] = problem
            except Stopped:
                return
            except BaseException as exc:  # a bug: raised again by run, below
                failures.append(exc)
                self.stop.set()

        threads = [
            threading.Thread(target=work, name=f"preflight-{i}", daemon=True)
            for i in range(min(self.concurrency, len(users)))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive() and not self.stop.is_set():
                thread.join(0.1)
                if tick is not None:
                    tick(self.done, len(users))
        if failures:
            raise failures[0]
        with self._lock:
            checked = dict(found)  # a probe left running may still finish after this
        report.checked = len(checked)
        report.interrupted = self.stop.is_set()
        for (url, which), problem in checked.items():
            if problem:
                for ref in users[(url, which)]:
                    report.problems.append(MediaProblem(ref, which, redact_url(url), problem))
        report.problems.sort(key=lambda p: (p.reference_id, p.which))
        return report
