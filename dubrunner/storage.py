"""The fetch judges the storage host as a whole, as health.py judges the API for a submit.

A download that the storage host refused (401/403/404/410 or a page instead of the video, even
with fresh URLs from the API) or that could not reach it (refused connections, resets, timeouts,
5xx, after the tries) says nothing yet about the job: the host may be refusing every output.
Such a failure is held back, not recorded: when the host then serves another output, it was the
job's own and is recorded; when `AFTER` downloads from one host fail so in a row, the storage is
failing as a whole: the fetch stops with one sentence, and no job is recorded as failed (a later
fetch downloads them). What is still held when the fetch ends is recorded as the jobs' own when
its host served another output in this run; held for a host that served none (a batch of one or
two outputs, every one refused), it is the storage failing as a whole too: one sentence, no job
recorded as failed (found by an outside attack: two outputs refused were two jobs failed)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from dubrunner.records import FetchTarget

STORAGE_ADVICE = "run `dubrunner fetch` again once the storage serves them"
# Without the API's credentials no fresh output URL can be had: expired ones are refused too.
STORAGE_ADVICE_NO_API = (
    f"{STORAGE_ADVICE}, with CHAMELAION_API_KEY set if the output URLs expired (fresh ones are "
    "then asked of the API)"
)


def storage_host(url: str) -> str:
    """The host (and port) of an output URL, without any user:password."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    return f"{host}:{parts.port}" if parts.port else host


@dataclass
class _Held:
    target: FetchTarget
    reason: str
    ms: int


@dataclass
class StorageHealth:
    """Failures of downloads held per storage host, until the host is seen to serve or to be
    failing as a whole. `record(target, reason, ms)` records one as the job's own."""

    record: Callable[[FetchTarget, str, int], None]
    after: int = 3
    down: str | None = None  # the sentence, once the storage failed as a whole
    _held: dict[str, list[_Held]] = field(default_factory=dict)
    _served: set[str] = field(default_factory=set)  # hosts that served an output in this run
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def served(self, url: str) -> None:
        """The host served an output: the failures held for it were the jobs' own."""
        host = storage_host(url)
        with self._lock:
            self._served.add(host)
            held = self._held.pop(host, [])
        for h in held:
            self.record(h.target, h.reason, h.ms)

    def failed(self, target: FetchTarget, reason: str, ms: int) -> str | None:
        """A download the host refused or could not be reached for: held back; the sentence
        that stops the fetch when it makes `after` in a row (None otherwise, and after that
        sentence was given once)."""
        host = storage_host(target.output_url)
        with self._lock:
            if self.down is not None:
                return None  # the fetch is stopping: the job stays as it was
            held = self._held.setdefault(host, [])
            held.append(_Held(target, reason, ms))
            if len(held) < self.after:
                return None
            self._held.clear()
            self.down = (
                f"the storage host {host} refused {len(held)} downloads in a row (the last: "
                f"{reason}); stopped"
            )
            return self.down

    def settle(self) -> str | None:
        """The fetch ended without `after` refusals in a row: what is held for a host that served
        another output in this run was the jobs' own (recorded); what is held for a host that
        served none is the storage failing as a whole: the sentence that says so (None when
        there is none), those jobs left as they were."""
        with self._lock:
            held = [h for host, hs in self._held.items() if host in self._served for h in hs]
            unserved = [(host, hs) for host, hs in self._held.items() if host not in self._served]
            self._held.clear()
            if unserved:
                host, hs = unserved[0]
                self.down = (
                    f"the storage host {host} served none of the outputs asked of it and refused "
                    f"{len(hs)} (the last: {hs[-1].reason}); stopped"
                )
        for h in held:
            self.record(h.target, h.reason, h.ms)
        return self.down
