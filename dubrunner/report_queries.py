"""The read-only queries behind `dubrunner report` (one of the store's modules: column names stay
in these). Each returns plain rows; report.py turns them into numbers."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, or_, select

from dubrunner.db import Database
from dubrunner.errors import Action
from dubrunner.models import Attempt, Job
from dubrunner.queries import in_batch
from dubrunner.states import State


def state_counts(db: Database, batch: str | None) -> list[tuple[str, str, str | None, int]]:
    """(batch, state, remote status, jobs) for every combination present."""
    stmt = select(Job.batch, Job.state, Job.remote_status, func.count()).group_by(
        Job.batch, Job.state, Job.remote_status
    )
    with db.read() as conn:
        return [(b, s, r, int(n)) for b, s, r, n in conn.execute(in_batch(stmt, batch))]


def submitted_times(db: Database, batch: str | None) -> list[tuple[str, datetime]]:
    """(batch, when the API accepted it) for every job it accepted."""
    stmt = select(Job.batch, Job.submitted_at).where(Job.submitted_at.is_not(None))
    with db.read() as conn:
        return [(b, t) for b, t in conn.execute(in_batch(stmt, batch)) if t is not None]


def completed_times(db: Database, batch: str | None) -> list[tuple[str, datetime]]:
    """(batch, when a poll first saw it completed) for every completed job; the last poll's time
    for a job whose completing poll is not in its history."""
    seen = (
        select(Attempt.job_id, func.min(Attempt.at).label("at"))
        .where(Attempt.kind == "poll", Attempt.outcome == State.COMPLETED)
        .group_by(Attempt.job_id)
        .subquery()
    )
    stmt = (
        select(Job.batch, func.coalesce(seen.c.at, Job.polled_at, Job.updated_at))
        .outerjoin(seen, seen.c.job_id == Job.id)
        .where(Job.state == State.COMPLETED)
    )
    with db.read() as conn:
        return [(b, t) for b, t in conn.execute(in_batch(stmt, batch))]


def trouble_attempts(
    db: Database, batch: str | None
) -> list[tuple[str, datetime, str, int | None]]:
    """(batch, at, outcome, HTTP status) of every exchange with the API that met throttling
    (429), a server fault (a 5xx, or no answer at all) or a batch-wide halt."""
    no_answer = and_(
        Attempt.http_status.is_(None), Attempt.outcome.in_([Action.RETRY, Action.AMBIGUOUS])
    )
    stmt = (
        select(Job.batch, Attempt.at, Attempt.outcome, Attempt.http_status)
        .join(Job, Job.id == Attempt.job_id)
        .where(
            Attempt.kind.in_(["generate", "lookup", "poll"]),
            or_(
                Attempt.http_status == 429,
                Attempt.http_status >= 500,
                no_answer,
                Attempt.outcome == Action.HALT_BATCH,
            ),
        )
        .order_by(Attempt.at)
    )
    with db.read() as conn:
        return [(b, at, o, s) for b, at, o, s in conn.execute(in_batch(stmt, batch))]


def failed_jobs(db: Database, batch: str | None) -> list[tuple[str, str, str | None]]:
    """(batch, reference_id, error) of every failed job, in loading order: the API's own error
    for a request that failed there, else the last error dubrunner met."""
    stmt = (
        select(Job.batch, Job.reference_id, func.coalesce(Job.remote_error, Job.last_error))
        .where(Job.state == State.FAILED)
        .order_by(Job.id)
    )
    with db.read() as conn:
        return [(b, r, e) for b, r, e in conn.execute(in_batch(stmt, batch))]


def remote_times(db: Database, batch: str | None) -> list[tuple[str, str, str]]:
    """(batch, started_at, finished_at) as the API reported them, where it reported both."""
    stmt = select(Job.batch, Job.remote_started_at, Job.remote_finished_at).where(
        Job.remote_started_at.is_not(None), Job.remote_finished_at.is_not(None)
    )
    with db.read() as conn:
        return [(b, s, f) for b, s, f in conn.execute(in_batch(stmt, batch)) if s and f]


def download_counts(db: Database, batch: str | None) -> list[tuple[str, str, int, int]]:
    """(batch, download state, jobs, bytes) for every job whose download was tried."""
    stmt = (
        select(Job.batch, Job.download_state, func.count(), func.sum(Job.size_bytes))
        .where(Job.download_state.is_not(None))
        .group_by(Job.batch, Job.download_state)
    )
    with db.read() as conn:
        rows: list[Any] = list(conn.execute(in_batch(stmt, batch)))
    return [(b, s, int(n), int(size or 0)) for b, s, n, size in rows]
