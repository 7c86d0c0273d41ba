"""The server's health, judged from answers: a clock injected, no HTTP."""

from __future__ import annotations

import threading

import httpx
import pytest

from dubrunner.errors import Action, Fault, Outcome, classify_answer, classify_exception
from dubrunner.governor import Stopped
from dubrunner.health import Condition, OutageTooLong, ServerHealth

H = httpx.Headers({"content-type": "application/json"})
TEXT = httpx.Headers({"content-type": "text/plain; charset=utf-8"})
OK = Outcome(Action.ACCEPTED, "accepted", 200, "6f82a2d8-a6d4-4e8a-a0fa-e8b09823a2d8")
E500 = classify_answer(500, H, b'{"error": "internal error"}')
REFUSED = classify_exception(httpx.ConnectError("[Errno 111] Connection refused"))
NOT_FOUND_PAGE = classify_answer(404, TEXT, b"404 page not found")
GARBAGE = classify_answer(200, TEXT, b"OK, job queued")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def health(clock: Clock, timeout: float | None = 600.0) -> ServerHealth:
    return ServerHealth("http://127.0.0.1:8787/", timeout, clock=clock, wall=clock)


@pytest.mark.parametrize(
    ("outcome", "fault"),
    [
        (OK, Fault.NONE),
        (classify_answer(400, H, b'{"error": "invalid request body"}'), Fault.JOB),
        (classify_answer(429, H, b'{"error": "rate limit exceeded"}'), Fault.THROTTLE),
        (classify_answer(401, H, b'{"error": "invalid token"}'), Fault.ACCOUNT),
        (E500, Fault.SERVER),
        (classify_answer(502, TEXT, b"<html>bad gateway</html>"), Fault.SERVER),
        (GARBAGE, Fault.GARBAGE),
        (NOT_FOUND_PAGE, Fault.ADDRESS),
        (classify_answer(404, H, b'{"error": "not found"}'), Fault.ADDRESS),
        (classify_answer(405, TEXT, b""), Fault.ADDRESS),
        (classify_answer(307, H, b"", idempotent=False), Fault.ADDRESS),
        (REFUSED, Fault.UNREACHABLE),
        (classify_exception(httpx.ReadTimeout("slow")), Fault.SERVER),
    ],
)
def test_whose_fault_an_answer_is(outcome: Outcome, fault: Fault) -> None:
    assert outcome.fault is fault


def test_a_page_that_is_not_the_api_never_fails_the_job() -> None:
    assert NOT_FOUND_PAGE.action is Action.RETRY
    assert classify_answer(404, H, b'{"error": "not found"}').action is Action.RETRY


def test_a_wrong_address_halts_at_the_first_page(clock: Clock) -> None:
    h = health(clock)
    verdict = h.observe("r1", NOT_FOUND_PAGE, "POST v1/lipsync/generate")
    assert verdict.hand_back and verdict.halt is not None
    assert "CHAMELAION_BASE_URL=http://127.0.0.1:8787/ does not lead to the API" in verdict.halt
    assert verdict.halt.endswith("POST v1/lipsync/generate got HTTP 404 with a non-JSON body")
    assert h.condition is Condition.MISCONFIGURED


@pytest.mark.parametrize("fault", [REFUSED, GARBAGE])
def test_refused_or_garbage_from_the_start_is_a_wrong_address_after_three(
    clock: Clock, fault: Outcome
) -> None:
    h = health(clock)
    first, second = h.observe("r1", fault), h.observe("r2", fault)
    assert first.free and second.free and first.halt is None and second.halt is None
    third = h.observe("r3", fault)
    assert third.hand_back and third.halt is not None
    assert "CHAMELAION_BASE_URL" in third.halt and "3 times" in third.halt


def test_look_ups_answering_between_garbled_posts_do_not_reset_the_count(clock: Clock) -> None:
    # A POST answered with garbage owes a look-up, which the API answers ("not found"). Failed
    # before (seen in CI, where each look-up came before the next POST): every look-up counted as
    # the API answering, so the garbage never added up to a halt and each of 30 jobs was sent
    # until --max-attempts (254 POSTs).
    h = health(clock)
    for job in ("r1", "r2"):
        assert h.observe(job, GARBAGE, "POST v1/lipsync/generate").halt is None
        assert h.observe(job, OK, "a look-up", send=False).halt is None
    third = h.observe("r3", GARBAGE, "POST v1/lipsync/generate")
    assert third.hand_back and third.halt is not None
    assert "does not answer like the API" in third.halt and "while look-ups answered" in third.halt


def test_look_ups_answering_end_an_outage(clock: Clock) -> None:
    # Random 500s for POSTs with look-ups answering between them are not an outage: holding
    # every request to one probe at a time on a growing schedule made a 60-job batch with 20 %
    # of 500s crawl (seen when look-ups did not count).
    h = health(clock)
    h.observe("r0", OK)
    for job in ("r1", "r2", "r3"):
        h.observe(job, E500)
    assert h.condition is Condition.OUTAGE
    assert h.observe("r4", OK, "a look-up", send=False).halt is None
    assert str(h.condition) == "healthy"
    assert not h.observe("r5", E500).free  # the streak starts again from nothing


def test_after_the_api_answered_the_same_faults_are_an_outage(clock: Clock) -> None:
    h = health(clock)
    h.observe("r0", OK)
    assert not h.observe("r1", REFUSED).free  # one job: its own bad luck, charged
    assert not h.observe("r1", E500).free  # the same job again: still no outage
    assert not h.observe("r2", E500).free
    verdict = h.observe("r3", GARBAGE)  # the third job in a row: the server as a whole
    assert verdict.free and verdict.halt is None and h.condition == Condition.OUTAGE
    assert h.describe() is not None and "retrying every" in (h.describe() or "")
    clock.now += 5
    assert h.observe("r4", OK).halt is None
    assert h.describe() is None and str(h.condition) == "healthy"


def test_a_job_fault_between_server_faults_breaks_the_streak(clock: Clock) -> None:
    h = health(clock)
    h.observe("r0", OK)
    h.observe("r1", E500)
    h.observe("r2", E500)
    h.observe("r3", classify_answer(400, H, b'{"error": "invalid request body"}'))
    assert not h.observe("r4", E500).free
    assert h.condition is Condition.HEALTHY


def test_an_outage_longer_than_the_timeout_halts(clock: Clock) -> None:
    h = health(clock, timeout=60)
    h.observe("r0", OK)
    for ref in ("r1", "r2", "r3"):
        h.observe(ref, E500)
    clock.now += 59
    assert h.observe("r4", E500).halt is None
    clock.now += 2
    halt = h.observe("r5", E500).halt
    assert halt is not None and "since" in halt and "last success" in halt
    assert "longer than --outage-timeout" in halt
    forever = health(clock, timeout=0)
    forever.observe("r0", OK)
    for ref in ("r1", "r2", "r3"):
        forever.observe(ref, E500)
    clock.now += 10**6
    assert forever.observe("r4", E500).halt is None


def test_during_an_outage_one_request_at_a_time_on_a_growing_schedule(clock: Clock) -> None:
    h = health(clock)
    h.observe("r0", OK)
    for ref in ("r1", "r2", "r3"):
        h.observe(ref, E500)
    stop = threading.Event()
    schedule = []
    for _ in range(7):
        start = clock.now
        # The gate waits on the stop event: move the clock to the next probe, as time would.
        clock.now = max(clock.now, h._next_probe)
        with h.gate(stop):
            schedule.append(clock.now - start)
        h.observe("rx", E500)
    assert schedule[1:] == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    # Retry-After from the server pushes the next probe.
    h.observe("ry", Outcome(Action.AMBIGUOUS, "busy", 503, retry_after=120.0, fault=Fault.SERVER))
    assert h._next_probe >= clock.now + 120


def test_the_gate_stops_and_times_out(clock: Clock) -> None:
    h = health(clock, timeout=30)
    h.observe("r0", OK)
    for ref in ("r1", "r2", "r3"):
        h.observe(ref, E500)
    stop = threading.Event()
    stop.set()
    with pytest.raises(Stopped), h.gate(stop):
        pass
    clock.now += 31
    with pytest.raises(OutageTooLong), h.gate(threading.Event()):
        pass


def test_a_server_that_only_ever_throttles_halts_after_the_timeout(clock: Clock) -> None:
    # Found by an outside attack: an API answering 429 for ever kept submit running for ever.
    h = health(clock, timeout=60)
    throttle = classify_answer(429, H, b'{"error": "rate limit exceeded"}')
    h.observe("r0", OK)
    assert h.observe("r1", throttle).halt is None
    clock.now += 30
    assert h.observe("r2", OK).halt is None  # something else got through: the clock restarts
    assert h.observe("r3", throttle).halt is None
    clock.now += 61
    verdict = h.observe("r4", throttle)
    assert verdict.halt is not None and "nothing but 'slow down'" in verdict.halt
    assert verdict.advice is not None and "--rate" in verdict.advice


def test_a_retry_after_longer_than_the_outage_timeout_halts_at_once(clock: Clock) -> None:
    h = health(clock, timeout=10.0)
    long = classify_answer(
        429, httpx.Headers({"content-type": "application/json", "retry-after": "86400"}),
        b'{"error": "rate limit exceeded"}',
    )  # fmt: skip
    verdict = h.observe("r1", long)
    assert verdict.halt is not None and "the API asks to wait" in verdict.halt
    assert "longer than --outage-timeout" in verdict.halt
    short = classify_answer(
        429, httpx.Headers({"content-type": "application/json", "retry-after": "5"}),
        b'{"error": "rate limit exceeded"}',
    )  # fmt: skip
    assert health(clock, timeout=10.0).observe("r1", short).halt is None
    assert health(clock, timeout=None).observe("r1", long).halt is None  # 0: wait for ever
