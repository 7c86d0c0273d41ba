"""The governor with a fake clock: spacing under --rate, bursts, the global pause."""

from __future__ import annotations

import math
import threading
import time

import pytest

from dubrunner.governor import (
    HOLD,
    MARGIN,
    MAX_MARGIN,
    NARROW,
    WIDEN,
    AutoRate,
    Governor,
    Stopped,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeStop(threading.Event):
    """A stop event whose waits advance the fake clock instead of sleeping."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock
        self.slept: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        assert timeout is not None
        self.slept.append(round(timeout, 6))
        self.clock.now += timeout
        return self.is_set()


def send(governor: Governor, stop: FakeStop, clock: FakeClock) -> float:
    """One request: its turn, then its departure (the HTTP client's `leaving`); when it left."""
    governor.wait_turn(stop)
    while (wait := governor.depart()) > 0:
        clock.now += wait
    governor.left(clock.now)
    return round(clock.now - 1000.0, 6)


def test_rate_spaces_requests_evenly_with_the_margin() -> None:
    clock = FakeClock()
    stop = FakeStop(clock)
    governor = Governor(rate=4.0, concurrency=8, clock=clock)
    times = [send(governor, stop, clock) for _ in range(5)]
    gap = 0.25 * (1 + MARGIN)
    assert times == pytest.approx([0.0, gap, 2 * gap, 3 * gap, 4 * gap])  # no burst at the start


def test_burst_lets_a_few_go_at_once_then_the_rate_holds() -> None:
    clock = FakeClock()
    stop = FakeStop(clock)
    governor = Governor(rate=10.0, concurrency=8, burst=3, clock=clock)
    times = [send(governor, stop, clock) for _ in range(6)]
    gap = 0.1 * (1 + MARGIN)
    assert times == pytest.approx([0.0, 0.0, 0.0, gap, 2 * gap, 3 * gap])


def test_a_request_that_leaves_late_moves_the_schedule_back() -> None:
    clock = FakeClock()
    stop = FakeStop(clock)
    governor = Governor(rate=10.0, concurrency=8, clock=clock)
    gap = 0.1 * (1 + MARGIN)
    governor.wait_turn(stop)  # its turn; then a new connection takes 30 ms
    clock.now += 0.03
    assert governor.depart() == 0.0
    first = clock.now
    governor.left(first)
    governor.wait_turn(stop)  # the next turn comes early, and waits for the rest
    assert clock.now < first + gap
    while (wait := governor.depart()) > 0:
        clock.now += wait
    assert clock.now == pytest.approx(first + gap)  # a full interval after the late one
    let_go = clock.now
    clock.now += 0.004  # its thread loses the CPU for 4 ms before its head is out
    governor.left(let_go)
    second = clock.now
    assert send(governor, stop, clock) == pytest.approx(second - 1000 + (1 + MARGIN / 2) * 0.1)


def test_no_rate_means_no_wait() -> None:
    clock = FakeClock()
    stop = FakeStop(clock)
    governor = Governor(rate=None, clock=clock)
    for _ in range(100):
        governor.wait_turn(stop)
    assert stop.slept == []


def test_a_pause_holds_everyone_then_the_schedule_starts_from_its_end() -> None:
    clock = FakeClock()
    stop = FakeStop(clock)
    governor = Governor(rate=2.0, clock=clock)
    send(governor, stop, clock)
    governor.pause(3.0)  # a 429's Retry-After
    assert governor.paused_for == pytest.approx(3.0)
    assert send(governor, stop, clock) == pytest.approx(3.0)
    # No burst of pent-up requests after the pause: the next is an interval later.
    assert send(governor, stop, clock) == pytest.approx(3.0 + 0.5 * (1 + MARGIN))
    governor.pause(1.0)
    governor.pause(0.5)  # a shorter pause does not cut a longer one
    assert governor.paused_for == pytest.approx(1.0)


def test_a_request_at_the_door_waits_out_a_short_pause_only() -> None:
    clock = FakeClock()
    stop = FakeStop(clock)
    governor = Governor(rate=10.0, clock=clock)
    send(governor, stop, clock)
    governor.wait_turn(stop)  # its turn is given; it is on its way out when a 429 comes back
    governor.pause(0.3)  # the limiter's time until its next token: wait for it
    assert governor.depart() == pytest.approx(0.3)
    governor.pause(60.0)  # a long one is not waited out inside the request's exchange
    assert governor.depart() == pytest.approx(HOLD)
    assert governor.paused_for == pytest.approx(60.0)  # while no new turn is given


def test_a_429_widens_the_margin_and_answers_narrow_it_back() -> None:
    clock = FakeClock()
    governor = Governor(rate=20.0, clock=clock)
    assert governor.interval == pytest.approx((1 + MARGIN) / 20)
    governor.observe(throttled=True)
    governor.observe(throttled=True)  # the 429s of requests already on their way: one signal
    assert governor.margin == pytest.approx(MARGIN + WIDEN)
    clock.now += 1.0
    governor.observe(throttled=True)
    assert governor.margin == pytest.approx(MARGIN + 2 * WIDEN)
    for _ in range(round(WIDEN / NARROW)):
        governor.observe(throttled=False)
    assert governor.margin == pytest.approx(MARGIN + WIDEN)
    for _ in range(10_000):
        governor.observe(throttled=False)
    assert governor.margin == MARGIN  # never narrower than where it started
    for _ in range(100):
        clock.now += 1.0
        governor.observe(throttled=True)
    assert governor.margin == MAX_MARGIN


def test_a_post_waiting_for_a_turn_goes_before_a_lookup() -> None:
    governor = Governor(rate=5.0, concurrency=8)
    stop = threading.Event()
    order: list[str] = []
    governor.wait_turn(stop)  # the next turn is given ~100 ms from now

    def request(kind: str) -> None:
        governor.wait_turn(stop, urgent=kind == "post")
        order.append(kind)

    lookup = threading.Thread(target=request, args=("lookup",))
    lookup.start()
    time.sleep(0.005)  # the look-up waits first
    post = threading.Thread(target=request, args=("post",))
    post.start()
    lookup.join(5)
    post.join(5)
    assert order == ["post", "lookup"]


def test_stop_interrupts_a_wait() -> None:
    clock = FakeClock()
    stop = FakeStop(clock)
    governor = Governor(rate=1.0, clock=clock)
    governor.wait_turn(stop)
    stop.set()
    with pytest.raises(Stopped):
        governor.wait_turn(stop)


def test_concurrency_cap() -> None:
    governor = Governor(concurrency=2)
    stop = threading.Event()
    inside = 0
    most = 0
    lock = threading.Lock()
    release = threading.Event()

    def request() -> None:
        nonlocal inside, most
        with governor.slot(stop):
            with lock:
                inside += 1
                most = max(most, inside)
            release.wait(0.05)
            with lock:
                inside -= 1

    threads = [threading.Thread(target=request) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most == 2


def test_shared_rate_books_blocks_and_waits_for_each_slot(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    stop = FakeStop(clock)
    wall = [5000.0]
    monkeypatch.setattr("dubrunner.governor.time.time", lambda: wall[0] + (clock.now - 1000.0))
    booked: list[int] = []

    def book(n: int) -> list[float]:  # the database hands out slots 0.1 s apart
        booked.append(n)
        start = 5000.0 + 0.1 * sum(booked[:-1])
        return [start + 0.1 * i for i in range(n)]

    governor = Governor(rate=10.0, clock=clock, shared=book)
    for _ in range(4):
        governor.wait_turn(stop)
    assert booked == [2, 2]  # a fifth of a second's worth at a time
    assert clock.now == pytest.approx(1000.3)  # the fourth slot, 0.3 s after the first


def test_shared_slots_that_passed_unused_are_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    # A worker busy (or starting up) past its booked times must not send them all at once,
    # right beside the slots other workers booked after them (seen as 10.7 req/s under 10).
    clock = FakeClock()
    stop = FakeStop(clock)
    wall = [5000.0]
    monkeypatch.setattr("dubrunner.governor.time.time", lambda: wall[0] + (clock.now - 1000.0))
    blocks = [[5000.0, 5000.1], [5001.5, 5001.6]]

    def book(n: int) -> list[float]:
        return blocks.pop(0)

    governor = Governor(rate=10.0, clock=clock, shared=book)
    governor.wait_turn(stop)
    assert clock.now == pytest.approx(1000.0)
    clock.now += 1.0  # busy for a second: the second booked time (5000.1) has passed
    governor.wait_turn(stop)
    assert clock.now == pytest.approx(1001.5)  # a fresh booking, not the stale one at once


def test_auto_rate_starts_slowly_doubles_then_cuts_to_what_got_through() -> None:
    clock = FakeClock()
    governor = Governor(rate=None, clock=clock, auto=True)
    assert governor.rate == AutoRate.START  # not unlimited: no burst at the start
    governor._bound = True  # every request waits for the rate
    for _ in range(20):  # before the first 429, each answer adds ln 2: doubling every second
        clock.now += 0.1
        governor.observe(throttled=False)
    assert governor.rate == pytest.approx(AutoRate.START + 20 * math.log(2))
    rate = governor.rate
    governor.observe(throttled=True)  # 10 answers in the last second got through
    assert governor.rate == pytest.approx(0.95 * 10.0)
    assert governor._auto is not None and governor._auto.ceiling == pytest.approx(rate)
    cut = governor.rate
    governor.observe(throttled=True)  # a burst of 429s is one signal, not many
    assert governor.rate == cut
    # Below 0.95 of the ceiling it grows fast, then slowly.
    while governor.rate < 0.95 * rate:
        clock.now += 0.01
        governor.observe(throttled=False)
    assert governor.rate < 0.95 * rate + math.log(2)
    before = governor.rate
    for _ in range(100):
        clock.now += 0.01
        governor.observe(throttled=False)
    assert governor.rate == pytest.approx(before * (1 + AutoRate.SLOW) ** 100)


def test_auto_rate_grows_only_while_the_rate_holds_requests_back() -> None:
    clock = FakeClock()
    governor = Governor(rate=None, clock=clock, auto=True)
    for _ in range(100):
        clock.now += 1.0
        governor.observe(throttled=False)  # a slow server: the rate was never waited for
    assert governor.rate == AutoRate.START
