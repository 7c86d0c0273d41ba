"""A simulation of the governor against a rate limiter, as the server sees it: requests arrive
with jitter, a token bucket lets them through or answers 429 (with the wait until its next token
as Retry-After), and each worker sends again as soon as its answer is in. Time is a fake clock,
so a run of minutes takes milliseconds and always comes out the same for one seed."""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from dubrunner.governor import Governor


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Bucket:
    """A token bucket of `capacity`, refilled at `rate` a second (capacity 1: the strictest)."""

    def __init__(self, rate: float, capacity: float = 1.0) -> None:
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self.at = 0.0

    def take(self, now: float) -> float | None:
        """None when the request may go; else the seconds until it could."""
        self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return None
        return (1.0 - self.tokens) / self.rate


@dataclass
class Run:
    arrivals: list[tuple[float, bool]] = field(default_factory=list)  # (when, let through)
    rates: list[tuple[float, float]] = field(default_factory=list)  # (when, governor.rate)

    def window(self, start: float, end: float = float("inf")) -> list[tuple[float, bool]]:
        return [(t, ok) for t, ok in self.arrivals if start <= t < end]

    def achieved(self, start: float = 0.0, end: float = float("inf")) -> float:
        """Requests let through per second, first to last in the window."""
        taken = [t for t, ok in self.window(start, end) if ok]
        return (len(taken) - 1) / (taken[-1] - taken[0])

    def refused(self, start: float = 0.0, end: float = float("inf")) -> float:
        """The fraction of requests in the window answered 429."""
        seen = self.window(start, end)
        return sum(1 for _, ok in seen if not ok) / len(seen)

    def closest(self) -> float:
        """The shortest gap between two requests the server let through."""
        taken = [t for t, ok in self.arrivals if ok]
        return min(b - a for a, b in itertools.pairwise(taken))


def quiet(_: random.Random) -> float:
    return 0.0


def simulate(
    governor: Governor,
    clock: Clock,
    bucket: Bucket,
    *,
    seconds: float,
    workers: int = 8,
    latency: float = 0.001,
    delay: Callable[[random.Random], float] = quiet,
    late_wake: Callable[[random.Random], float] = quiet,
    seed: int = 1,
    start: float = 0.0,
    connect: float = 0.0,
) -> Run:
    """Run `workers` threads sending back to back through `governor` from `start` until
    `seconds` (on the fake clock: a run can go on from where another ended). `delay`
    draws how much later than it left a request reaches the limiter; `late_wake` how much later
    than asked a sleeping thread wakes up; `connect` how long each worker's first request takes
    to open its connection, between its turn and its departure."""
    rng = random.Random(seed)
    run = Run()
    # (when, order, what, worker, value): value is "waited for the rate" for a turn, when it
    # was let go for a departure, and the Retry-After of a 429 for an answer (0: let through).
    events: list[tuple[float, int, str, int, float]] = []
    order = 0

    def at(when: float, what: str, worker: int, value: float = 0.0) -> None:
        nonlocal order
        order += 1
        heapq.heappush(events, (when, order, what, worker, value))

    connected: set[int] = set()
    for w in range(workers):
        at(start, "turn", w)
    while events:
        when, _, what, worker, value = heapq.heappop(events)
        if when > seconds:
            break
        clock.now = when
        if what == "turn":
            wait, for_rate = governor.try_turn(urgent=True, waited=bool(value))
            if wait > 0:
                at(when + wait + late_wake(rng), "turn", worker, float(value or for_rate))
            elif worker not in connected:
                connected.add(worker)
                at(when + connect, "depart", worker)
            else:
                at(when, "depart", worker)
        elif what == "depart":
            wait = governor.depart()
            if wait > 0:
                at(when + wait + late_wake(rng), "depart", worker)
            else:  # let go: its head is out a little later
                at(when + late_wake(rng), "leave", worker, when)
        elif what == "leave":
            governor.left(value)
            at(when + delay(rng), "arrive", worker)
        elif what == "arrive":
            refused_for = bucket.take(when)
            run.arrivals.append((when, refused_for is None))
            at(when + latency, "answer", worker, refused_for or 0.0)
        else:  # the answer is in
            governor.observe(throttled=value > 0)
            if value > 0:
                governor.pause(value)
            if governor.rate is not None:
                run.rates.append((when, governor.rate))
            at(when, "turn", worker)
    return run
