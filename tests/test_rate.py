"""Rate adherence as the server sees it: a strict limiter (a token bucket of capacity 1) refuses
any request that arrives less than 1/R after the last one it let through.

The fast tests drive the real governor through a simulation on a fake clock (tests/ratesim.py):
requests reach the limiter with jitter, 429s carry the wait until the next token. The slow ones
run `dubrunner submit` as a process against the emulator with `--burst 1` and read when each
request reached it (the kernel's receive time) from its record of arrivals."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

import dubrunner.governor as governor_module
from dubrunner.emulator import Emulator
from dubrunner.governor import AutoRate, Governor
from tests.conftest import TOKEN, Database, assert_exactly_once, run_cli, states, write_manifest
from tests.ratesim import Bucket, Clock, Run, quiet, simulate


def steady(_: random.Random) -> float:
    return 0.0003


def jittery(rng: random.Random) -> float:
    """Most requests take 0.3 ms to reach the server; one in a hundred up to 3 ms more."""
    if rng.random() < 0.01:
        return 0.0003 + rng.uniform(0.0005, 0.003)
    return 0.0003 + rng.expovariate(1 / 0.0001)


def spiky(rng: random.Random) -> float:
    """A busy machine: three requests in a hundred are held up 1 to 8 ms."""
    if rng.random() < 0.03:
        return 0.0003 + rng.uniform(0.001, 0.008)
    return 0.0003 + rng.expovariate(1 / 0.0001)


def late_wake(rng: random.Random) -> float:
    return rng.expovariate(1 / 0.0003)


def paced(
    rate: float | None,
    limit: float,
    seconds: float = 60,
    delay: Callable[[random.Random], float] = steady,
    late_wake: Callable[[random.Random], float] = late_wake,
    seed: int = 1,
) -> Run:
    """The governor at `rate` (None: --rate auto), 8 workers, against a strict `limit`."""
    clock = Clock()
    governor = Governor(rate, 8, clock=clock, auto=rate is None)
    return simulate(
        governor,
        clock,
        Bucket(limit),
        seconds=seconds,
        delay=delay,
        late_wake=late_wake,
        seed=seed,
    )


def test_without_jitter_a_strict_limiter_never_refuses() -> None:
    for rate in (5.0, 20.0, 40.0):
        run = paced(rate, rate, delay=steady, late_wake=quiet)
        assert run.refused() == 0
        assert run.achieved() / rate >= 0.96
        assert run.closest() >= 1 / rate


def test_paced_at_exactly_the_rate_jitter_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """The original finding: a client spaced at exactly 1/R meets 429s whenever a request
    arrives a little later than the one before it; the margin keeps them rare."""
    with monkeypatch.context() as m:
        m.setattr(governor_module, "MARGIN", 0.0)
        m.setattr(governor_module, "WIDEN", 0.0)
        exact = paced(20.0, 20.0, delay=jittery, seed=3)
    ours = paced(20.0, 20.0, delay=jittery, seed=3)
    assert exact.refused() > 0.05
    assert ours.refused() < 0.01
    assert ours.achieved() / 20 >= 0.95


def test_on_a_busy_path_the_margin_widens_until_429s_are_rare(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with monkeypatch.context() as m:
        m.setattr(governor_module, "WIDEN", 0.0)
        fixed = paced(20.0, 20.0, delay=spiky, seed=3)
    ours = paced(20.0, 20.0, delay=spiky, seed=3)
    assert ours.refused() < 0.02 < fixed.refused()
    assert ours.achieved() / 20 >= 0.85


def test_new_connections_at_the_start_do_not_cost_the_rate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each worker's first request opens its connection (40 ms here) after its turn: the turn
    is given early enough that the connection is ready when the request is due."""

    def first_two_seconds(seed: int) -> float:
        clock = Clock()
        governor = Governor(20.0, 8, clock=clock)
        run = simulate(
            governor, clock, Bucket(20.0), seconds=10, delay=jittery, connect=0.04, seed=seed
        )
        assert run.refused() < 0.02
        return run.achieved(0, 2) / 20

    for seed in (1, 2, 3):
        assert first_two_seconds(seed) >= 0.9
    monkeypatch.setattr(governor_module, "LEAD", 0.002)  # a turn given just before it is due
    assert first_two_seconds(1) < 0.85


def test_auto_finds_an_unknown_strict_limit_without_a_burst() -> None:
    for limit in (8.0, 20.0, 35.0):
        for seed in (1, 2):
            run = paced(None, limit, seconds=70, delay=jittery, seed=seed)
            assert run.achieved(10) / limit >= 0.9, (limit, seed)
            assert run.refused(10) < 0.02, (limit, seed)
            # It starts at START a second, growing from there: no burst at the start.
            first = run.window(0, 0.5)
            assert len(first) <= AutoRate.START, (limit, seed)


def test_auto_finds_a_lower_limit_and_a_higher_one() -> None:
    clock = Clock()
    governor = Governor(None, 8, clock=clock, auto=True)
    bucket = Bucket(30.0)
    simulate(governor, clock, bucket, seconds=30, delay=jittery)
    assert governor.rate is not None and 25 < governor.rate < 36
    bucket.rate = 10.0  # the account's limit is lowered
    lowered = simulate(governor, clock, bucket, seconds=60, delay=jittery, start=30)
    assert lowered.achieved(40) / 10 >= 0.9 and lowered.refused(40) < 0.03
    bucket.rate = 15.0  # and raised: found by the slow growth
    raised = simulate(governor, clock, bucket, seconds=200, delay=jittery, start=60)
    assert raised.achieved(160) / 15 >= 0.9


# -- the emulator's limiter ----------


def test_the_emulators_burst_1_is_a_strict_limiter(emulator: Emulator) -> None:
    url = emulator.base_url + "v1/users/me"
    with httpx.Client(headers={"x-api-key": TOKEN}) as client:
        emulator.update(rate=10.0)  # a second's worth at once, as before
        time.sleep(0.6)
        assert [client.get(url).status_code for _ in range(4)] == [200] * 4
        emulator.update(burst=1)
        time.sleep(0.2)
        first, second = client.get(url), client.get(url)
        assert (first.status_code, second.status_code) == (200, 429)
        assert 0 < float(second.headers["Retry-After"]) <= 0.1
        time.sleep(0.11)
        assert client.get(url).status_code == 200
    # Every request met the bucket at its arrival, recorded with whether it went through.
    arrivals = emulator.arrivals
    assert [ok for _, ok in arrivals[-3:]] == [True, False, True]
    assert all(abs(t - time.time()) < 5 for t, _ in arrivals)


# -- the real command against the emulator ----------


def measured(emulator: Emulator, skip: float = 0.0) -> tuple[float, float]:
    """(requests let through a second, first to last; the fraction answered 429), from when the
    requests reached the emulator, after the first `skip` seconds."""
    arrivals = sorted(emulator.arrivals)
    start = arrivals[0][0] + skip
    seen = [(t, ok) for t, ok in arrivals if t >= start]
    taken = [t for t, ok in seen if ok]
    refused = sum(1 for _, ok in seen if not ok)
    return (len(taken) - 1) / (taken[-1] - taken[0]), refused / len(seen)


@pytest.mark.slow
def test_submit_holds_a_strict_rate_limit(
    emulator: Emulator, env: dict[str, str], db: Database, tmp_path: Path
) -> None:
    emulator.update(rate=20.0, burst=1)
    manifest = write_manifest(tmp_path / "m.yaml", 160)
    r = run_cli(["submit", str(manifest), "--rate", "20", "--concurrency", "8"], env)
    assert r.code == 0, r.err
    assert_exactly_once(emulator, db, 160)
    achieved, refused = measured(emulator)
    # The bench asks for >= 0.95 and < 1 %; a loaded 2-core machine gets some headroom.
    assert achieved / 20 >= 0.9, (achieved, refused)
    assert refused < 0.02, (achieved, refused)


@pytest.mark.slow
def test_submits_lookups_and_polls_share_one_budget(
    emulator: Emulator, env: dict[str, str], db: Database, tmp_path: Path
) -> None:
    # Lost answers make look-ups; --wait polls every job after submitting: all under --rate.
    emulator.update(rate=25.0, burst=1, drop_after_accept=0.1, complete_after=0.5)
    manifest = write_manifest(tmp_path / "m.yaml", 60)
    r = run_cli(["submit", str(manifest), "--rate", "25", "--concurrency", "8", "--wait"], env)
    assert r.code == 0, r.err
    assert emulator.duplicates() == {} and len(emulator.accepted()) == 60
    assert states(db) == {"completed": 60}
    # Look-ups of the lost answers, and the poll's pages of the list (each job seen completed).
    assert emulator.stats.lookups > 1 and emulator.stats.dropped > 0
    achieved, refused = measured(emulator)
    assert refused < 0.02, (achieved, refused)
    assert achieved <= 25.0


@pytest.mark.slow
def test_rate_auto_finds_a_strict_limit(
    emulator: Emulator, env: dict[str, str], db: Database, tmp_path: Path
) -> None:
    emulator.update(rate=20.0, burst=1)
    manifest = write_manifest(tmp_path / "m.yaml", 320)
    r = run_cli(["submit", str(manifest), "--rate", "auto", "--concurrency", "8"], env)
    assert r.code == 0, r.err
    assert_exactly_once(emulator, db, 320)
    achieved, refused = measured(emulator, skip=10.0)
    # The bench asks for >= 0.9 and < 2 % after the first 10 s; here with some headroom.
    assert achieved / 20 >= 0.8, (achieved, refused)
    assert refused < 0.03, (achieved, refused)
