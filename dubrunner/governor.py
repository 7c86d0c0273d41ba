"""One governor per process for every request: a rate limit, a cap on requests in flight, and a
global pause when the server says Retry-After (every worker waits, not just the one told)."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class Stopped(Exception):
    """The stop event was set while waiting for a slot."""


class Governor:
    def __init__(
        self,
        rate: float | None = None,
        concurrency: int = 4,
        burst: int = 1,
        *,
        clock: Callable[[], float] = time.monotonic,
        shared: Callable[[int], list[float]] | None = None,
        auto: bool = False,
    ) -> None:
        if rate is not None and rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = max(1, burst)
        self._clock = clock
        self._slots = threading.BoundedSemaphore(max(1, concurrency))
        self._lock = threading.Lock()
        self._tat = 0.0  # GCRA's theoretical arrival time of the next request
        self._pause_until = 0.0
        # With a shared rate, send times (Unix seconds) are booked from the database in small
        # blocks (a fifth of a second's worth), so N workers together keep to one --rate.
        self._shared = shared
        self._booked: deque[float] = deque()
        # --rate auto: no limit until the server throttles; then AIMD around what it allows.
        self.auto = auto
        self._answers: deque[float] = deque()  # when recent answers came, for the observed rate
        self._last_cut = -1e9

    def pause(self, seconds: float) -> None:
        """Hold every request for `seconds` from now (the server asked for it)."""
        with self._lock:
            until = self._clock() + seconds
            if until > self._pause_until:
                self._pause_until = until
                # After a pause, start again at the steady rate rather than in a burst.
                self._tat = max(self._tat, until)

    WINDOW = 2.0  # seconds of answers the observed rate is measured over

    def observe(self, throttled: bool) -> None:
        """With --rate auto: learn from one answer. Throttled: cut to 0.85 of the rate that was
        getting through (at most once a second); otherwise creep up a little."""
        if not self.auto:
            return
        with self._lock:
            now = self._clock()
            self._answers.append(now)
            while now - self._answers[0] > self.WINDOW:
                self._answers.popleft()
            if throttled:
                if now - self._last_cut < 1.0:
                    return
                self._last_cut = now
                observed = len(self._answers) / self.WINDOW
                current = self.rate if self.rate is not None else observed
                self.rate = max(0.2, min(current, observed or current) * 0.85)
            elif self.rate is not None:
                self.rate += 0.05

    @property
    def paused_for(self) -> float:
        return max(0.0, self._pause_until - self._clock())

    def _reserve(self) -> float:
        """Book the next send time; returns how long to wait for it."""
        with self._lock:
            now = self._clock()
            start = max(now, self._pause_until)
            if self.rate is None:
                return start - now
            if self._shared is not None:
                if not self._booked:
                    self._booked.extend(self._shared(max(1, int(self.rate / 5))))
                return max(start - now, self._booked.popleft() - time.time())
            interval = 1.0 / self.rate
            send_at = max(start, self._tat - (self.burst - 1) * interval)
            self._tat = max(self._tat, send_at) + interval
            return send_at - now

    def wait_turn(self, stop: threading.Event) -> None:
        """Block until the rate limit and any pause allow one more request."""
        while True:
            delay = self._reserve()
            if delay > 0 and stop.wait(delay):
                raise Stopped
            if stop.is_set():
                raise Stopped
            # A pause may have begun while we slept on an earlier booking: book again.
            if self._clock() >= self._pause_until:
                return

    @contextmanager
    def slot(self, stop: threading.Event) -> Iterator[None]:
        """One request: a place among those in flight, then a turn under the rate."""
        while not self._slots.acquire(timeout=0.2):
            if stop.is_set():
                raise Stopped
        try:
            self.wait_turn(stop)
            yield
        finally:
            self._slots.release()
