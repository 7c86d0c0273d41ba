"""The job table's worker side: load, claim, leases, and the verbs that move a job.

Every write is one short transaction, and every move of a claimed job is guarded where the data
lives (`WHERE id = :id AND state = 'submitting' AND owner = :me`): zero rows means someone else
moved the job, and the caller drops it. No transaction is ever open across an HTTP call. Column
names live here, in queries and in the models; callers speak in verbs.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import Connection

from dubrunner.db import Database, StoreError, Update
from dubrunner.loading import LoadConflict, cached_digest, load_jobs, save_digest
from dubrunner.models import Attempt, Job, RateBudget
from dubrunner.queries import CURRENT, Queries, back_to_pending, in_batch
from dubrunner.records import (
    AttemptRecord,
    ClaimedJob,
    JobSpec,
    Lease,
    LoadPlan,
    Tally,
    utcnow,
)
from dubrunner.results import Guard, Results
from dubrunner.states import POLLABLE, State
from dubrunner.superseding import SpecOf, Superseded, supersede

__all__ = ["LoadConflict", "Store", "StoreError"]

_CLAIM_COLUMNS = (
    Job.id,
    Job.reference_id,
    Job.video_url,
    Job.audio_url,
    Job.disable_active_speaker_detection,
    Job.lookup_needed,
    Job.attempts,
    Job.lookup_after,
    Job.tries,
    Job.video_sha256,
    Job.audio_sha256,
    Job.video_size,
    Job.audio_size,
)


class Store(Results, Queries):
    def __init__(
        self,
        url: str | None = None,
        *,
        pool_size: int = 5,
        migrate: bool = True,
        create: bool = True,
    ) -> None:
        """`create`: see Database (False: only a database that already holds dubrunner's tables)."""
        self.db = Database(url, pool_size=pool_size, create=create)
        self.url = self.db.url
        self.is_sqlite = self.db.is_sqlite
        self.engine = self.db.engine
        if migrate:
            self.db.upgrade()

    def start_group_commit(self) -> None:
        """From now on this process's frequent writes share commits (see db._GroupCommitter)."""
        self.db.start_group_commit()

    def close(self) -> None:
        self.db.close()

    def upgrade(self) -> tuple[str | None, str]:
        return self.db.upgrade()

    def current_revision(self) -> str | None:
        return self.db.current_revision()

    # -- loading ----------

    def load(
        self,
        batch: str,
        specs: Sequence[JobSpec],
        source: str,
        *,
        dry_run: bool = False,
        allow_same_media: bool = False,
        supersede: bool = False,
    ) -> LoadPlan:
        """Add a manifest's jobs in one transaction: all of them, or (on a conflict) none.
        With `supersede`, a sent job the manifest changed is replaced by a new one (REF~2)."""
        return load_jobs(self.db, batch, specs, source, dry_run, allow_same_media, supersede)

    def supersede(
        self, reference_id: str, spec_of: SpecOf, allow_same_media: bool = False
    ) -> Superseded:
        """Replace a sent job by a new pending one (REF~2); nothing is sent. Raises
        SupersedeRefused, with nothing written, when the job cannot be superseded now."""
        return supersede(self.db, reference_id, spec_of, "dubrunner supersede", allow_same_media)

    def cached_digest(self, path: str, size: int, stamp: int) -> str | None:
        return cached_digest(self.db, path, size, stamp)

    def save_digest(self, path: str, size: int, stamp: int, sha256: str) -> None:
        save_digest(self.db, path, size, stamp, sha256)

    # -- claims and leases ----------

    def claim(self, owner: str, batch: str | None, limit: int, lease: Lease) -> list[ClaimedJob]:
        """Atomically take up to `limit` jobs: first those of dead workers, then pending ones.

        A job reclaimed from an expired lease comes with a look-up owed: its POST may have
        landed, so the caller must ask the API by reference_id before sending it again.
        """
        now = time.time()
        expires, settle = lease.held(now)
        params: dict[str, Any] = {
            "c_now": now,
            "c_owner": owner,
            "c_updated": utcnow(),
            "c_lease": expires,
            "c_settle": settle,
            "c_batch": batch,
        }
        statements = _claim_statements(batch is not None)

        def op(conn: Connection) -> list[ClaimedJob]:
            claimed: list[ClaimedJob] = []
            for stmt in statements:
                room = limit - len(claimed)
                if room <= 0:
                    break
                rows = conn.execute(stmt, {**params, "c_room": room}).all()
                claimed.extend(ClaimedJob(*row) for row in rows)
            claimed.sort(key=lambda j: j.id)
            return claimed

        return self.db.run_write(op)

    def release(self, job_ids: Iterable[int], owner: str) -> int:
        """Give back claimed jobs that were never sent (a stop came first)."""
        ids = list(job_ids)
        if not ids:
            return 0
        with self.db.write() as conn:
            return conn.execute(
                update(Job)
                .where(Job.id.in_(ids), Job.state == State.SUBMITTING, Job.owner == owner)
                .values(back_to_pending())
            ).rowcount

    def renew_leases(self, owner: str, lease: Lease, now: float) -> set[int]:
        """Extend the hold on every job this worker holds, as of `now` (see Lease); the ids it
        still holds (a job taken by another worker after our lease lapsed is not among them)."""
        expires, settle = lease.held(now)
        stmt = (
            update(Job)
            .where(Job.owner == owner, Job.state == State.SUBMITTING)
            .values(lease_expires=expires, settle_at=settle)
            .returning(Job.id)
        )
        return self.db.run_write(lambda conn: set(conn.execute(stmt).scalars()))

    def confirm_send(self, job_id: int, owner: str, lease: Lease, now: float) -> bool:
        """Right before a POST whose cover has lapsed: is the job still ours? If so, it is
        covered again from `now` (see Lease). One atomic guarded UPDATE, so a worker that was
        paused past its lease cannot send a job someone else took."""
        expires, settle = lease.held(now)
        return self._update(
            Guard.OWNED, job_id, owner, None, {"lease_expires": expires, "settle_at": settle}
        )

    def abandon_leases(self, owner: str, lease: Lease) -> int:
        """On the way out with requests maybe in flight: the next run looks them up once the
        server has had time to act on them."""
        settle = time.time() + lease.window + lease.request_timeout
        with self.db.write() as conn:
            return conn.execute(
                update(Job)
                .where(Job.owner == owner, Job.state == State.SUBMITTING)
                .values(lease_expires=settle, settle_at=settle, lookup_needed=True)
            ).rowcount

    def owners_of_submitting(self, batch: str | None) -> list[str]:
        stmt = select(Job.owner).where(Job.state == State.SUBMITTING, Job.owner.is_not(None))
        with self.db.read() as conn:
            return [o for o in conn.execute(in_batch(stmt, batch).distinct()).scalars() if o]

    def mark_owner_dead(self, owner: str) -> int:
        """A provably dead worker's jobs become reclaimable at their settle time."""
        least = sa.func.min if self.is_sqlite else sa.func.least
        with self.db.write() as conn:
            return conn.execute(
                update(Job)
                .where(Job.owner == owner, Job.state == State.SUBMITTING)
                .values(lease_expires=least(Job.lease_expires, Job.settle_at), lookup_needed=True)
            ).rowcount

    def soonest_reclaim(self, batch: str | None, exclude_owner: str) -> tuple[float, str] | None:
        """When the next job that cannot be claimed now becomes claimable (Unix time), and why it
        cannot now: "held" (another worker holds it) or "lookup" (its look-up waits to mean
        something, lookup_after). None when there is no such job."""
        held = select(func.min(Job.lease_expires)).where(
            Job.state == State.SUBMITTING, Job.owner != exclude_owner
        )
        waiting = select(func.min(Job.lookup_after)).where(
            Job.state == State.PENDING, Job.lookup_after.is_not(None)
        )
        with self.db.read() as conn:
            values = [
                (conn.execute(in_batch(held, batch)).scalar(), "held"),
                (conn.execute(in_batch(waiting, batch)).scalar(), "lookup"),
            ]
        present = [(float(at), why) for at, why in values if at is not None]
        return min(present) if present else None

    def reserve_rate_slots(self, name: str, interval: float, n: int) -> list[float]:
        """Book the next `n` request times (Unix seconds) of a rate shared through the database."""
        now = time.time()
        span = n * interval
        stmt = (
            update(RateBudget)
            .where(RateBudget.name == name)
            .values(tat=sa.case((RateBudget.tat > now, RateBudget.tat), else_=now) + span)
            .returning(RateBudget.tat)
        )
        for _ in range(2):
            try:
                with self.db.write() as conn:
                    tat = conn.execute(stmt).scalar()
                    if tat is None:
                        conn.execute(insert(RateBudget).values(name=name, tat=now + span))
                        tat = now + span
            except sa.exc.IntegrityError:  # another worker created the row first: book again
                continue
            first = float(tat) - span
            return [first + i * interval for i in range(n)]
        raise StoreError("could not book a slot of the shared rate")

    def ended_requests(self, job_id: int) -> frozenset[str]:
        """The request_ids of this job that the API said ended badly: history, not the answer to
        a look-up for a new POST (the user retried the job after a remote failure)."""
        stmt = select(Attempt.request_id).where(
            Attempt.job_id == job_id,
            Attempt.kind == "poll",
            Attempt.outcome == State.FAILED,
            Attempt.request_id.is_not(None),
        )
        with self.db.read() as conn:
            return frozenset(r for r in conn.execute(stmt).scalars() if r)

    # -- the verbs of a claimed job (False: it is no longer ours; drop it) ----------

    def mark_submitted(
        self,
        job_id: int,
        owner: str,
        request_id: str,
        attempt: AttemptRecord,
        tally: Tally | None = None,
    ) -> bool:
        """The API holds the job's request: its id is known."""
        values = {
            **_released(State.SUBMITTED),
            **_tallied(tally),
            "request_id": request_id,
            "submitted_at": utcnow(),
            "last_error": None,
            **_lookup(False, None),
        }
        return self._update(Guard.OWNED, job_id, owner, attempt, values)

    def mark_failed(
        self,
        job_id: int,
        owner: str,
        attempt: AttemptRecord | None,
        tally: Tally,
        lookup_owed: bool,
        lookup_after: float | None,
    ) -> bool:
        """The job failed (its own fault, or retries ran out); a look-up stays owed when a POST of
        it may have created a request all the same."""
        values = {
            **_released(State.FAILED),
            **_tallied(tally),
            **_lookup(lookup_owed, lookup_after),
        }
        return self._update(Guard.OWNED, job_id, owner, attempt, values)

    def mark_halted(
        self,
        job_id: int,
        owner: str,
        attempt: AttemptRecord | None,
        tally: Tally,
        lookup_owed: bool,
        lookup_after: float | None,
    ) -> bool:
        """The job met a batch-wide stop (auth, token limit): `resume` sends it again."""
        values = {
            **_released(State.HALTED),
            **_tallied(tally),
            **_lookup(lookup_owed, lookup_after),
        }
        return self._update(Guard.OWNED, job_id, owner, attempt, values)

    def record_try(
        self,
        job_id: int,
        owner: str,
        attempt: AttemptRecord | None,
        tally: Tally,
        lookup_owed: bool,
        lookup_after: float | None,
    ) -> bool:
        """The job stays with this worker for another try; what the last one showed is kept
        (a look-up owed first, if its POST may have landed)."""
        values = {**_tallied(tally), **_lookup(lookup_owed, lookup_after)}
        return self._update(Guard.OWNED, job_id, owner, attempt, values)

    def hand_back(
        self,
        job_id: int,
        owner: str,
        attempt: AttemptRecord | None,
        lookup_owed: bool,
        lookup_after: float | None,
    ) -> bool:
        """Back to pending, for this worker or another later (a stop came, or the job must wait
        until a look-up can mean something)."""
        values = {**back_to_pending(), **_lookup(lookup_owed, lookup_after)}
        return self._update(Guard.OWNED, job_id, owner, attempt, values)

    # -- the one guarded update ----------

    def _update(
        self,
        guard: Guard,
        job_id: int,
        worker: str,
        attempt: AttemptRecord | None,
        values: dict[str, Any],
    ) -> bool:
        """A guarded one-row UPDATE plus its attempt row, in one commit (batched with others
        under group commit). `worker` is the owner the OWNED guard checks, and the attempt's
        author."""
        now = utcnow()
        values = {"updated_at": now, **values}
        params = {f"v_{k}": v for k, v in values.items()}
        params["w_id"] = job_id
        if guard is Guard.OWNED:
            params["w_owner"] = worker
        row = _attempt_row(job_id, attempt, worker, now) if attempt is not None else None
        return self.db.run_update(
            Update(_update_statement(guard, tuple(sorted(values))), params, row)
        )


def _released(state: State) -> dict[str, Any]:
    """The job leaves its worker's hands in `state`."""
    return {"state": state, "owner": None, "lease_expires": None, "settle_at": None}


def _tallied(tally: Tally | None) -> dict[str, Any]:
    if tally is None:
        return {}
    return {
        "attempts": tally.posts,
        "tries": tally.tries,
        "last_http_status": tally.http_status,
        "last_error": tally.error,
    }


def _lookup(owed: bool, after: float | None) -> dict[str, Any]:
    return {"lookup_needed": owed, "lookup_after": after if owed else None}


@functools.lru_cache(maxsize=4)
def _claim_statements(with_batch: bool) -> tuple[sa.Update, sa.Update]:
    """The two claims (expired leases, then pending jobs), built once: only parameters vary."""
    expired = select(Job.id).where(
        Job.state == State.SUBMITTING, Job.lease_expires < sa.bindparam("c_now")
    )
    # A pending job whose "not found" would still prove nothing waits for its lookup_after.
    pending = select(Job.id).where(
        Job.state == State.PENDING,
        CURRENT,
        sa.or_(Job.lookup_after.is_(None), Job.lookup_after <= sa.bindparam("c_now")),
    )
    if with_batch:
        expired = expired.where(Job.batch == sa.bindparam("c_batch"))
        pending = pending.where(Job.batch == sa.bindparam("c_batch"))

    def claim(query: sa.Select[Any], **extra: Any) -> sa.Update:
        ids = query.order_by(Job.id).limit(sa.bindparam("c_room")).with_for_update(skip_locked=True)
        return (
            update(Job)
            .where(Job.id.in_(ids))
            .values(
                owner=sa.bindparam("c_owner"),
                updated_at=sa.bindparam("c_updated"),
                lease_expires=sa.bindparam("c_lease"),
                settle_at=sa.bindparam("c_settle"),
                **extra,
            )
            .returning(*_CLAIM_COLUMNS)
        )

    return claim(expired, lookup_needed=True), claim(pending, state=State.SUBMITTING)


@functools.lru_cache(maxsize=256)
def _update_statement(guard: Guard, keys: tuple[str, ...]) -> sa.Update:
    """One statement object per guard and set of columns, so the hot path compiles nothing."""
    stmt = update(Job).where(Job.id == sa.bindparam("w_id"))
    if guard is Guard.OWNED:
        stmt = stmt.where(Job.state == State.SUBMITTING, Job.owner == sa.bindparam("w_owner"))
    elif guard is Guard.OPEN:
        # OR, not IN: an expanding IN cannot run in an executemany.
        stmt = stmt.where(sa.or_(*(Job.state == state for state in POLLABLE)))
    return stmt.values({k: sa.bindparam(f"v_{k}") for k in keys})


def _attempt_row(job_id: int, attempt: AttemptRecord, worker: str, at: Any) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "at": at,
        "kind": attempt.kind,
        "outcome": attempt.outcome,
        "http_status": attempt.http_status,
        "error": attempt.error,
        "request_id": attempt.request_id,
        "duration_ms": attempt.duration_ms,
        "worker": worker,
    }
