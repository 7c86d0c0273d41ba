"""The jobs one worker holds, and the proof that it still holds them (see records.Lease).

Claims come in chunks (one write for several jobs) into a queue the worker's threads share.
Every write that asserts the hold — the claim, the heartbeat's renewal, a confirmation for one
job — is stamped on a clock that counts through a suspended machine; a POST may leave only
within a window of the last stamp of its job. A renewal that no longer finds a job means another
worker took it (our lease had lapsed): nothing more is sent for it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from dubrunner.api import SendWindowClosed, boottime
from dubrunner.db import StoreError
from dubrunner.governor import Stopped
from dubrunner.records import ClaimedJob, Lease
from dubrunner.running import owner_is_dead
from dubrunner.store import Store
from dubrunner.uploads import UploadInterrupted

# Why no job can be claimed now (Store.soonest_reclaim), as the progress line says it.
_WAITING_FOR = {"held": "jobs other workers hold", "lookup": "jobs to look up after --lookup-grace"}

log = logging.getLogger("dubrunner")


class Lost(Exception):
    """The job is no longer ours: drop it."""


class Holds:
    def __init__(
        self,
        store: Store,
        owner: str,
        batch: str | None,
        lease: Lease,
        chunk: int,
        follow: float | None,
        stop: threading.Event,
    ) -> None:
        self.store = store
        self.owner = owner
        self.batch = batch
        self.lease = lease
        self.chunk = max(1, min(chunk, 64))
        self.follow = follow  # when nothing is left, look for new jobs this often
        self.stop = stop
        self._lock = threading.Lock()  # the held and taken jobs
        self._claim_lock = threading.Lock()  # the queue (never held while waiting)
        self._queue: deque[ClaimedJob] = deque()
        # Jobs claimed and not yet settled, with the moment (on boottime) of the last write
        # that asserted the hold.
        self._held: dict[int, float] = {}
        self._taken: set[int] = set()  # held jobs a renewal found no longer ours
        self._exhausted = False
        self._dead_owners: set[str] = set()
        self.waiting_for: str | None = None  # why no job can be claimed now, for the progress

    # -- taking jobs ----------

    def take_one(self) -> ClaimedJob | None:
        """One job claimed for the caller alone (no queue, no waiting)."""
        started = boottime()
        jobs = self.store.claim(self.owner, self.batch, 1, self.lease)
        if not jobs:
            return None
        with self._lock:
            self._held[jobs[0].id] = started
        return jobs[0]

    def next_job(self) -> ClaimedJob | None:
        """The next job to work on; None when there is none left (or a stop came)."""
        while True:
            with self._claim_lock:
                if self._queue:
                    return self._queue.popleft()
                if self._exhausted or self.stop.is_set():
                    return None
                started = boottime()
                jobs = self.store.claim(self.owner, self.batch, self.chunk, self.lease)
                if jobs:
                    with self._lock:
                        self._held.update((j.id, started) for j in jobs)
                    self._queue.extend(jobs[1:])
                    return jobs[0]
                # Others still hold jobs of this batch, or jobs wait for their look-up's grace:
                # they will land, come back, or become claimable. Work is done only when none is
                # left.
                soonest = self.store.soonest_reclaim(self.batch, exclude_owner=self.owner)
                at, why = soonest if soonest else (None, None)
                with self._lock:
                    busy = bool(self._held)
                if at is None and busy:
                    at = time.time() + 0.1  # our other threads may yet hand a job back
                if at is None:
                    if self.follow is None:
                        self._exhausted = True
                        return None
                    at = time.time() + self.follow  # idle: new jobs may be loaded
                self.reclaim_dead_owners()  # one may have died meanwhile: no need to wait 2R
            self.waiting_for = _WAITING_FOR.get(why or "")
            stopped = self.stop.wait(min(1.0, max(0.05, at - time.time())))
            self.waiting_for = None
            if stopped:
                return None

    def done_with(self, job_id: int) -> None:
        with self._lock:
            self._held.pop(job_id, None)
            self._taken.discard(job_id)

    def release_queue(self) -> None:
        """Give back the claimed jobs nobody started (a stop came)."""
        with self._claim_lock:
            ids = [j.id for j in self._queue]
            self._queue.clear()
        if ids:
            try:
                self.store.release(ids, self.owner)
            except StoreError as exc:
                log.warning("could not release %d claimed job(s): %s", len(ids), exc)

    def reclaim_dead_owners(self) -> None:
        """Jobs of a worker on this host that provably died settle now (see Lease)."""
        for owner in self.store.owners_of_submitting(self.batch):
            if owner not in self._dead_owners and owner_is_dead(owner):
                self._dead_owners.add(owner)
                n = self.store.mark_owner_dead(owner)
                log.info("%d job(s) of a dead worker (%s) will be looked up", n, owner)

    # -- keeping them ----------

    def renew(self) -> None:
        """One heartbeat: extend the hold on every job held, and learn which were taken."""
        with self._lock:
            held = set(self._held)
        started = boottime()  # before the write: the hold is asserted as of then
        try:
            renewed = self.store.renew_leases(self.owner, self.lease, time.time())
        except StoreError as exc:
            log.warning("could not renew leases: %s", exc)
            return
        with self._lock:
            for job_id in renewed & self._held.keys():
                self._held[job_id] = max(self._held[job_id], started)
            taken = (held - renewed) & self._held.keys()
            self._taken |= taken
        if taken:
            log.warning("%d job(s) were taken over by another worker", len(taken))

    def still_ours(self, job: ClaimedJob) -> None:
        with self._lock:
            taken = job.id in self._taken
        if taken:
            log.warning("%s was taken over by another worker; dropping it", job.reference_id)
            raise Lost

    def body_guard(self, job: ClaimedJob) -> Callable[[], None]:
        """Called between chunks of an upload: the body goes on only while the job is ours and
        its hold was renewed within half a lease (another worker may take it once the whole
        lease has passed); otherwise it stops, so no body of ours can end after that."""

        def guard() -> None:
            with self._lock:
                taken = job.id in self._taken
                last = self._held.get(job.id)
            if taken or last is None or boottime() >= last + self.lease.request_timeout:
                raise UploadInterrupted(f"{job.reference_id}: the hold lapsed during the upload")

        return guard

    def send_window(self, job: ClaimedJob, fatal: Callable[[str], None]) -> Callable[[], None]:
        """The guard the API client calls just before the first byte of a POST leaves: the job
        must be covered by a write that asserted our hold on it less than a window ago. When the
        last claim or renewal is too old (a pause, a slow database), the hold is confirmed for
        this job alone first, in one atomic guarded write.

        A stalled database pauses sending; one that stays away for a whole lease stops the run."""
        lease = self.lease
        give_up = boottime() + lease.seconds
        while True:
            self.still_ours(job)
            if self.stop.is_set():
                raise Stopped
            with self._lock:
                closes = self._held.get(job.id, -1.0) + lease.window
            if boottime() < closes:
                break
            started = boottime()
            if not self.store.confirm_send(job.id, self.owner, lease, time.time()):
                log.warning("%s was taken over; dropping it", job.reference_id)
                raise Lost
            with self._lock:
                self._held[job.id] = started
            if boottime() > give_up:
                fatal("the database is too slow to confirm a claim before sending; stopped")
                raise Stopped

        def guard() -> None:
            if boottime() >= closes:
                raise SendWindowClosed(f"{job.reference_id}: the send window closed")

        return guard
