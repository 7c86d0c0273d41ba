"""The fetch judges the API's memory as a whole, as storage.py judges the storage host.

An output URL that expired (or was had long ago) is asked of the API afresh; an API that answers
"not found" does not make the download fail at once: the stored URL is tried anyway (it may still
serve the file). When that fails too, the failure is held back, not recorded: when the API knows
another request asked of it in this run, it was the job's own (recorded); when it knew none of
them, it is the wrong CHAMELAION_BASE_URL (or an API that lost its memory): one sentence for the
batch, no job recorded as failed (a later fetch against the right API downloads them). Found by an
outside attack: every download marked failed without the stored URL even being tried."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from dubrunner.health import knows_none
from dubrunner.records import FetchTarget

ADVICE = "run `dubrunner fetch` again against the API that has these requests"


@dataclass
class _Held:
    target: FetchTarget
    reason: str
    ms: int


@dataclass
class ApiMemory:
    """Failures held while the API has known none of the requests asked of it in this run.
    `record(target, reason, ms)` records one as the job's own."""

    record: Callable[[FetchTarget, str, int], None]
    _known: bool = False
    _not_found: int = 0
    _held: list[_Held] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def not_found(self) -> None:
        """The API answered "not found" for a request asked of it."""
        with self._lock:
            self._not_found += 1

    def knew(self) -> None:
        """The API answered for a request asked of it: the failures held were the jobs' own."""
        with self._lock:
            self._known = True
            held, self._held = self._held, []
        for h in held:
            self.record(h.target, h.reason, h.ms)

    def failed(self, target: FetchTarget, reason: str, ms: int) -> None:
        """A download that failed after the API did not know its request: recorded when the API
        is known to remember ours, held back otherwise."""
        with self._lock:
            if not self._known:
                self._held.append(_Held(target, reason, ms))
                return
        self.record(target, reason, ms)

    def settle(self, where: str) -> str | None:
        """At the end of the fetch: the sentence when the API knew none of the requests asked of
        it and downloads failed for it (those jobs left as they were); None otherwise."""
        with self._lock:
            held, self._held = self._held, []
            if held and not self._known:
                return knows_none(where, self._not_found, "asked for a fresh output URL")
        for h in held:
            self.record(h.target, h.reason, h.ms)
        return None

    def drop(self) -> None:
        """The fetch stopped for another cause: what is held stays as it was."""
        with self._lock:
            self._held = []
