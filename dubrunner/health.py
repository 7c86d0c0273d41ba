"""The batch judges the server: one view of the API's health per process, fed by every answer.

A job meets the server alone; a fault of the server as a whole is a fact about the server, and
must be one batch-wide event, never hundreds of failed jobs:

- *Misconfigured* — before any request of this run reached the API, an answer that is not the
  API at all (a 404/405 for the generate path, a web page, a redirect) or a few connections
  refused or garbage answers in a row: the batch halts at once with one sentence naming
  CHAMELAION_BASE_URL; the jobs go back to pending, none fails.
- *Outage* — server faults (5xx, garbage, timeouts, resets, refused connections) from several
  different jobs in a row, after the API had answered: no new job is sent; one request at a
  time probes the server on a capped exponential schedule (Retry-After honoured); what is spent
  meanwhile is not charged to any job's --max-attempts; the batch goes on by itself when a
  probe succeeds, or halts (jobs pending) after --outage-timeout.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from dubrunner.db import StoreError
from dubrunner.errors import Fault, Outcome
from dubrunner.governor import Stopped
from dubrunner.records import HealthView
from dubrunner.redact import redact_url

log = logging.getLogger("dubrunner")

# Answers that show the API is there and working (whatever they mean for the job).
_ANSWERED = frozenset({Fault.NONE, Fault.JOB, Fault.THROTTLE, Fault.ACCOUNT})
# Faults that, before anything else was heard, say the address is not the API's.
_NOT_THE_API = frozenset({Fault.UNREACHABLE, Fault.GARBAGE})


OUTAGE_ADVICE = "wait until the API answers again"


class OutageTooLong(Exception):
    """The API has failed as a whole for longer than --outage-timeout."""


class Condition(StrEnum):
    HEALTHY = "healthy"
    OUTAGE = "outage"
    MISCONFIGURED = "misconfigured"


def knows_none(where: str, n: int, asked: str) -> str:
    """An API that answered "not found" for every request asked of it in a run: the wrong address
    (or an API that lost its memory), never the jobs' fault. `asked`: what was asked of them."""
    return (
        f"the API at {where} knows none of the {n} job(s) {asked} ('not found' for each): "
        "check CHAMELAION_BASE_URL"
    )


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the server's health makes of one answer, for the job that got it."""

    free: bool = False  # the server as a whole failed: not charged to the job's attempts
    hand_back: bool = False  # the job goes back to pending untouched: the address is wrong
    halt: str | None = None  # stop the batch, saying this
    advice: str | None = None  # what the user should do about it


HEALTHY = Verdict()


class ServerHealth:
    OUTAGE_AFTER = 3  # server faults from this many different jobs in a row
    MISCONFIGURED_AFTER = 3  # refused connections or garbage answers before any answer
    PROBE_FIRST = 1.0  # seconds between probes at first; doubling, up to PROBE_CAP
    PROBE_CAP = 30.0

    def __init__(
        self,
        base_url: str,
        outage_timeout: float | None = 600.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        announce: bool = True,
    ) -> None:
        """`announce`: say (a warning) when an outage begins and ends; a run that does not wait
        for the API (one round of polling) leaves that to its ending."""
        self.base_url = redact_url(base_url)
        self.outage_timeout = outage_timeout or None  # 0: wait for ever
        self._clock = clock
        self._wall = wall
        self._say = log.warning if announce else log.info
        self._lock = threading.Lock()
        self._probe = threading.Lock()  # held by the one request allowed during an outage
        self.condition = Condition.HEALTHY
        self.answered = False  # the API has answered a POST of this run
        self.looked_up = False  # ... or a look-up
        self._streak: list[str] = []  # jobs whose server faults came in a row
        self._not_the_api = 0  # refused / garbage before any answer
        self.since: float | None = None  # wall time the outage began
        self.last_success: float | None = None  # wall time of the last answer from the API
        self.last_error = ""
        self._interval = self.PROBE_FIRST
        self._next_probe = 0.0  # on `clock`
        self._slowed_since: float | None = None  # wall time the API began to only throttle

    # -- what an answer says ----------

    def observe(
        self, job: str, outcome: Outcome, what: str = "the API", *, send: bool = True
    ) -> Verdict:
        """Take one classified answer (to a request about `job`) into account. `send`: the
        answer was to a POST. Only those prove the API takes jobs: look-ups answering while
        every POST gets garbage (or a 5xx) must not reset the count towards a halt or end an
        outage, or the batch would send each job again and again until --max-attempts."""
        fault = outcome.fault
        with self._lock:
            wait = outcome.retry_after
            if wait and self.outage_timeout is not None and wait > self.outage_timeout:
                # Waiting it out would outlast --outage-timeout (found by an outside attack: a
                # Retry-After of a day kept the batch asleep past --outage-timeout 10).
                return Verdict(
                    free=True,
                    halt=f"the API asks to wait {wait:.0f} s before the next request ("
                    f"{_describe(outcome)}, Retry-After), longer than --outage-timeout",
                    advice="wait that long",
                )
            if fault is Fault.THROTTLE:
                return self._throttled(outcome)
            if fault in _ANSWERED:
                if send:
                    self._answered()
                else:
                    self._looked_up()
                self._slowed_since = None
                return HEALTHY
            self.last_error = _describe(outcome)
            if not self.answered:
                verdict = self._misconfigured(fault, outcome, what)
                if verdict is not None:
                    return verdict
            if job not in self._streak:
                self._streak.append(job)
            if self.condition is Condition.HEALTHY and len(self._streak) >= self.OUTAGE_AFTER:
                self.condition = Condition.OUTAGE
                self.since = self._wall()
                self._interval = self.PROBE_FIRST
                self._next_probe = self._clock() + self._interval
                self._say("the API is failing (%s): pausing, probing it", self.last_error)
            if self.condition is Condition.OUTAGE:
                if outcome.retry_after:
                    self._next_probe = max(self._next_probe, self._clock() + outcome.retry_after)
                return Verdict(free=True, halt=self._timed_out())
            return HEALTHY

    def _answered(self) -> None:
        if self.condition is Condition.OUTAGE:
            self._say("the API answers again: carrying on")
        self.answered = True
        self.condition = Condition.HEALTHY
        self.last_success = self._wall()
        self._streak.clear()
        self._not_the_api = 0
        self._interval = self.PROBE_FIRST

    def _looked_up(self) -> None:
        """A look-up answered: the server as a whole is up (a streak of faults is broken, an
        outage over), but whether the address takes jobs only a POST's answer says: before one,
        garbage and refusals still add up to a wrong address (a look-up answering between
        garbled POSTs once kept 30 jobs sent until --max-attempts: 254 POSTs)."""
        if self.condition is Condition.OUTAGE:
            log.warning("the API answers again: carrying on")
            self.condition = Condition.HEALTHY
        self.looked_up = True
        self.last_success = self._wall()
        self._streak.clear()
        self._interval = self.PROBE_FIRST

    def _throttled(self, outcome: Outcome) -> Verdict:
        """ "Slow down" is an answer (the API is there), but one that never ends is a halt too:
        after --outage-timeout of nothing else, the batch stops with its jobs pending."""
        self._answered()
        now = self._wall()
        if self._slowed_since is None:
            self._slowed_since = now
        if self.outage_timeout is None or now - self._slowed_since < self.outage_timeout:
            return HEALTHY
        return Verdict(
            halt=f"the API has answered nothing but 'slow down' ({_describe(outcome)}) since "
            f"{_hms(self._slowed_since)}, longer than --outage-timeout",
            advice="lower --rate or wait for the account's limit to reset",
        )

    def _misconfigured(self, fault: Fault, outcome: Outcome, what: str) -> Verdict | None:
        """Before the API answered anything: is this what a wrong address looks like?"""
        if fault is Fault.ADDRESS:
            sentence = (
                f"CHAMELAION_BASE_URL={self.base_url} does not lead to the API: {what} got "
                f"{self.last_error}"
            )
        elif fault in _NOT_THE_API:
            self._not_the_api += 1
            if self._not_the_api < self.MISCONFIGURED_AFTER:
                return Verdict(free=True)
            if fault is Fault.UNREACHABLE:
                sentence = f"cannot connect to CHAMELAION_BASE_URL={self.base_url}: "
            else:
                sentence = f"CHAMELAION_BASE_URL={self.base_url} does not answer like the API: "
            sentence += f"{self.last_error} ({self._not_the_api} times, " + (
                "while look-ups answered)" if self.looked_up else "nothing else so far)"
            )
        else:
            return None
        self.condition = Condition.MISCONFIGURED
        return Verdict(
            hand_back=True, halt=sentence, advice="check CHAMELAION_BASE_URL (and the network)"
        )

    def _timed_out(self) -> str | None:
        if self.outage_timeout is None or self.since is None:
            return None
        if self._wall() - self.since < self.outage_timeout:
            return None
        last = "nothing answered before"
        if self.last_success:
            last = f"last success at {_hms(self.last_success)}"
        return (
            f"the API has failed every request since {_hms(self.since)} ({last}; the last "
            f"error: {self.last_error}), longer than --outage-timeout"
        )

    # -- sending while the server is down ----------

    @contextmanager
    def gate(self, stop: threading.Event) -> Iterator[None]:
        """Around every request: passes at once while the server is healthy; during an outage,
        lets one request through at a time, on the probing schedule."""
        if self.condition is not Condition.OUTAGE:
            yield
            return
        while not self._probe.acquire(timeout=0.2):
            if stop.is_set():
                raise Stopped
        try:
            while self.condition is Condition.OUTAGE:
                too_long = self.outage_over_time()
                if too_long:
                    raise OutageTooLong(too_long)
                with self._lock:
                    wait = self._next_probe - self._clock()
                if wait <= 0:
                    with self._lock:
                        self._interval = min(self.PROBE_CAP, self._interval * 2)
                        self._next_probe = self._clock() + self._interval
                    break
                if stop.wait(min(wait, 0.5)):
                    raise Stopped
            yield
        finally:
            self._probe.release()

    def outage_over_time(self) -> str | None:
        """The halt sentence once an outage has lasted longer than --outage-timeout."""
        with self._lock:
            return self._timed_out() if self.condition is Condition.OUTAGE else None

    def view(self, worker: str | None = None) -> HealthView:
        """This view of the API, as the database keeps it for `status`."""
        with self._lock:
            return HealthView(
                self.base_url,
                self.condition.value,
                self.since,
                self.last_success,
                self._interval if self.condition is Condition.OUTAGE else None,
                self.last_error or None,
                self._wall(),
                worker,
            )

    def describe(self) -> str | None:
        """One line for a progress display, or None while all is well."""
        if self.condition is not Condition.OUTAGE or self.since is None:
            return None
        return (
            f"API failing since {_hms(self.since)}, retrying every {self._interval:.0f} s "
            f"({self.last_error})"
        )


class HealthTeller:
    """Keeps one run's view of the API in the database (`record`) while it is not healthy, and
    once when it is healthy again or first heard from (a word of an outage left by an earlier run
    is then over), for `status` and whoever else looks: the workers' and the poller's alike."""

    def __init__(
        self, health: ServerHealth, record: Callable[[HealthView], None], worker: str
    ) -> None:
        self.health = health
        self._record = record
        self._worker = worker
        self._told: str | None = None

    def tell(self) -> None:
        view = self.health.view(self._worker)
        if view.condition == Condition.HEALTHY and (
            self._told == Condition.HEALTHY or view.last_success is None
        ):
            return
        try:
            self._record(view)
            self._told = view.condition
        except StoreError as exc:
            log.warning("could not record the API's health: %s", exc)


def _describe(outcome: Outcome) -> str:
    text = outcome.message
    if outcome.status is not None and not text.startswith("HTTP "):
        text = f"HTTP {outcome.status} {text}"
    return text[:200]


def _hms(wall: float | None) -> str:
    return datetime.fromtimestamp(wall).strftime("%H:%M:%S") if wall else "?"


def describe_view(view: HealthView) -> str | None:
    """A kept view as one line for `status`, or None when the API looked healthy."""
    if view.condition == Condition.OUTAGE:
        every = f", retrying every {view.retry_every:.0f} s" if view.retry_every else ""
        return f"the API at {view.base_url} has been failing since {_hms(view.since)}{every}" + (
            f" ({view.message})" if view.message else ""
        )
    if view.condition == Condition.MISCONFIGURED:
        return f"a worker found CHAMELAION_BASE_URL={view.base_url} wrong: {view.message}"
    return None
