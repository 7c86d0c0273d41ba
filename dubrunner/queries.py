"""The job table as people and scripts see it, and the operator's actions on it: summaries,
rows, the attempt history, retry, cancel. The worker-side half of the table is in store."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple, Protocol, Self, TypeVar

import sqlalchemy as sa
from sqlalchemy import func, select, update
from sqlalchemy.orm import aliased

from dubrunner.db import Database
from dubrunner.models import ApiHealth, Attempt, Job
from dubrunner.records import HealthView, utcnow
from dubrunner.states import NOT_FOUND, State


class _Filterable(Protocol):
    def where(self, *clauses: Any) -> Self: ...


S = TypeVar("S", bound=_Filterable)


# The one rule for superseded jobs: a job replaced by another (`dubrunner supersede`) stays for
# audit and `status REF`, and is out of everything else: counts, reports, exports, polls,
# fetches, retries, cancels, claims.
CURRENT = Job.superseded_by.is_(None)


def current(stmt: S) -> S:
    """The statement limited to jobs not superseded."""
    return stmt.where(CURRENT)


def in_batch(stmt: S, batch: str | None) -> S:
    """The statement limited to one batch's current jobs, or every batch's (see CURRENT)."""
    stmt = current(stmt)
    return stmt if batch is None else stmt.where(Job.batch == batch)


SUMMARY_FIELDS = ("batch", "state", "jobs")


def summary_item(batch: str, state: str, jobs: int) -> dict[str, Any]:
    """One row of `summary` as scripts see it (`status --summary --format json`, an on-done
    hook's input)."""
    return dict(zip(SUMMARY_FIELDS, (batch, state, jobs), strict=True))


def back_to_pending() -> dict[str, Any]:
    """A job handed back for sending: no owner, no lease (a look-up owed is kept as it is)."""
    return {
        "state": State.PENDING,
        "owner": None,
        "lease_expires": None,
        "settle_at": None,
        "updated_at": utcnow(),
    }


class Cancelled(NamedTuple):
    """What `cancel` did: jobs cancelled, jobs kept (a look-up owed), and the jobs made
    current again because their replacement was cancelled."""

    cancelled: int
    kept: int
    restored: list[str]


class Retried(NamedTuple):
    """What `retry` did: jobs put back to pending (to be sent), and jobs the API finished
    without an output URL put back to polling (never sent again: the API did them)."""

    pending: int
    polled: int


def finished_without_output() -> Any:
    """Failed jobs whose request the API finished (and was paid for) without ever giving an
    output_url (poller.interpret keeps since when): `retry` polls them again, never sends them."""
    return sa.and_(
        Job.state == State.FAILED,
        Job.remote_done_at.is_not(None),
        Job.remote_status.is_distinct_from(NOT_FOUND),
    )


@dataclass(frozen=True, slots=True)
class JobRow:
    """A job as shown to people and scripts."""

    batch: str
    reference_id: str
    state: str
    request_id: str | None
    error: str | None
    http_status: int | None
    attempts: int
    video_url: str
    audio_url: str
    disable_active_speaker_detection: bool
    source: str | None
    created_at: datetime
    updated_at: datetime
    submitted_at: datetime | None
    owner: str | None
    lookup_owed: bool
    remote_status: str | None
    remote_error: str | None
    output_url: str | None
    remote_started_at: str | None
    remote_finished_at: str | None
    download_state: str | None
    download_error: str | None
    local_path: str | None
    size_bytes: int | None
    sha256: str | None
    supersedes: str | None = None  # the reference_id of the job this one replaced
    superseded_by: str | None = None  # the reference_id of the job that replaced this one


@dataclass(frozen=True, slots=True)
class LoadedFiles:
    """A local job's two files as they were loaded."""

    reference_id: str
    video_url: str
    audio_url: str
    video_size: int | None
    audio_size: int | None
    video_sha256: str | None
    audio_sha256: str | None


_FILE_COLUMNS = (
    Job.video_url,
    Job.audio_url,
    Job.video_size,
    Job.audio_size,
    Job.video_sha256,
    Job.audio_sha256,
)

_ROW_COLUMNS = (
    Job.batch,
    Job.reference_id,
    Job.state,
    Job.request_id,
    Job.last_error,
    Job.last_http_status,
    Job.attempts,
    Job.video_url,
    Job.audio_url,
    Job.disable_active_speaker_detection,
    Job.source,
    Job.created_at,
    Job.updated_at,
    Job.submitted_at,
    Job.owner,
    Job.lookup_needed,
    Job.remote_status,
    Job.remote_error,
    Job.output_url,
    Job.remote_started_at,
    Job.remote_finished_at,
    Job.download_state,
    Job.download_error,
    Job.local_path,
    Job.size_bytes,
    Job.sha256,
    Job.supersedes,
    Job.superseded_by,
)


class Queries:
    """Reading the table, and the operator's actions (mixed into Store)."""

    db: Database

    def page(
        self, columns: Sequence[Any], where: Sequence[Any], batch: str | None, after: int, n: int
    ) -> list[Any]:
        """The next `n` matching rows after id `after` (keyset paging: memory stays flat)."""
        stmt = select(*columns).where(Job.id > after, *where).order_by(Job.id).limit(n)
        with self.db.read() as conn:
            return list(conn.execute(in_batch(stmt, batch)))

    # -- what is there ----------

    def counts(self, batch: str | None = None) -> dict[str, int]:
        stmt = select(Job.state, func.count()).group_by(Job.state)
        with self.db.read() as conn:
            return {state: n for state, n in conn.execute(in_batch(stmt, batch))}

    def count_in_states(self, batch: str | None, states: Sequence[str]) -> int:
        stmt = select(func.count()).select_from(Job).where(Job.state.in_(list(states)))
        with self.db.read() as conn:
            return int(conn.execute(in_batch(stmt, batch)).scalar() or 0)

    def count_remote_failures(self, batch: str | None) -> int:
        """Jobs the API said failed (not those it no longer knows: see count_gone)."""
        where = (Job.state == State.FAILED, Job.remote_status.is_not(None), Job.remote_missing == 0)
        stmt = select(func.count()).select_from(Job).where(*where)
        with self.db.read() as conn:
            return int(conn.execute(in_batch(stmt, batch)).scalar() or 0)

    def count_gone(self, batch: str | None) -> int:
        """Jobs that ended because the API no longer knew their request."""
        where = (Job.state == State.FAILED, Job.remote_missing > 0)
        stmt = select(func.count()).select_from(Job).where(*where)
        with self.db.read() as conn:
            return int(conn.execute(in_batch(stmt, batch)).scalar() or 0)

    def count_superseded(self, batch: str | None) -> int:
        """Jobs replaced by others (kept for audit, out of every other count)."""
        stmt = select(func.count()).select_from(Job).where(Job.superseded_by.is_not(None))
        if batch is not None:
            stmt = stmt.where(Job.batch == batch)
        with self.db.read() as conn:
            return int(conn.execute(stmt).scalar() or 0)

    def summary(self, batch: str | None = None) -> list[tuple[str, str, int]]:
        """(batch, state, count) for every batch and state present."""
        stmt = (
            select(Job.batch, Job.state, func.count())
            .group_by(Job.batch, Job.state)
            .order_by(Job.batch, Job.state)
        )
        with self.db.read() as conn:
            return [(b, s, n) for b, s, n in conn.execute(in_batch(stmt, batch))]

    def batches(self) -> list[str]:
        with self.db.read() as conn:
            return list(conn.execute(select(Job.batch).distinct().order_by(Job.batch)).scalars())

    def reference_ids(self, prefix: str, limit: int) -> list[str]:
        """Reference_ids starting with `prefix`, in order, at most `limit` (shell completion)."""
        stmt = (
            select(Job.reference_id)
            .where(Job.reference_id.startswith(prefix, autoescape=True))
            .order_by(Job.reference_id)
            .limit(limit)
        )
        with self.db.read() as conn:
            return list(conn.execute(stmt).scalars())

    def rows(
        self,
        batch: str | None = None,
        states: Sequence[str] = (),
        limit: int | None = None,
        reference_ids: Sequence[str] = (),
    ) -> list[JobRow]:
        """Jobs as shown; those named by reference_id even when superseded (their audit)."""
        stmt = select(*_ROW_COLUMNS).order_by(Job.id)
        if reference_ids:
            stmt = stmt.where(Job.reference_id.in_(list(reference_ids)))
            if batch is not None:
                stmt = stmt.where(Job.batch == batch)
        else:
            stmt = in_batch(stmt, batch)
        if states:
            stmt = stmt.where(Job.state.in_(list(states)))
        if limit is not None:
            stmt = stmt.limit(limit)
        with self.db.read() as conn:
            return [JobRow(*row) for row in conn.execute(stmt)]  # type: ignore[call-arg]

    def iter_rows(
        self, batch: str | None = None, page: int = 1000, states: Sequence[str] = ()
    ) -> Iterator[JobRow]:
        """Every job (of these states), in pages: memory stays flat however large the table."""
        after = 0
        where = (Job.state.in_(list(states)),) if states else ()
        while rows := self.page((Job.id, *_ROW_COLUMNS), where, batch, after, page):
            after = rows[-1][0]
            for row in rows:
                yield JobRow(*row[1:])

    def unsent(self, batch: str) -> list[JobRow]:
        """Jobs of the batch that never reached the API and owe no look-up: safe to check, or
        to fail without sending."""
        unsent = {State.PENDING, State.HALTED, State.FAILED}
        return [
            r
            for r in self.iter_rows(batch)
            if r.state in unsent and not r.request_id and not r.lookup_owed
        ]

    def loaded_files(self, batch: str) -> Iterator[LoadedFiles]:
        """The batch's local jobs' files as loaded: their sizes and SHA-256s (check)."""
        columns = (Job.id, Job.reference_id, *_FILE_COLUMNS)
        after = 0
        while rows := self.page(columns, (Job.video_sha256.is_not(None),), batch, after, 1000):
            after = rows[-1][0]
            for row in rows:
                yield LoadedFiles(*row[1:])

    def attempts_of(self, reference_id: str) -> list[dict[str, Any]]:
        stmt = (
            select(
                Attempt.at,
                Attempt.kind,
                Attempt.outcome,
                Attempt.http_status,
                Attempt.error,
                Attempt.request_id,
                Attempt.duration_ms,
                Attempt.worker,
            )
            .join(Job, Job.id == Attempt.job_id)
            .where(Job.reference_id == reference_id)
            .order_by(Attempt.id)
        )
        with self.db.read() as conn:
            return [dict(row._mapping) for row in conn.execute(stmt)]

    # -- the operator's actions ----------

    def reset_halted(self, batch: str | None) -> int:
        """Halted jobs go back to pending: the cause (tokens, a credential) was fixed meanwhile."""
        stmt = in_batch(update(Job).where(Job.state == State.HALTED), batch)
        with self.db.write() as conn:
            return conn.execute(stmt.values(state=State.PENDING, updated_at=utcnow())).rowcount

    def unknown_references(self, reference_ids: Sequence[str], batch: str | None) -> list[str]:
        """Those of `reference_ids` no job (of `batch`, if given) has, in the order given."""
        if not reference_ids:
            return []
        stmt = select(Job.reference_id).where(Job.reference_id.in_(list(reference_ids)))
        if batch is not None:
            stmt = stmt.where(Job.batch == batch)
        with self.db.read() as conn:
            known = set(conn.execute(stmt).scalars())
        return [ref for ref in dict.fromkeys(reference_ids) if ref not in known]

    def _retry_where(
        self, batch: str | None, states: Sequence[str], error: str | None, refs: Sequence[str]
    ) -> list[Any]:
        where: list[Any] = [Job.state.in_(list(states)), CURRENT]
        if batch is not None:
            where.append(Job.batch == batch)
        if refs:
            where.append(Job.reference_id.in_(list(refs)))
        if error:
            where.append(Job.last_error.contains(error, autoescape=True))
        return where

    def retry_preview(
        self, batch: str | None, states: Sequence[str], error: str | None, refs: Sequence[str] = ()
    ) -> tuple[int, int]:
        """(jobs that retry would put back, those among them that ran at the API and failed
        there: sending those again is paid again)."""
        where = self._retry_where(batch, states, error, refs)
        resent = sa.case((finished_without_output(), None), else_=Job.remote_status)
        stmt = select(func.count(), func.count(resent)).where(*where)
        with self.db.read() as conn:
            total, ran = conn.execute(stmt).one()
        return int(total), int(ran)

    def retry(
        self, batch: str | None, states: Sequence[str], error: str | None, refs: Sequence[str] = ()
    ) -> Retried:
        """Put chosen jobs back to pending. A job whose request ran at the API and failed there
        gets a fresh start: that request has ended (it stays in the attempts), so the job is
        sent anew; the others keep whatever look-up they owe. A job the API finished without
        an output URL is polled again, for another --output-grace: it is never sent again."""
        where = self._retry_where(batch, states, error, refs)
        with self.db.write() as conn:
            polled = conn.execute(
                update(Job)
                .where(*where, finished_without_output())
                .values(
                    state=State.PROCESSING,
                    remote_done_at=None,
                    last_error=None,
                    tries=0,
                    updated_at=utcnow(),
                )
            ).rowcount
            ran = conn.execute(
                update(Job)
                .where(*where, Job.remote_status.is_not(None))
                .values(
                    {
                        **back_to_pending(),
                        "tries": 0,
                        "request_id": None,
                        "lookup_needed": False,
                        "lookup_after": None,
                        "remote_status": None,
                        "remote_error": None,
                        "output_url": None,
                        "remote_started_at": None,
                        "remote_finished_at": None,
                        "polled_at": None,
                        "remote_missing": 0,
                        "remote_done_at": None,
                    }
                )
            ).rowcount
            rest = conn.execute(
                update(Job).where(*where).values({**back_to_pending(), "tries": 0})
            ).rowcount
        return Retried(int(ran) + int(rest), int(polled))

    def cancel(self, batch: str | None, reference_ids: Sequence[str]) -> Cancelled:
        """Cancel pending jobs. A pending job whose earlier POST may have landed is kept:
        cancelling it would hide a request the account may have paid for. A job a cancelled
        replacement (REF~2, never sent) superseded is current again, in the same transaction:
        its request is the one the batch has (a completed one's output is fetched again)."""
        where = [Job.state == State.PENDING, CURRENT]
        if batch is not None:
            where.append(Job.batch == batch)
        if reference_ids:
            where.append(Job.reference_id.in_(list(reference_ids)))
        with self.db.write() as conn:
            kept = conn.execute(
                select(func.count()).select_from(Job).where(*where, Job.lookup_needed.is_(True))
            ).scalar()
            done = conn.execute(
                update(Job)
                .where(*where, Job.lookup_needed.is_(False))
                .values(state=State.CANCELLED, updated_at=utcnow())
            ).rowcount
            replacement = aliased(Job)
            dropped = Job.superseded_by.in_(
                select(replacement.reference_id).where(
                    replacement.state == State.CANCELLED, replacement.supersedes.is_not(None)
                )
            )
            restored = list(conn.execute(select(Job.reference_id).where(dropped)).scalars())
            if restored:
                conn.execute(update(Job).where(dropped).values(superseded_by=None))
        return Cancelled(int(done), int(kept or 0), sorted(restored))

    def fail_unsent(self, batch: str, reasons: dict[str, str]) -> int:
        """Fail jobs that were never sent (preflight found their media wrong)."""
        if not reasons:
            return 0
        stmt = (
            update(Job)
            .where(
                Job.batch == batch,
                Job.reference_id == sa.bindparam("ref"),
                CURRENT,
                sa.or_(Job.state == State.PENDING, Job.state == State.HALTED),
                Job.lookup_needed.is_(False),
            )
            .values(last_error=sa.bindparam("why"), state=State.FAILED, updated_at=utcnow())
        )
        with self.db.write() as conn:
            rows = [{"ref": ref, "why": why} for ref, why in reasons.items()]
            return int(conn.execute(stmt, rows).rowcount)

    # -- the API's health as the workers see it ----------

    def record_health(self, view: HealthView) -> None:
        """Keep what a worker thinks of the API, for `status` and the other workers' users."""
        values = {
            "condition": view.condition,
            "since": view.since,
            "last_success": view.last_success,
            "retry_every": view.retry_every,
            "message": view.message,
            "updated_at": view.updated_at,
            "worker": view.worker,
        }
        self.db.upsert(ApiHealth, {"base_url": view.base_url}, values)

    def api_health(self, fresher_than: float) -> list[HealthView]:
        """What workers said of the API since `fresher_than` (Unix seconds), newest first."""
        stmt = (
            select(
                ApiHealth.base_url,
                ApiHealth.condition,
                ApiHealth.since,
                ApiHealth.last_success,
                ApiHealth.retry_every,
                ApiHealth.message,
                ApiHealth.updated_at,
                ApiHealth.worker,
            )
            .where(ApiHealth.updated_at >= fresher_than)
            .order_by(ApiHealth.updated_at.desc())
        )
        with self.db.read() as conn:
            return [HealthView(*row) for row in conn.execute(stmt)]
