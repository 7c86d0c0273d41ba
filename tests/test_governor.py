"""The governor with a fake clock: spacing under --rate, bursts, the global pause."""

from __future__ import annotations

import threading

import pytest

from dubrunner.governor import Governor, Stopped


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


def test_rate_spaces_requests_evenly() -> None:
    clock = FakeClock()
    stop = FakeStop(clock)
    governor = Governor(rate=4.0, concurrency=8, clock=clock)
    times = []
    for _ in range(5):
        governor.wait_turn(stop)
        times.append(clock.now)
    assert [round(t - times[0], 6) for t in times] == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_burst_lets_a_few_go_at_once_then_the_rate_holds() -> None:
    clock = FakeClock()
    stop = FakeStop(clock)
    governor = Governor(rate=10.0, concurrency=8, burst=3, clock=clock)
    times = []
    for _ in range(6):
        governor.wait_turn(stop)
        times.append(round(clock.now - 1000.0, 6))
    assert times == [0.0, 0.0, 0.0, 0.1, 0.2, 0.3]


def test_no_rate_means_no_wait() -> None:
    clock = FakeClock()
    stop = FakeStop(clock)
    governor = Governor(rate=None, clock=clock)
    for _ in range(100):
        governor.wait_turn(stop)
    assert stop.slept == []


def test_a_pause_holds_everyone_then_resumes_at_the_rate() -> None:
    clock = FakeClock()
    stop = FakeStop(clock)
    governor = Governor(rate=2.0, clock=clock)
    governor.wait_turn(stop)
    governor.pause(3.0)
    assert governor.paused_for == pytest.approx(3.0)
    governor.wait_turn(stop)
    assert clock.now == pytest.approx(1003.0)
    governor.wait_turn(stop)
    assert clock.now == pytest.approx(1003.5)  # no burst of pent-up requests after the pause
    governor.pause(1.0)
    governor.pause(0.5)  # a shorter pause does not cut a longer one
    assert governor.paused_for == pytest.approx(1.0)


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


def test_auto_rate_cuts_on_throttling_and_creeps_back() -> None:
    clock = FakeClock()
    governor = Governor(rate=None, clock=clock, auto=True)
    for _ in range(40):  # 40 answers in 2 s: 20 a second got through
        clock.now += 0.05
        governor.observe(throttled=False)
    assert governor.rate is None  # no limit until the server objects
    governor.observe(throttled=True)
    assert governor.rate == pytest.approx(0.85 * 41 / 2.0)
    cut = governor.rate
    assert cut is not None
    governor.observe(throttled=True)  # a burst of 429s is one signal, not many
    assert governor.rate == cut
    for _ in range(20):
        governor.observe(throttled=False)
    assert governor.rate == pytest.approx(cut + 1.0)
    clock.now += 1.5
    governor.observe(throttled=True)
    assert governor.rate is not None and governor.rate < cut + 1.0
