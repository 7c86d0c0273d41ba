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

from dubrunner.api import Answer, ApiClient, SendWindowClosed, boottime
from dubrunner.errors import (
    RETRYABLE,
    Action,
    Lookup,
    LookupResult,
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
    # After an ambiguous answer, how long the server may still take to create the request: a
    # look-up that finds nothing sooner proves nothing, so the job waits and is looked up again.
    lookup_grace: float = 30.0
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
    deferred: int = 0  # jobs handed back until a look-up can prove their absence
    lost: int = 0  # jobs another worker took over (our lease had lapsed)
    halt_message: str | None = None
    fatal: str | None = None
    interrupted: bool = False
    started: float = field(default_factory=time.monotonic)


class _Lost(Exception):
    """The job is no longer ours: drop it."""


class _Deferred(Exception):
    """The job went back to pending until its look-up can mean something (lookup_after)."""


@dataclass
class _JobRun:
    job: ClaimedJob
    lookup_needed: bool
    lookup_after: float | None
    tries: int  # POSTs that counted against --max-attempts, this claim and earlier ones
    posts: int = 0
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
        self._lock = threading.Lock()  # the report's counters, the held jobs
        self._claim_lock = threading.Lock()  # the queue of claimed jobs
        self._queue: deque[ClaimedJob] = deque()
        self._held: set[int] = set()  # jobs claimed and not yet settled by this worker
        self._taken: set[int] = set()  # held jobs a renewal found no longer ours
        self._exhausted = False
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
            with self._lock:
                held = set(self._held)
            try:
                renewed = self.store.renew_leases(self.owner, lease)
            except StoreError as exc:
                log.warning("could not renew leases: %s", exc)
                continue
            # A job we hold that the renewal did not find is no longer ours (we were paused past
            # its lease and another worker took it): send nothing more for it.
            with self._lock:
                taken = (held - renewed) & self._held
                self._taken |= taken
            if taken:
                log.warning("%d job(s) were taken over by another worker", len(taken))

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
                    with self._lock:
                        self._held.update(j.id for j in jobs)
                    self._queue.extend(jobs[1:])
                    return jobs[0]
                # Others still hold jobs of this batch, or jobs wait for their look-up's grace:
                # they will land, come back, or become claimable. Work is done only when none is
                # left.
                at = self.store.soonest_reclaim(self.batch, exclude_owner=self.owner)
                with self._lock:
                    busy = bool(self._held)
                if at is None and busy:
                    at = time.time() + 0.1  # our other threads may yet hand a job back
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
            except StoreError as exc:
                self._fatal(f"the database failed: {exc}")
                return
            if job is None:
                return
            self._see_through(job)

    def work_once(self) -> bool:
        """Claim one job and see it through on the calling thread; False when there was none to
        claim. No heartbeat runs: the model check drives workers step by step with this."""
        jobs = self.store.claim(self.owner, self.batch, 1, self.options.lease)
        if not jobs:
            return False
        with self._lock:
            self._held.add(jobs[0].id)
        self._see_through(jobs[0])
        return True

    def _see_through(self, job: ClaimedJob) -> None:
        try:
            self._process(_JobRun(job, job.lookup_needed, job.lookup_after, job.tries))
        except _Lost:
            self._count("lost")
        except _Deferred:
            self._count("deferred")
        except StoreError as exc:
            self._fatal(f"the database failed: {exc}")
        except Exception as exc:  # a bug: stop safely, say so
            log.exception("unexpected error in a worker")
            self._fatal(f"internal error: {type(exc).__name__}: {scrub(str(exc))}")
        finally:
            with self._lock:
                self._held.discard(job.id)
                self._taken.discard(job.id)

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
        n = max(0, (run.throttled if outcome.throttled else run.tries) - 1)
        backoff = min(self.options.backoff_max, self.options.backoff_base * 2.0**n)
        return backoff * (1 - 0.25 * random.random())

    def _sleep(self, seconds: float) -> None:
        self.stop.wait(seconds)

    def _process(self, run: _JobRun) -> None:
        outcome: Outcome = self._retrying(self._attempt, run)
        if outcome.action not in RETRYABLE:
            return
        job = run.job
        if self.stop.is_set():
            # Interrupted or halted: hand it back, remembering whether a look-up is owed.
            self._move(run, None, state=State.PENDING, lookup_needed=run.lookup_needed)
            return
        message = f"gave up after {job.attempts + run.posts} attempts: {outcome.message}"
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

    def _check_still_ours(self, run: _JobRun) -> None:
        with self._lock:
            taken = run.job.id in self._taken
        if taken:
            log.warning("%s was taken over by another worker; dropping it", run.job.reference_id)
            raise _Lost

    def _send_window(self, run: _JobRun) -> Callable[[], None]:
        """Confirm in the database that the job is still ours, right before its POST; the
        guard the API client calls just before the first byte leaves (see store.Lease).

        A stalled database pauses sending; one that stays away for a whole lease stops the run."""
        lease = self.options.lease
        give_up = boottime() + lease.seconds
        while True:
            self._check_still_ours(run)
            if self.stop.is_set():
                raise Stopped
            started = boottime()
            if not self.store.confirm_send(run.job.id, self.owner, lease, time.time()):
                log.warning("%s was taken over; dropping it", run.job.reference_id)
                raise _Lost
            closes = started + lease.window
            if boottime() < closes:
                break
            if boottime() > give_up:
                self._fatal("the database is too slow to confirm a claim before sending; stopped")
                raise Stopped

        def guard() -> None:
            if boottime() >= closes:
                raise SendWindowClosed(f"{run.job.reference_id}: the send window closed")

        return guard

    def _call(self, fn: Callable[[], Answer]) -> tuple[Answer | None, BaseException | None]:
        self._count("requests")
        try:
            with self.governor.slot(self.stop):
                return fn(), None
        except (httpx.TransportError, httpx.StreamError, ResponseTooLarge) as exc:
            return None, exc

    def _attempt(self, run: _JobRun) -> Outcome:
        job = run.job
        if run.lookup_needed:
            outcome = self._lookup(run)
            if outcome.action is not Action.ACCEPTED or outcome.request_id:
                return outcome
            run.lookup_needed = False
            run.lookup_after = None
        started = time.monotonic()
        try:
            while True:
                try:
                    answer, exc = self._call(
                        lambda: self.api.generate(
                            job.video_url,
                            job.audio_url,
                            job.reference_id,
                            job.disable_asd,
                            retry_count=run.posts,
                            guard=self._send_window(run),
                        )
                    )
                    break
                except SendWindowClosed:
                    continue  # nothing left: confirm the claim again
        except Stopped:
            return Outcome(Action.RETRY, "stopped before sending")
        run.posts += 1
        if answer is not None:
            outcome = classify_answer(answer.status, answer.headers, answer.body)
            self.governor.observe(outcome.throttled)
        else:
            assert exc is not None
            outcome = classify_exception(exc)
        if outcome.throttled:
            run.throttled += 1
        else:
            run.tries += 1
        duration = int((time.monotonic() - started) * 1000)
        if outcome.retry_after:
            self.governor.pause(outcome.retry_after)
        message = scrub(outcome.message)
        request_id = scrub(outcome.request_id) if outcome.request_id else None
        attempt = AttemptRecord(
            "generate",
            outcome.action.value,
            outcome.status,
            None if outcome.action is Action.ACCEPTED else message,
            duration,
            request_id,
        )
        # Whatever is decided next, a POST that may have created the request owes a look-up,
        # and a "not found" means something only once the server has had time to act.
        owed = outcome.lookup_owed
        run.lookup_needed = owed
        run.lookup_after = time.time() + self.options.lookup_grace if owed else None
        values: dict[str, Any] = {
            "attempts": job.attempts + run.posts,
            "tries": run.tries,
            "last_http_status": outcome.status,
            "last_error": None if outcome.action is Action.ACCEPTED else message,
            "lookup_needed": owed,
            "lookup_after": run.lookup_after,
        }
        action = outcome.action
        if action is Action.ACCEPTED:
            values.update(state=State.SUBMITTED, request_id=request_id, submitted_at=utcnow())
        elif action is Action.FAIL_JOB:
            values.update(state=State.FAILED)
        elif action is Action.HALT_BATCH:
            values.update(state=State.HALTED)
        self._move(run, attempt, **values)
        log.debug(
            "%s POST → %s %s (%d ms)",
            job.reference_id,
            outcome.status or "-",
            request_id or message,
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

    def _ask(self, run: _JobRun, ended: frozenset[str]) -> tuple[LookupResult, int | None]:
        """One look-up by reference_id (and the direct GET when the list ignores its filter);
        the result and the HTTP status it came with."""
        ref = run.job.reference_id
        answer, exc = self._call(lambda: self.api.find_by_reference(ref))
        if answer is not None:
            result = classify_lookup(answer.status, answer.headers, answer.body, ref, ended)
            if result.kind is not Lookup.FILTER_IGNORED:
                return result, answer.status
            answer, exc = self._call(lambda: self.api.get_request(ref))
            if answer is not None:
                result = classify_direct_lookup(
                    answer.status, answer.headers, answer.body, ref, ended
                )
                return result, answer.status
        assert exc is not None
        outcome = classify_exception(exc, idempotent=True)
        return LookupResult(Lookup.ERROR, outcome=outcome), None

    def _lookup(self, run: _JobRun) -> Outcome:
        """Ask the API whether an earlier POST of this job landed.

        ACCEPTED with a request_id: it did (the job is now submitted). ACCEPTED without one: it
        provably did not, so sending is safe. Anything else: no answer yet (retry or halt)."""
        job = run.job
        started = time.monotonic()
        ended = self.store.ended_requests(job.id)
        try:
            result, status = self._ask(run, ended)
        except Stopped:
            return Outcome(Action.RETRY, "stopped before the look-up")
        duration = int((time.monotonic() - started) * 1000)
        error = result.outcome
        if error is not None:
            self.governor.observe(error.throttled)
            if error.retry_after:
                self.governor.pause(error.retry_after)
        message = scrub(result.message)
        request_id = scrub(result.request_id) if result.request_id else None
        attempt = AttemptRecord(
            "lookup",
            result.kind.value if error is None else error.action.value,
            status,
            None if message in ("found", "not found") else message,
            duration,
            request_id,
        )
        log.debug("%s look-up → %s %s", job.reference_id, status or "-", request_id or message)
        if result.kind is Lookup.FOUND:
            if result.note != "found":
                log.warning("%s: %s", job.reference_id, message)
            self._move(
                run,
                attempt,
                state=State.SUBMITTED,
                request_id=request_id,
                submitted_at=utcnow(),
                lookup_needed=False,
                lookup_after=None,
                last_error=None,
            )
            self._count("submitted")
            self._count("found_by_lookup")
            return Outcome(Action.ACCEPTED, message, status, request_id=request_id)
        if result.kind is Lookup.NOT_FOUND:
            if run.lookup_after is not None and time.time() < run.lookup_after:
                # The server may still be creating it (a proxy gave up before the backend did):
                # wait, then ask again, before any resend.
                self._move(run, attempt, state=State.PENDING, lookup_needed=True)
                log.debug("%s: not found yet; looked up again after the grace", job.reference_id)
                raise _Deferred
            self._move(run, attempt)
            return Outcome(Action.ACCEPTED, "not found", status)
        assert error is not None
        if error.action is Action.HALT_BATCH:
            self._move(
                run,
                attempt,
                state=State.HALTED,
                last_error=message,
                last_http_status=status,
                lookup_needed=True,
            )
            self._count("halted")
            self._halt(message)
        else:
            self._move(run, attempt)
        return error
