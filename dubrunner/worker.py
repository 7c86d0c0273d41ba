"""Claim → (look up) → send → classify → decide → record, on a few threads, until the work runs
out or a stop comes. Each outcome is committed the moment it is known; a request_id is never held
only in memory, and a job whose POST may have landed is always looked up before it is sent again.
What each answer means for the job is decided in decisions.py; this module does the I/O."""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from tenacity import RetryCallState, Retrying, retry_if_result

from dubrunner.api import Answer, ApiClient, SendWindowClosed
from dubrunner.db import StoreError
from dubrunner.decisions import (
    Count,
    Decision,
    Next,
    Policy,
    Progress,
    after_lookup,
    after_send,
    backoff,
    files_unusable,
    not_the_api,
    on_stop,
)
from dubrunner.errors import (
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
from dubrunner.governor import Governor, Stopped, paced_interval
from dubrunner.health import OUTAGE_ADVICE, HealthTeller, OutageTooLong, ServerHealth
from dubrunner.holds import Holds, Lost
from dubrunner.localmedia import Digests
from dubrunner.records import AttemptRecord, ClaimedJob, Lease, Tally
from dubrunner.redact import scrub
from dubrunner.running import Report, Run
from dubrunner.states import State
from dubrunner.store import Store
from dubrunner.uploads import FileChanged, FilePart, parts_of

log = logging.getLogger("dubrunner")
_ANSWERED = Outcome(Action.ACCEPTED, "answered")  # a look-up the API answered


@dataclass(frozen=True)
class WorkerOptions:
    concurrency: int = 4
    max_attempts: int = 8
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    grace_seconds: float = 30.0  # after a stop, how long in-flight requests may take
    request_timeout: float = 60.0  # the HTTP read timeout; leases derive from it (Lease)
    # After an ambiguous answer, how long the server may still take to create the request: a
    # look-up that finds nothing sooner proves nothing, so the job waits and is looked up again.
    lookup_grace: float = 30.0
    rate: float | None = None  # requests per second, for the governor
    burst: int = 1
    rate_shared: bool = False  # --rate is for all workers on the database together
    rate_auto: bool = False  # --rate auto: find the server's limit (governor.observe)
    follow: float | None = None  # when nothing is left, look for new jobs this often (--follow)
    # How long the API may fail as a whole before the batch halts (None: wait for ever).
    outage_timeout: float | None = 600.0
    upload_concurrency: int = 2  # uploads of local files at once (within --concurrency)

    @property
    def lease(self) -> Lease:
        return Lease(self.request_timeout)

    @property
    def policy(self) -> Policy:
        return Policy(self.max_attempts, self.lookup_grace)

    def governor(self, store: Store, api: ApiClient) -> Governor:
        """The governor of every request `api` sends (submits, look-ups, polls): one budget;
        with rate_shared, its rate is booked in the database."""
        shared = None
        if self.rate_shared and self.rate:
            interval = paced_interval(self.rate)
            shared = functools.partial(store.reserve_rate_slots, api.base_url, interval)
        governor = Governor(
            self.rate, self.concurrency, self.burst, shared=shared, auto=self.rate_auto
        )
        api.pacer = governor
        return governor


@dataclass
class RunReport(Report):
    submitted: int = 0
    failed: int = 0
    halted: int = 0
    retries: int = 0
    requests: int = 0
    found_by_lookup: int = 0
    deferred: int = 0  # jobs handed back until a look-up can prove their absence
    lost: int = 0  # jobs another worker took over (our lease had lapsed)
    upload_bytes: int = 0  # bytes of local files sent so far (of upload_total started)
    upload_total: int = 0


@dataclass
class _Claim:
    """One claim of one job, as this worker sees it between tries."""

    job: ClaimedJob
    lookup_owed: bool
    lookup_after: float | None
    tries: int  # answers that counted against --max-attempts, this claim and earlier ones
    posts: int  # POSTs sent, all claims included
    throttled: int = 0  # answers of this claim that only said "slow down"
    last_status: int | None = None

    @classmethod
    def of(cls, job: ClaimedJob) -> _Claim:
        return cls(job, job.lookup_owed, job.lookup_after, job.tries, job.posts)

    @property
    def progress(self) -> Progress:
        return Progress(self.tries, self.throttled, self.posts, self.lookup_owed, self.lookup_after)


class Worker(Run):
    report: RunReport

    def __init__(
        self,
        store: Store,
        api: ApiClient,
        governor: Governor,
        options: WorkerOptions,
        batch: str | None,
        health: ServerHealth | None = None,
    ) -> None:
        super().__init__()
        self.store = store
        self.api = api
        self.governor = governor
        self.health = health or ServerHealth(api.base_url, options.outage_timeout)
        self.options = options
        self.policy = options.policy
        self.batch = batch
        self.report = RunReport()
        self.holds = Holds(
            store,
            self.owner,
            batch,
            options.lease,
            options.concurrency,
            options.follow,
            self.stop,
        )
        self._heartbeat_stop = threading.Event()
        self._uploads = threading.BoundedSemaphore(max(1, options.upload_concurrency))
        self._digests = Digests(store.cached_digest, store.save_digest)
        self._teller = HealthTeller(self.health, store.record_health, self.owner)
        # One policy for every job: tenacity keeps per-call state thread-locally (9.x).
        self._retrying = Retrying(
            stop=lambda _: self.stop.is_set(),
            wait=self._wait,
            retry=retry_if_result(lambda d: d.next is Next.AGAIN),
            sleep=self._sleep,
            retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
            before_sleep=lambda _: self.add("retries"),
        )

    @property
    def waiting_for(self) -> str | None:
        """What the workers wait for when no job can be claimed now, in words; None: nothing."""
        return self.holds.waiting_for

    # -- the run ----------

    def run(self, tick: Callable[[], None] | None = None) -> RunReport:
        """Work until nothing is left to claim or a stop; call `tick` from this thread meanwhile."""
        self.store.start_group_commit()
        self.holds.reclaim_dead_owners()
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
            self._teller.tell()
            self.holds.release_queue()
            if any(t.is_alive() for t in threads):
                # Their POSTs may still land: the next run looks them up once they have settled.
                try:
                    self.store.abandon_leases(self.owner, self.options.lease)
                except StoreError as exc:
                    log.warning("could not hand back in-flight jobs: %s", exc)
            if tick is not None:
                tick()
        return self.report

    def work_once(self) -> bool:
        """Claim one job and see it through on the calling thread; False when there was none to
        claim. No heartbeat runs: the model check drives workers step by step with this."""
        job = self.holds.take_one()
        if job is None:
            return False
        self._see_through(job)
        return True

    def _thread_main(self) -> None:
        while not self.stop.is_set():
            try:
                job = self.holds.next_job()
            except StoreError as exc:
                self.fatal(f"the database failed: {exc}")
                return
            if job is None:
                return
            self._see_through(job)

    def _see_through(self, job: ClaimedJob) -> None:
        try:
            self.guarded(lambda: self._process(_Claim.of(job)))
        finally:
            self.holds.done_with(job.id)

    def _heartbeat(self) -> None:
        while not self._heartbeat_stop.wait(self.options.lease.heartbeat):
            self._teller.tell()
            self.holds.renew()

    # -- one job ----------

    def _sleep(self, seconds: float) -> None:
        self.stop.wait(seconds)

    def _wait(self, state: RetryCallState) -> float:
        assert state.outcome is not None
        decision: Decision = state.outcome.result()
        if decision.wait is not None:
            return decision.wait
        run: _Claim = state.args[0]
        failures = run.throttled if decision.throttled else run.tries
        return backoff(failures, self.options.backoff_base, self.options.backoff_max)

    def _process(self, run: _Claim) -> None:
        try:
            decision: Decision = self._retrying(self._step, run)
        except Lost:
            self.add("lost")
            return
        if decision.next is Next.AGAIN:  # a stop came between tries
            self._apply(run, on_stop(run.progress), None)

    def _step(self, run: _Claim) -> Decision:
        """One try: the look-up the job owes, then (if it proved the job absent) its POST."""
        if run.lookup_owed:
            decision = self._lookup(run)
            if decision.next is not Next.SEND:
                return decision
            run.lookup_owed, run.lookup_after = False, None
        return self._send(run)

    def _apply(self, run: _Claim, d: Decision, attempt: AttemptRecord | None) -> None:
        """Record a decision through the store's verbs, and in the run's counters."""
        job, store, owner = run.job, self.store, self.owner
        if d.charged:
            run.tries += 1
        if d.throttled:
            run.throttled += 1
        run.lookup_owed, run.lookup_after = d.lookup_owed, d.lookup_after
        tally = Tally(run.posts, run.tries, run.last_status, scrub(d.error) if d.error else None)
        owed, after = d.lookup_owed, d.lookup_after
        if d.state is State.SUBMITTED:
            assert d.request_id is not None
            moved = store.mark_submitted(job.id, owner, d.request_id, attempt, tally)  # type: ignore[arg-type]
        elif d.state is State.FAILED:
            moved = store.mark_failed(job.id, owner, attempt, tally, owed, after)
        elif d.state is State.HALTED:
            moved = store.mark_halted(job.id, owner, attempt, tally, owed, after)
        elif d.state is State.PENDING:
            moved = store.hand_back(job.id, owner, attempt, owed, after)
        else:
            moved = store.record_try(job.id, owner, attempt, tally, owed, after)
        if not moved:
            log.warning("%s was taken over by another worker; dropping it", job.reference_id)
            raise Lost
        if d.count is Count.FOUND:
            self.add(Count.SUBMITTED)
        if d.count is not None:
            self.add(d.count)
        if d.note:
            log.warning("%s: %s", job.reference_id, scrub(d.note))
        if d.count is Count.FAILED:
            log.info("%s failed: %s", job.reference_id, scrub(d.error or ""))
        if d.halt:
            self.halt(scrub(d.halt))  # the first reason wins: a health verdict came first

    # -- sending ----------

    def _call(
        self, fn: Callable[[], Answer], urgent: bool = False
    ) -> tuple[Answer | None, BaseException | None]:
        """One request under the health gate and the governor; `urgent` (a POST) goes before
        look-ups waiting for the same turn of the rate."""
        try:
            with self.health.gate(self.stop), self.governor.slot(self.stop, urgent):
                self.add("requests")
                return fn(), None
        except (httpx.TransportError, httpx.StreamError, ResponseTooLarge) as exc:
            return None, exc
        except OutageTooLong as exc:
            self.halt(str(exc), OUTAGE_ADVICE)
            raise Stopped from None

    def _upload(
        self, run: _Claim, files: tuple[FilePart, FilePart]
    ) -> tuple[Answer | None, BaseException | None]:
        """POST generate-with-media, at most --upload-concurrency at once."""
        job = run.job

        def go() -> Answer:
            self.add("upload_total", files[0].size + files[1].size)
            return self.api.generate_with_media(
                *files,
                job.reference_id,
                job.disable_active_speaker_detection,
                retry_count=run.posts,
                guard=self.holds.send_window(job, self.fatal),
                hold=self.holds.body_guard(job),
                sent=lambda n: self.add("upload_bytes", n),
            )

        while not self._uploads.acquire(timeout=0.1):
            if self.stop.is_set():
                raise Stopped
        try:
            while True:
                try:
                    return self._call(go)
                except SendWindowClosed:
                    continue  # nothing left: confirm the claim again
        finally:
            self._uploads.release()

    def _post(self, run: _Claim) -> tuple[Answer | None, BaseException | None]:
        job = run.job
        while True:
            try:
                return self._call(
                    lambda: self.api.generate(
                        job.video_url,
                        job.audio_url,
                        job.reference_id,
                        job.disable_active_speaker_detection,
                        retry_count=run.posts,
                        guard=self.holds.send_window(run.job, self.fatal),
                    ),
                    urgent=True,
                )
            except SendWindowClosed:
                continue  # nothing left: confirm the claim again

    def _send(self, run: _Claim) -> Decision:
        job = run.job
        started = time.monotonic()
        files = parts_of(job, self._digests) if job.is_local else None
        if isinstance(files, str):  # nothing sent: the files are not those loaded
            decision = files_unusable(files, run.progress)
            self._apply(run, decision, None)
            return decision
        try:
            answer, exc = self._upload(run, files) if files else self._post(run)
        except Stopped:
            return Decision(Next.AGAIN, lookup_owed=run.lookup_owed)  # nothing was sent
        except FileChanged as changed:  # the body stopped short of its end: nothing to look up
            decision = files_unusable(str(changed), run.progress)
            self._apply(run, decision, None)
            return decision
        run.posts += 1
        if answer is not None:
            outcome = classify_answer(answer.status, answer.headers, answer.body)
            self.governor.observe(outcome.throttled)
        else:
            assert exc is not None
            outcome = classify_exception(exc)
        if outcome.retry_after:
            self.governor.pause(outcome.retry_after)
        run.last_status = outcome.status
        route = "generate-with-media" if files else "generate"
        verdict = self.health.observe(job.reference_id, outcome, f"POST v1/lipsync/{route}")
        now = time.time()
        if verdict.hand_back and verdict.halt:
            decision = not_the_api(outcome, run.progress, self.policy, now, verdict.halt)
        else:
            decision = after_send(outcome, run.progress, self.policy, now, verdict.free)
        if verdict.halt:
            self.halt(scrub(verdict.halt), verdict.advice or OUTAGE_ADVICE)
        message = scrub(outcome.message)
        request_id = scrub(outcome.request_id) if outcome.request_id else None
        attempt = AttemptRecord(
            "generate",
            outcome.action.value,
            outcome.status,
            None if outcome.action is Action.ACCEPTED else message,
            _ms(started),
            request_id,
        )
        log.debug(
            "%s POST → %s %s (%d ms)",
            job.reference_id,
            outcome.status or "-",
            request_id or message,
            _ms(started),
        )
        self._apply(run, decision, attempt)
        return decision

    # -- looking up ----------

    def _ask(self, run: _Claim, ended: frozenset[str]) -> tuple[LookupResult, int | None]:
        """One look-up by reference_id: the list filtered by it, then, unless the list found the
        request, GET requests/{reference_id}; the result and the HTTP status it came with."""
        ref = run.job.reference_id
        answer, exc = self._call(lambda: self.api.find_by_reference(ref))
        if answer is not None:
            result = classify_lookup(answer.status, answer.headers, answer.body, ref, ended)
            # The list ignoring its filter, or not there at all (a 404 or 405 for the list
            # route): the request itself can still be asked for by reference_id.
            missing = result.kind is Lookup.ERROR and answer.status in (404, 405)
            # "Not found" in the list is not proof: a list served from a lagging index may not
            # show a request yet that GET requests/{reference_id} already returns (found by an
            # outside attack: 3 jobs paid twice). Absence is proven only when both say so.
            unseen = result.kind is Lookup.NOT_FOUND
            if result.kind is not Lookup.FILTER_IGNORED and not missing and not unseen:
                return result, answer.status
            answer, exc = self._call(lambda: self.api.get_request(ref))
            if answer is not None:
                result = classify_direct_lookup(
                    answer.status, answer.headers, answer.body, ref, ended
                )
                return result, answer.status
        assert exc is not None
        return LookupResult(Lookup.ERROR, outcome=classify_exception(exc, idempotent=True)), None

    def _lookup(self, run: _Claim) -> Decision:
        """Ask the API whether an earlier POST of this job landed, and act on the answer."""
        job = run.job
        started = time.monotonic()
        ended = self.store.ended_requests(job.id)
        try:
            result, status = self._ask(run, ended)
        except Stopped:
            return Decision(Next.AGAIN, lookup_owed=True, lookup_after=run.lookup_after)
        error: Outcome | None = result.outcome
        if status is not None:  # the server answered: what it said teaches the governor
            self.governor.observe(error is not None and error.throttled)
        if error is not None and error.retry_after:
            self.governor.pause(error.retry_after)
        verdict = self.health.observe(job.reference_id, error or _ANSWERED, "a look-up", send=False)
        now = time.time()
        if verdict.hand_back and verdict.halt:
            decision = not_the_api(_ANSWERED, run.progress, self.policy, now, verdict.halt)
        else:
            decision = after_lookup(result, run.progress, self.policy, now, verdict.free)
        if verdict.halt:
            self.halt(scrub(verdict.halt), verdict.advice or OUTAGE_ADVICE)
        message = scrub(result.message)
        request_id = scrub(result.request_id) if result.request_id else None
        attempt = AttemptRecord(
            "lookup",
            result.kind.value if error is None else error.action.value,
            status,
            None if message in ("found", "not found") else message,
            _ms(started),
            request_id,
        )
        log.debug("%s look-up → %s %s", job.reference_id, status or "-", request_id or message)
        if decision.next is Next.SEND:  # proven absent: the look-up is settled, the POST follows
            self._apply(run, Decision(Next.AGAIN), attempt)
        else:
            self._apply(run, decision, attempt)
        return decision


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
