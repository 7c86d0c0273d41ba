"""Claim → (look up) → send → classify → record, on a few threads, until the work runs out or a
stop comes. Each outcome is committed the moment it is known; a request_id is never held only in
memory, and a job whose POST may have landed is always looked up before it is sent again."""

from __future__ import annotations

import functools
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from tenacity import RetryCallState, Retrying, retry_if_result

from dubrunner.api import Answer, ApiClient
from dubrunner.errors import (
    RETRYABLE,
    Action,
    FilterIgnored,
    Outcome,
    ResponseTooLarge,
    classify_answer,
    classify_direct_lookup,
    classify_exception,
    classify_lookup,
)
from dubrunner.governor import Governor, Stopped
from dubrunner.redact import scrub
from dubrunner.states import State
from dubrunner.store import AttemptRecord, ClaimedJob, Lease, Store, StoreError, utcnow

log = logging.getLogger("dubrunner")

# A job may be told "slow down" this many times its --max-attempts before it gives up.
THROTTLE_FACTOR = 10


@dataclass(frozen=True)
class WorkerOptions:
    concurrency: int = 4
    max_attempts: int = 8
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    grace_seconds: float = 30.0  # after a stop, how long in-flight requests may take
    request_timeout: float = 60.0  # the HTTP read timeout; leases derive from it (store.Lease)
    rate: float | None = None  # requests per second, for the governor
    burst: int = 1
    rate_shared: bool = False  # --rate is for all workers on the database together
    rate_auto: bool = False  # --rate auto: find the server's limit (governor.observe)
    follow: float | None = (
        None  # when nothing is left, look for new jobs this often (work --follow)
    )

    @property
    def lease(self) -> Lease:
        return Lease(self.request_timeout)

    def governor(self, store: Store, api: ApiClient) -> Governor:
        """The process's one governor; with rate_shared, its rate is booked in the database."""
        shared = None
        if self.rate_shared and self.rate:
            interval = 1.0 / self.rate
            shared = functools.partial(store.reserve_rate_slots, api.base_url, interval)
        return Governor(self.rate, self.concurrency, self.burst, shared=shared, auto=self.rate_auto)


@dataclass
class RunReport:
    submitted: int = 0
    failed: int = 0
    halted: int = 0
    retries: int = 0
    requests: int = 0
    found_by_lookup: int = 0
    lost: int = 0  # jobs another worker took over (our lease had lapsed)
    halt_message: str | None = None
    fatal: str | None = None
    interrupted: bool = False
    started: float = field(default_factory=time.monotonic)


class _Lost(Exception):
    """The job is no longer ours: drop it."""


@dataclass
class _JobRun:
    job: ClaimedJob
    lookup_needed: bool
    posts: int = 0
    tries: int = 0  # attempts that count against --max-attempts
    throttled: int = 0  # answers that only said "slow down"


def run_ticking(target: Callable[[], None], tick: Callable[[], None] | None) -> None:
    """Run `target` on a thread and call `tick` from this one meanwhile: the main thread stays
    free for signal handlers and the progress display."""
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.1)
        if tick is not None:
            tick()


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def owner_is_dead(owner: str) -> bool:
    """True only when the owner is provably a dead process on this host."""
    try:
        host, pid_text, _ = owner.rsplit(":", 2)
        pid = int(pid_text)
    except ValueError:
        return False
    if host != socket.gethostname() or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class Worker:
    def __init__(
        self,
        store: Store,
        api: ApiClient,
        governor: Governor,
        options: WorkerOptions,
        batch: str | None,
    ) -> None:
        self.store = store
        self.api = api
        self.governor = governor
        self.options = options
        self.batch = batch
        self.owner = worker_id()
        self.stop = threading.Event()
        self.report = RunReport()
        self._lock = threading.Lock()  # the report's counters
        self._claim_lock = threading.Lock()  # the queue of claimed jobs
        self._queue: deque[ClaimedJob] = deque()
        self._exhausted = False
        self._renewed_at = time.monotonic()
        self._heartbeat_stop = threading.Event()
        self._dead_owners: set[str] = set()
        self.waiting_for_others = False
        # One policy for every job: tenacity keeps per-call state thread-locally (9.x).
        self._retrying = Retrying(
            stop=self._should_stop,
            wait=self._wait,
            retry=retry_if_result(lambda o: o.action in RETRYABLE),
            sleep=self._sleep,
            retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
            before_sleep=self._before_sleep,
        )

    # -- control ----------

    def request_stop(self) -> None:
        """Ctrl-C / SIGTERM: claim nothing more, let what is in flight finish.

        Runs in a signal handler: it takes no lock (the interrupted code might hold it)."""
        self.report.interrupted = True
        self.stop.set()

    def _halt(self, message: str) -> None:
        with self._lock:
            if self.report.halt_message is None:
                self.report.halt_message = message
        self.stop.set()

    def _fatal(self, message: str) -> None:
        with self._lock:
            if self.report.fatal is None:
                self.report.fatal = message
        self.stop.set()

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self.report, name, getattr(self.report, name) + n)

    # -- the run ----------

    def run(self, tick: Callable[[], None] | None = None) -> RunReport:
        """Work until nothing is left to claim or a stop; call `tick` from this thread meanwhile."""
        self.store.start_group_commit()
        self._reclaim_dead_owners()
        threads = [
            threading.Thread(target=self._thread_main, name=f"worker-{i}", daemon=True)
            for i in range(self.options.concurrency)
        ]
        heartbeat = threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True)
        heartbeat.start()
        for t in threads:
            t.start()
        stopped_at: float | None = None
        try:
            while any(t.is_alive() for t in threads):
                threads[0].join(0.1) if threads[0].is_alive() else time.sleep(0.1)
                if tick is not None:
                    tick()
                if self.stop.is_set():
                    stopped_at = stopped_at or time.monotonic()
                    if time.monotonic() - stopped_at > self.options.grace_seconds:
                        log.warning("in-flight requests did not finish in time; leaving them")
                        break
        finally:
            self._heartbeat_stop.set()
            self._release_queue()
            if any(t.is_alive() for t in threads):
                # Their POSTs may still land: the next run looks them up once they have settled.
                try:
                    self.store.abandon_leases(self.owner, self.options.lease)
                except StoreError as exc:
                    log.warning("could not hand back in-flight jobs: %s", exc)
            if tick is not None:
                tick()
        return self.report

    def _reclaim_dead_owners(self) -> None:
        for owner in self.store.owners_of_submitting(self.batch):
            if owner not in self._dead_owners and owner_is_dead(owner):
                self._dead_owners.add(owner)
                n = self.store.mark_owner_dead(owner)
                log.info("%d job(s) of a dead worker (%s) will be looked up", n, owner)

    def _heartbeat(self) -> None:
        lease = self.options.lease
        while not self._heartbeat_stop.wait(lease.heartbeat):
            # Stamped before the call: the leases were computed then, not when the commit ended.
            started = time.monotonic()
            try:
                self.store.renew_leases(self.owner, lease)
                self._renewed_at = started
            except StoreError as exc:
                log.warning("could not renew leases: %s", exc)

    def _lease_is_fresh(self) -> bool:
        """Send only while our leases were renewed under two heartbeats ago (see store.Lease)."""
        return time.monotonic() - self._renewed_at < 2 * self.options.lease.heartbeat

    def _next_job(self) -> ClaimedJob | None:
        while True:
            with self._claim_lock:  # never held while waiting: others need it, and so do signals
                if self._queue:
                    return self._queue.popleft()
                if self._exhausted or self.stop.is_set():
                    return None
                chunk = max(1, min(self.options.concurrency, 64))
                jobs = self.store.claim(self.owner, self.batch, chunk, self.options.lease)
                if jobs:
                    self._queue.extend(jobs[1:])
                    return jobs[0]
                # Others still hold jobs of this batch: they will land, come back to pending, or
                # their lease will lapse and we reclaim them. Work is done only when none is left.
                at = self.store.soonest_reclaim(self.batch, exclude_owner=self.owner)
                if at is None:
                    if self.options.follow is None:
                        self._exhausted = True
                        return None
                    at = time.time() + self.options.follow  # idle: new jobs may be loaded
                self._reclaim_dead_owners()  # one may have died meanwhile: no need to wait 2R
            self.waiting_for_others = True
            stopped = self.stop.wait(min(1.0, max(0.05, at - time.time())))
            self.waiting_for_others = False
            if stopped:
                return None

    def _release_queue(self) -> None:
        with self._claim_lock:
            ids = [j.id for j in self._queue]
            self._queue.clear()
        if ids:
            try:
                self.store.release(ids, self.owner)
            except StoreError as exc:
                log.warning("could not release %d claimed job(s): %s", len(ids), exc)

    def _thread_main(self) -> None:
        while not self.stop.is_set():
            try:
                job = self._next_job()
                if job is None:
                    return
                self._process(_JobRun(job, job.lookup_needed))
            except _Lost:
                self._count("lost")
            except StoreError as exc:
                self._fatal(f"the database failed: {exc}")
            except Exception as exc:  # a bug: stop safely, say so
                log.exception("unexpected error in a worker")
                self._fatal(f"internal error: {type(exc).__name__}: {scrub(str(exc))}")

    # -- one job ----------

    def _should_stop(self, state: RetryCallState) -> bool:
        run: _JobRun = state.args[0]
        return (
            self.stop.is_set()
            or run.tries >= self.options.max_attempts
            or run.throttled >= self.options.max_attempts * THROTTLE_FACTOR
        )

    def _wait(self, state: RetryCallState) -> float:
        assert state.outcome is not None
        outcome: Outcome = state.outcome.result()
        if outcome.retry_after is not None:
            return float(outcome.retry_after)
        run: _JobRun = state.args[0]
        n = (run.throttled if outcome.throttled else run.tries) - 1
        backoff = min(self.options.backoff_max, self.options.backoff_base * 2.0**n)
        return backoff * (1 - 0.25 * random.random())

    def _sleep(self, seconds: float) -> None:
        self.stop.wait(seconds)

    def _process(self, run: _JobRun) -> None:
        outcome: Outcome = self._retrying(self._counted_attempt, run)
        if outcome.action not in RETRYABLE:
            return
        job = run.job
        if self.stop.is_set():
            # Interrupted or halted: hand it back, remembering whether a look-up is owed.
            self._move(run, None, state=State.PENDING, lookup_needed=run.lookup_needed)
            return
        message = f"gave up after {run.tries + run.throttled} attempts: {outcome.message}"
        self._move(
            run, None, state=State.FAILED, last_error=message, lookup_needed=run.lookup_needed
        )
        self._count("failed")
        log.info("%s failed: %s", job.reference_id, message)

    def _before_sleep(self, state: RetryCallState) -> None:
        self._count("retries")

    def _move(self, run: _JobRun, attempt: AttemptRecord | None, **values: Any) -> None:
        if not self.store.transition(run.job.id, self.owner, attempt, self.owner, **values):
            log.warning("%s was taken over by another worker; dropping it", run.job.reference_id)
            raise _Lost

    def _generate_if_lease_fresh(
        self, video: str, audio: str, reference_id: str, disable_asd: bool, retry_count: int
    ) -> Answer:
        # Checked after the governor's wait, right before the bytes leave. A stalled database
        # pauses sending; one that stays away for a whole lease stops the run.
        give_up = time.monotonic() + self.options.lease.seconds
        while not self._lease_is_fresh():
            if time.monotonic() > give_up:
                self._fatal("leases could not be renewed (is the database reachable?); stopped")
                raise Stopped
            if self.stop.wait(0.05):
                raise Stopped
        return self.api.generate(video, audio, reference_id, disable_asd, retry_count=retry_count)

    def _call(self, fn: Callable[[], Answer]) -> tuple[Answer | None, BaseException | None]:
        self._count("requests")
        try:
            with self.governor.slot(self.stop):
                return fn(), None
        except (httpx.TransportError, httpx.StreamError, ResponseTooLarge) as exc:
            return None, exc

    def _counted_attempt(self, run: _JobRun) -> Outcome:
        outcome = self._attempt(run)
        if outcome.throttled:
            run.throttled += 1
        else:
            run.tries += 1
        return outcome

    def _attempt(self, run: _JobRun) -> Outcome:
        job = run.job
        if run.lookup_needed:
            outcome = self._lookup(run)
            if outcome.action is not Action.ACCEPTED or outcome.request_id:
                return outcome
            run.lookup_needed = False
        started = time.monotonic()
        try:
            answer, exc = self._call(
                lambda: self._generate_if_lease_fresh(
                    job.video_url,
                    job.audio_url,
                    job.reference_id,
                    job.disable_asd,
                    retry_count=run.posts,
                )
            )
        except Stopped:
            return Outcome(Action.RETRY, "stopped before sending")
        run.posts += 1
        if answer is not None:
            outcome = classify_answer(answer.status, answer.headers, answer.body)
            self.governor.observe(outcome.throttled)
        else:
            assert exc is not None
            outcome = classify_exception(exc)
        duration = int((time.monotonic() - started) * 1000)
        if outcome.retry_after:
            self.governor.pause(outcome.retry_after)
        message = scrub(outcome.message)
        attempt = AttemptRecord(
            "generate",
            outcome.action.value,
            outcome.status,
            None if outcome.action is Action.ACCEPTED else message,
            duration,
            outcome.request_id,
        )
        values: dict[str, Any] = {
            "attempts": job.attempts + run.posts,
            "last_http_status": outcome.status,
            "last_error": None if outcome.action is Action.ACCEPTED else message,
        }
        action = outcome.action
        if action is Action.ACCEPTED:
            values.update(
                state=State.SUBMITTED,
                request_id=outcome.request_id,
                submitted_at=utcnow(),
                lookup_needed=False,
            )
        elif action is Action.RETRY:
            values.update(lookup_needed=False)
        elif action is Action.AMBIGUOUS:
            run.lookup_needed = True
            values.update(lookup_needed=True)
        elif action is Action.FAIL_JOB:
            values.update(state=State.FAILED, lookup_needed=False)
        else:
            values.update(state=State.HALTED, lookup_needed=False)
        self._move(run, attempt, **values)
        log.debug(
            "%s POST → %s %s (%d ms)",
            job.reference_id,
            outcome.status or "-",
            outcome.request_id or message,
            duration,
        )
        if action is Action.ACCEPTED:
            self._count("submitted")
        elif action is Action.FAIL_JOB:
            self._count("failed")
            log.info("%s failed: %s", job.reference_id, message)
        elif action is Action.HALT_BATCH:
            self._count("halted")
            self._halt(message)
        return outcome

    def _lookup(self, run: _JobRun) -> Outcome:
        """Ask the API whether an earlier POST of this job landed."""
        job = run.job
        started = time.monotonic()
        request_id: str | None = None
        try:
            answer, exc = self._call(lambda: self.api.find_by_reference(job.reference_id))
            if answer is not None:
                try:
                    request_id, outcome = classify_lookup(
                        answer.status, answer.headers, answer.body, job.reference_id
                    )
                except FilterIgnored:
                    answer, exc = self._call(lambda: self.api.get_request(job.reference_id))
                    if answer is not None:
                        request_id, outcome = classify_direct_lookup(
                            answer.status, answer.headers, answer.body, job.reference_id
                        )
            if answer is None:
                assert exc is not None
                outcome = classify_exception(exc, idempotent=True)
        except Stopped:
            return Outcome(Action.RETRY, "stopped before the look-up")
        duration = int((time.monotonic() - started) * 1000)
        if answer is not None:
            self.governor.observe(outcome.throttled)
        if outcome.retry_after:
            self.governor.pause(outcome.retry_after)
        if outcome.action is Action.ACCEPTED:
            kind = "found" if request_id else "not_found"
        else:
            kind = outcome.action.value
        message = scrub(outcome.message)
        attempt = AttemptRecord(
            "lookup",
            kind,
            outcome.status,
            None if outcome.action is Action.ACCEPTED else message,
            duration,
            request_id,
        )
        log.debug(
            "%s look-up → %s %s", job.reference_id, outcome.status or "-", request_id or message
        )
        if request_id:
            self._move(
                run,
                attempt,
                state=State.SUBMITTED,
                request_id=request_id,
                submitted_at=utcnow(),
                lookup_needed=False,
                last_error=None,
            )
            self._count("submitted")
            self._count("found_by_lookup")
        elif outcome.action is Action.HALT_BATCH:
            self._move(
                run,
                attempt,
                state=State.HALTED,
                last_error=message,
                last_http_status=outcome.status,
                lookup_needed=True,
            )
            self._count("halted")
            self._halt(message)
        else:
            self._move(run, attempt)
        return outcome
