"""The one decision table: from what happened to a job (a classified answer to its POST, or to
its look-up) to what happens next. Pure functions of values; no HTTP, no database, no clock
(the time is passed in). The worker applies a Decision through the store's verbs.

The rules that keep a job from being paid twice are all here:
- a POST that may have created the request owes a look-up before any resend, whatever else is
  decided (failing the job, halting the batch, trying again);
- a look-up that finds nothing proves absence only once the server has had time to act
  (`lookup_after`); sooner, the job goes back to wait for it;
- only the server throttling us is free: every other answer counts against --max-attempts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum

from dubrunner.errors import Action, Lookup, LookupResult, Outcome
from dubrunner.states import State


class Next(StrEnum):
    SEND = "send"  # a look-up proved the job absent: send it now
    AGAIN = "again"  # the same worker tries again after a wait (a look-up first, if owed)
    DONE = "done"  # the job has left this worker: submitted, failed, halted or handed back


class Count(StrEnum):
    """Which of the run's counters a decision adds one to."""

    SUBMITTED = "submitted"
    FOUND = "found_by_lookup"  # submitted: a look-up found the request an earlier POST made
    FAILED = "failed"
    HALTED = "halted"
    DEFERRED = "deferred"


@dataclass(frozen=True, slots=True)
class Policy:
    max_attempts: int = 8
    lookup_grace: float = 30.0  # seconds after an unclear answer before "not found" is proof


@dataclass(frozen=True, slots=True)
class Progress:
    """A claim of a job, as far as deciding goes."""

    tries: int  # answers so far that counted against --max-attempts (earlier claims included)
    throttled: int  # answers of this claim that only said "slow down"
    posts: int  # POSTs sent, all claims included
    lookup_owed: bool
    lookup_after: float | None


@dataclass(frozen=True, slots=True)
class Decision:
    next: Next
    # The job's new state when it leaves this worker (DONE); None: it stays, submitting.
    state: State | None = None
    request_id: str | None = None
    lookup_owed: bool = False
    lookup_after: float | None = None
    error: str | None = None  # what the job's row says went wrong (None: nothing)
    halt: str | None = None  # stop the whole batch, saying this
    count: Count | None = None
    charged: bool = False  # the answer counted against --max-attempts
    throttled: bool = False  # the answer only said "slow down"
    wait: float | None = None  # the server asked for this wait before the next try
    note: str | None = None  # worth a warning (several requests found, an odd id)


def _spent(
    progress: Progress, outcome: Outcome, policy: Policy, free: bool
) -> tuple[int, int, bool]:
    """(tries, throttled, exhausted) once `outcome` is counted. "Slow down" is never the job's
    fault and never ends it, however often it comes: a strict limiter answers 429 to many
    requests of a healthy batch (a job gave up after ~120 of them in 6 s under a limiter with a
    burst of 2). An API that only ever says it is the batch's affair: health.py halts the batch
    after --outage-timeout of nothing else, its jobs left pending."""
    throttled = progress.throttled + (1 if outcome.throttled else 0)
    tries = progress.tries + (0 if outcome.throttled or free else 1)
    exhausted = tries >= policy.max_attempts
    return tries, throttled, exhausted


def after_send(
    outcome: Outcome, progress: Progress, policy: Policy, now: float, free: bool = False
) -> Decision:
    """What a classified answer to a POST means for the job. `free`: the server as a whole is
    failing (health.py), so the answer is not charged to this job's attempts."""
    owed = outcome.lookup_owed
    after = now + policy.lookup_grace if owed else None
    charged = not outcome.throttled and not free
    message = None if outcome.action is Action.ACCEPTED else outcome.message
    if outcome.action is Action.ACCEPTED:
        assert outcome.request_id is not None
        return Decision(
            Next.DONE, State.SUBMITTED, outcome.request_id, count=Count.SUBMITTED, charged=True
        )
    if outcome.action is Action.FAIL_JOB:
        return Decision(
            Next.DONE, State.FAILED, None, owed, after, message, count=Count.FAILED, charged=True
        )
    if outcome.action is Action.HALT_BATCH:
        return Decision(
            Next.DONE,
            State.HALTED,
            None,
            owed,
            after,
            message,
            halt=message,
            count=Count.HALTED,
            charged=True,
        )
    _, _, exhausted = _spent(progress, outcome, policy, free)
    if exhausted:
        posts = progress.posts
        return Decision(
            Next.DONE,
            State.FAILED,
            None,
            owed,
            after,
            f"gave up after {posts} attempts: {outcome.message}",
            count=Count.FAILED,
            charged=charged,
            throttled=outcome.throttled,
        )
    return Decision(
        Next.AGAIN,
        None,
        None,
        owed,
        after,
        message,
        charged=charged,
        throttled=outcome.throttled,
        wait=outcome.retry_after,
    )


def after_lookup(
    result: LookupResult, progress: Progress, policy: Policy, now: float, free: bool = False
) -> Decision:
    """What a look-up by reference_id means for a job that owes one (`free`: as for sends)."""
    if result.kind is Lookup.FOUND:
        assert result.request_id is not None
        note = result.note if result.note != "found" else None
        return Decision(Next.DONE, State.SUBMITTED, result.request_id, count=Count.FOUND, note=note)
    if result.kind is Lookup.NOT_FOUND:
        after = progress.lookup_after
        if after is not None and now < after:
            # The server may still be creating it (a proxy gave up before the backend did):
            # wait, then ask again, before any resend.
            return Decision(Next.DONE, State.PENDING, None, True, after, count=Count.DEFERRED)
        return Decision(Next.SEND)
    outcome = result.outcome
    assert outcome is not None, result
    if outcome.action is Action.HALT_BATCH:
        return Decision(
            Next.DONE,
            State.HALTED,
            None,
            True,
            progress.lookup_after,
            outcome.message,
            halt=outcome.message,
            count=Count.HALTED,
        )
    # No answer yet: the look-up is still owed, and its failures count like any other.
    tries, _, exhausted = _spent(progress, outcome, policy, free)
    if exhausted:
        return Decision(
            Next.DONE,
            State.FAILED,
            None,
            True,
            progress.lookup_after,
            f"gave up after {tries} attempts: {outcome.message}",
            count=Count.FAILED,
            charged=not outcome.throttled and not free,
            throttled=outcome.throttled,
        )
    return Decision(
        Next.AGAIN,
        None,
        None,
        True,
        progress.lookup_after,
        outcome.message,
        charged=not outcome.throttled and not free,
        throttled=outcome.throttled,
        wait=outcome.retry_after,
    )


def not_the_api(
    outcome: Outcome, progress: Progress, policy: Policy, now: float, halt: str
) -> Decision:
    """The answer was not the API's (a wrong address): the job goes back to pending, nothing
    charged, and the batch stops with `halt`. A look-up stays owed if it was, or if this answer
    (a garbled 200) may have come after the request was made."""
    if outcome.lookup_owed:
        return Decision(Next.DONE, State.PENDING, None, True, now + policy.lookup_grace, halt=halt)
    return Decision(
        Next.DONE, State.PENDING, None, progress.lookup_owed, progress.lookup_after, halt=halt
    )


def files_unusable(problem: str, progress: Progress) -> Decision:
    """A local job's files are gone or not those loaded: it fails unsent (a look-up it owed
    stays owed: a resend after the manifest is loaded again asks the API first)."""
    return Decision(
        Next.DONE,
        State.FAILED,
        None,
        progress.lookup_owed,
        progress.lookup_after,
        problem,
        count=Count.FAILED,
    )


def on_stop(progress: Progress) -> Decision:
    """A stop (Ctrl-C, a halt elsewhere) came while the job was between tries: hand it back,
    remembering whether a look-up is owed."""
    return Decision(Next.DONE, State.PENDING, None, progress.lookup_owed, progress.lookup_after)


def backoff(failures: int, base: float, cap: float, rand: float | None = None) -> float:
    """The wait before try number `failures + 1`: doubling from `base`, capped, minus up to a
    quarter of jitter (as the vendor's SDK waits)."""
    jitter = random.random() if rand is None else rand
    return min(cap, base * 2.0 ** max(0, failures - 1)) * (1 - 0.25 * jitter)
