"""The decision table, row by row: no HTTP, no database, no clock."""

from __future__ import annotations

import pytest

from dubrunner.decisions import (
    Count,
    Decision,
    Next,
    Policy,
    Progress,
    after_lookup,
    after_send,
    backoff,
    on_stop,
)
from dubrunner.errors import Action, Lookup, LookupResult, Outcome
from dubrunner.states import State

NOW = 1000.0
POLICY = Policy(max_attempts=3, lookup_grace=30.0)
FRESH = Progress(tries=0, throttled=0, posts=1, lookup_owed=False, lookup_after=None)
RID = "6f82a2d8-a6d4-4e8a-a0fa-e8b09823a2d8"


def send(outcome: Outcome, progress: Progress = FRESH) -> Decision:
    return after_send(outcome, progress, POLICY, NOW)


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [
        (
            Outcome(Action.ACCEPTED, "accepted", 200, RID),
            Decision(Next.DONE, State.SUBMITTED, RID, count=Count.SUBMITTED, charged=True),
        ),
        (
            Outcome(Action.FAIL_JOB, "invalid request body", 400),
            Decision(
                Next.DONE,
                State.FAILED,
                error="invalid request body",
                count=Count.FAILED,
                charged=True,
            ),
        ),
        (  # a 5xx with x-should-retry: false: not tried again, but it may exist
            Outcome(Action.FAIL_JOB, "odd", 500, may_exist=True),
            Decision(
                Next.DONE,
                State.FAILED,
                lookup_owed=True,
                lookup_after=NOW + 30,
                error="odd",
                count=Count.FAILED,
                charged=True,
            ),
        ),
        (
            Outcome(Action.HALT_BATCH, "token limit reached", 429),
            Decision(
                Next.DONE,
                State.HALTED,
                error="token limit reached",
                halt="token limit reached",
                count=Count.HALTED,
                charged=True,
            ),
        ),
        (  # a 200 carrying "token limit reached": halt, and look it up before any resend
            Outcome(Action.HALT_BATCH, "token limit reached", 200, may_exist=True),
            Decision(
                Next.DONE,
                State.HALTED,
                lookup_owed=True,
                lookup_after=NOW + 30,
                error="token limit reached",
                halt="token limit reached",
                count=Count.HALTED,
                charged=True,
            ),
        ),
        (  # throttled: free, and the server's wait is kept
            Outcome(Action.RETRY, "rate limit exceeded", 429, retry_after=2.0),
            Decision(
                Next.AGAIN, error="rate limit exceeded", throttled=True, charged=False, wait=2.0
            ),
        ),
        (
            Outcome(Action.RETRY, "ConnectError: refused"),
            Decision(Next.AGAIN, error="ConnectError: refused", charged=True),
        ),
        (  # may have landed: a look-up is owed, and "not found" proves nothing for 30 s
            Outcome(Action.AMBIGUOUS, "ReadTimeout"),
            Decision(
                Next.AGAIN,
                lookup_owed=True,
                lookup_after=NOW + 30,
                error="ReadTimeout",
                charged=True,
            ),
        ),
    ],
)
def test_after_send(outcome: Outcome, expected: Decision) -> None:
    assert send(outcome) == expected


def test_the_last_try_fails_the_job_and_keeps_the_look_up_owed() -> None:
    progress = Progress(tries=2, throttled=0, posts=5, lookup_owed=False, lookup_after=None)
    d = send(Outcome(Action.AMBIGUOUS, "HTTP 502 with an HTML body", 502), progress)
    assert (d.next, d.state, d.count) == (Next.DONE, State.FAILED, Count.FAILED)
    assert d.error == "gave up after 5 attempts: HTTP 502 with an HTML body"
    assert (d.lookup_owed, d.lookup_after) == (True, NOW + 30)
    plain = send(Outcome(Action.RETRY, "ConnectError"), progress)
    assert (plain.state, plain.lookup_owed) == (State.FAILED, False)


def test_throttling_never_ends_a_job() -> None:
    # A job failed "gave up after 5 attempts: rate limit exceeded" against a strict limiter
    # (burst 2) after ~120 answers 429 in 6 s, its batch healthy. The batch-wide bound on an API
    # that only says "slow down" is health.py's --outage-timeout.
    throttle = Outcome(Action.RETRY, "rate limit exceeded", 429)
    many = Progress(tries=2, throttled=10_000, posts=10_011, lookup_owed=False, lookup_after=None)
    assert send(throttle, many).next is Next.AGAIN
    looked_up = Progress(tries=2, throttled=10_000, posts=11, lookup_owed=True, lookup_after=None)
    assert lookup(LookupResult(Lookup.ERROR, outcome=throttle), looked_up).next is Next.AGAIN
    # A real try still counts: the third (--max-attempts 3) ends it as before.
    assert send(Outcome(Action.RETRY, "ConnectError"), many).state is State.FAILED


OWED = Progress(tries=1, throttled=0, posts=1, lookup_owed=True, lookup_after=NOW + 10)


def lookup(result: LookupResult, progress: Progress = OWED, now: float = NOW) -> Decision:
    return after_lookup(result, progress, POLICY, now)


def test_found_is_submitted_and_a_note_is_kept() -> None:
    d = lookup(LookupResult(Lookup.FOUND, RID, "found"))
    assert d == Decision(Next.DONE, State.SUBMITTED, RID, count=Count.FOUND)
    d = lookup(LookupResult(Lookup.FOUND, "job-4", "found; the API's id 'job-4' is not a UUID"))
    assert d.request_id == "job-4" and d.note is not None and "not a UUID" in d.note


def test_not_found_proves_absence_only_after_the_grace() -> None:
    missing = LookupResult(Lookup.NOT_FOUND, note="not found")
    early = lookup(missing)
    assert early == Decision(Next.DONE, State.PENDING, None, True, NOW + 10, count=Count.DEFERRED)
    assert lookup(missing, now=NOW + 10).next is Next.SEND
    reclaimed = Progress(tries=0, throttled=0, posts=1, lookup_owed=True, lookup_after=None)
    assert lookup(missing, reclaimed).next is Next.SEND  # the settle time already passed


def test_a_failed_look_up_is_still_owed() -> None:
    refused = LookupResult(Lookup.ERROR, outcome=Outcome(Action.HALT_BATCH, "invalid token", 401))
    d = lookup(refused)
    assert (d.state, d.halt, d.lookup_owed) == (State.HALTED, "invalid token", True)
    broken = LookupResult(Lookup.ERROR, outcome=Outcome(Action.RETRY, "look-up failed: x", 500))
    d = lookup(broken)
    assert (d.next, d.lookup_owed, d.charged) == (Next.AGAIN, True, True)
    spent = Progress(tries=2, throttled=0, posts=1, lookup_owed=True, lookup_after=None)
    d = lookup(broken, spent)
    assert (d.state, d.lookup_owed) == (State.FAILED, True)
    assert d.error == "gave up after 3 attempts: look-up failed: x"


def test_a_stop_hands_the_job_back_with_what_it_owes() -> None:
    assert on_stop(OWED) == Decision(Next.DONE, State.PENDING, None, True, NOW + 10)
    assert on_stop(FRESH) == Decision(Next.DONE, State.PENDING, None, False, None)


def test_backoff_doubles_caps_and_jitters_down() -> None:
    assert [backoff(n, 0.5, 8.0, rand=0.0) for n in range(1, 7)] == [0.5, 1, 2, 4, 8, 8]
    assert backoff(3, 0.5, 8.0, rand=1.0) == 1.5  # a quarter less at most
    assert backoff(0, 0.5, 8.0, rand=0.0) == 0.5
