"""One governor per process for every request: a rate limit, a cap on requests in flight, and a
global pause when the server says Retry-After (every worker waits, not just the one told).

Pacing is judged as the server sees it. The strictest limiter a server may use is a token bucket
of capacity 1 refilled at R: it refuses any request that *arrives* less than 1/R after the last
one it let through. Requests leave on time but arrive with jitter (a thread that wakes late, a
busy server process, the network): a request held up by a few milliseconds leaves the next one,
sent on time, a few milliseconds too close to it. Paced at exactly 1/R, a third of the requests
were refused. Hence:

- every gap is longer than 1/R by a margin: 3 % (1.5 ms at 20 req/s) to begin with. Each 429
  widens it by 2 % (at most once every half second, up to 15 %) and every answer let through
  narrows it by 0.02 %, so it settles where about one request in a hundred meets a 429: wide
  on a jittery path, narrow on a steady one;
- a request waits in two places: for its turn before its exchange begins (the rate, a pause),
  given up to an interval early, then at the door (`leaving`, called by the HTTP client right
  before the first byte leaves) for the moment an interval after the last request left. So a
  new connection's set-up costs no slot, and a request whose head went out late (`left`)
  moves the schedule back instead of leaving the next one closer to it;
- nothing is booked ahead, so there is no burst at the start or after a pause (unless --burst);
- a 429's Retry-After pauses every request and the schedule starts again from its end;
- submits, look-ups and polls share the one budget; a POST waiting for a turn goes before a
  look-up or a poll waiting for the same turn.

--rate auto (no rate known) is explained in AutoRate.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

MARGIN = 0.03  # the narrowest margin, added to every gap of 1/rate
WIDEN = 0.02  # added to the margin by a 429
NARROW = 0.0002  # taken off it by every answer let through
MAX_MARGIN = 0.15
GUARD = 0.5  # seconds: the 429s of requests already on their way count as one
LEAD = 0.1  # the most a turn is given early (up to an interval); `leaving` waits out the rest
HOLD = 1.0  # the longest pause a request at the door waits out (see pause)
YIELD = 0.002  # how long a look-up or poll waits while a POST takes the turn it was offered


def paced_interval(rate: float, margin: float = MARGIN) -> float:
    """The gap kept between requests under `rate` requests per second."""
    return (1.0 + margin) / rate


class Stopped(Exception):
    """The stop event was set while waiting for a slot."""


class AutoRate:
    """--rate auto: find an unknown limit and keep just under it.

    It starts at START requests a second, never in a burst, and grows only while that rate is
    what holds requests back. Until the first 429 it grows fast: +0.7 req/s for every answer,
    which doubles it about every second. A 429 is the server's word that the rate is too high:
    the rate is cut to NEAR (0.95) of what was getting through (the answers let through in the
    last second, or the rate itself when lower), and the rate at which the 429 came is kept as
    the ceiling. Below NEAR of the ceiling it grows fast again (after a deep cut, such as the
    first one, when the rate had overshot); above, slowly: +0.025 % for every answer, so that
    it takes about 200 answers to climb back from NEAR of the ceiling to the ceiling. So it finds
    the limit in a few seconds, then spends its time within a few per cent of it and meets a 429
    about once in a few hundred requests, whatever the limit; a lower limit is found by the next
    cut, a higher one by the slow growth.
    """

    START = 5.0
    FAST = math.log(2)
    SLOW = 0.00025
    NEAR = 0.95
    WINDOW = 1.0  # seconds of answers that say what is getting through
    FLOOR = 0.2

    def __init__(self) -> None:
        self.rate = self.START
        self.ceiling: float | None = None
        self._answers: deque[float] = deque()
        self._since: float | None = None

    def throttled(self, now: float) -> None:
        self._forget(now)
        span = min(self.WINDOW, now - self._since) if self._since is not None else 0.0
        through = len(self._answers) / span if span > 0 else self.rate
        self.ceiling = self.rate
        self.rate = max(self.FLOOR, self.NEAR * min(self.rate, through))

    def answered(self, now: float, bound: bool) -> None:
        if self._since is None:
            self._since = now
        self._answers.append(now)
        self._forget(now)
        if not bound:
            return  # the rate is not what holds requests back: growing it would mean nothing
        fast = self.ceiling is None or self.rate < self.NEAR * self.ceiling
        self.rate += self.FAST if fast else self.SLOW * self.rate

    def _forget(self, now: float) -> None:
        while self._answers and now - self._answers[0] >= self.WINDOW:
            self._answers.popleft()


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
        self._auto = AutoRate() if auto else None
        self.rate = self._auto.rate if self._auto else rate
        self.burst = max(1, burst)
        self.margin = MARGIN
        self._clock = clock
        self._slots = threading.BoundedSemaphore(max(1, concurrency))
        self._lock = threading.Lock()
        # GCRA: when the next turn is due (burst - 1 intervals sooner may go), and the same for
        # the moments requests actually leave.
        self._tat = -math.inf
        self._left_tat = -math.inf
        self._pause_until = 0.0
        self._last_429 = -math.inf
        self._urgent_waiting = 0  # POSTs waiting for a turn: they go first
        self._bound = False  # the last turn was waited for because of the rate
        # With a shared rate, send times (Unix seconds) are booked from the database in small
        # blocks (a fifth of a second's worth), so N workers together keep to one --rate.
        self._shared = shared
        self._booked: deque[float] = deque()

    @property
    def auto(self) -> bool:
        return self._auto is not None

    @property
    def interval(self) -> float:
        assert self.rate is not None
        return paced_interval(self.rate, self.margin)

    def pause(self, seconds: float) -> None:
        """Hold every request for `seconds` from now (the server asked for it); the schedule
        starts again at the end of the pause, without a burst."""
        with self._lock:
            until = self._clock() + seconds
            if until > self._pause_until:
                self._pause_until = until
                self._tat = max(self._tat, until)
                # A request already at the door (given its turn, in `leaving`) waits out a short
                # pause, such as a limiter's milliseconds until its next token, but not a long
                # one inside its exchange, whose deadline runs.
                self._left_tat = max(self._left_tat, min(until, self._clock() + HOLD))

    def observe(self, throttled: bool) -> None:
        """Learn from one answer: a 429 widens the margin (and with --rate auto cuts the rate),
        an answer let through narrows it (and with --rate auto lets the rate grow)."""
        with self._lock:
            if throttled:
                now = self._clock()
                if now - self._last_429 < GUARD:
                    return
                self._last_429 = now
                self.margin = min(MAX_MARGIN, self.margin + WIDEN)
                if self._auto is not None:
                    self._auto.throttled(now)
            else:
                self.margin = max(MARGIN, self.margin - NARROW)
                if self._auto is not None:
                    self._auto.answered(self._clock(), self._bound)
            if self._auto is not None:
                self.rate = self._auto.rate

    @property
    def paused_for(self) -> float:
        return max(0.0, self._pause_until - self._clock())

    def try_turn(self, urgent: bool = False, waited: bool = False) -> tuple[float, bool]:
        """Take a turn now (0.0), or say how long to wait before asking again and whether it
        is the rate (not a pause) that says so. `waited`: this caller waited for the rate."""
        with self._lock:
            now = self._clock()
            paused = self._pause_until - now
            if self.rate is None:
                return max(0.0, paused), False
            interval = self.interval
            due = self._tat - (self.burst - 1) * interval - min(LEAD, interval) - now
            if paused > 0 or due > 0:
                return max(paused, due), due > paused
            if not urgent and self._urgent_waiting:
                return YIELD, True
            self._bound = waited
            self._tat = max(self._tat, now) + interval
            return 0.0, False

    def leaving(self) -> float:
        """Called right before a request's first byte leaves (ApiClient.pacer): wait for its
        moment, an interval after the last request's. A request held up after its turn (a new
        connection, a thread that woke late) leaves later than planned, and the next one waits
        here for the rest of its interval. Returns the moment it was let go."""
        while (wait := self.depart()) > 0:
            time.sleep(wait)
        return self._clock()

    def depart(self) -> float:
        """0.0 when a request may leave now (the next one is then due an interval later), else
        how long to wait before asking again. A pause does not hold a request this far on its
        way (it would wait inside its exchange): a turn is only given outside a pause."""
        if self.rate is None or self._shared is not None:
            return 0.0
        with self._lock:
            now = self._clock()
            interval = self.interval
            wait = self._left_tat - (self.burst - 1) * interval - now
            if wait > 0:
                return wait
            self._left_tat = max(self._left_tat, now) + interval
            self._tat = max(self._tat, self._left_tat)
            return 0.0

    def left(self, due: float) -> None:
        """The request due to leave at `due` has sent its head (ApiClient.pacer). One that went
        late (its thread woke late, or lost the CPU on the way out) moves the schedule back:
        the next leaves at least 1/rate and half the margin after it; the other half of the
        margin is for the way to the server."""
        if self.rate is None or self._shared is not None:
            return
        with self._lock:
            after = self._clock() + (1.0 + self.margin / 2) / self.rate
            if after > self._left_tat:
                self._left_tat = after
                self._tat = max(self._tat, after)

    def _wait_booked(self, stop: threading.Event) -> None:
        """--rate-shared: wait for the next time booked in the database (and any pause)."""
        assert self._shared is not None and self.rate is not None
        while True:
            with self._lock:
                # A booked time that passed unused (this process was busy, or starting up) is
                # dropped: sent now, right after another worker's on-time slot, it would make
                # two requests arrive closer than the rate allows.
                late = time.time() - 1.0 / self.rate
                while self._booked and self._booked[0] < late:
                    self._booked.popleft()
                if not self._booked:
                    self._booked.extend(self._shared(max(1, int(self.rate / 5))))
                slot = self._booked.popleft()
                delay = max(self._pause_until - self._clock(), slot - time.time())
            if delay > 0 and stop.wait(delay):
                raise Stopped
            if stop.is_set():
                raise Stopped
            # A pause may have begun while we slept on an earlier booking: book again.
            if self._clock() >= self._pause_until:
                return

    def wait_turn(self, stop: threading.Event, urgent: bool = False) -> None:
        """Block until the rate limit and any pause allow one more request; `urgent` (a POST)
        goes before the others waiting for the same turn."""
        if self._shared is not None and self.rate is not None:
            return self._wait_booked(stop)
        if urgent:
            with self._lock:
                self._urgent_waiting += 1
        try:
            waited = False
            while True:
                delay, for_rate = self.try_turn(urgent, waited)
                waited = waited or for_rate
                if stop.is_set():
                    raise Stopped
                if delay <= 0:
                    return
                if stop.wait(delay):
                    raise Stopped
        finally:
            if urgent:
                with self._lock:
                    self._urgent_waiting -= 1

    @contextmanager
    def slot(self, stop: threading.Event, urgent: bool = False) -> Iterator[None]:
        """One request: a place among those in flight, then a turn under the rate."""
        while not self._slots.acquire(timeout=0.2):
            if stop.is_set():
                raise Stopped
        try:
            self.wait_turn(stop, urgent)
            yield
        finally:
            self._slots.release()
