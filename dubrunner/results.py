"""The job table's results side: what polls learned (and did not), and the downloads. Mixed into
Store, whose one guarded update (`_update`) every verb here goes through."""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from dubrunner.db import Database
from dubrunner.models import Job
from dubrunner.queries import in_batch
from dubrunner.records import AttemptRecord, FetchTarget, PollTarget, RemoteView, utcnow
from dubrunner.states import NOT_FOUND, POLLABLE, State


class Guard(Enum):
    """Which rows a one-row update may move."""

    OWNED = "owned"  # a job this worker holds: submitting, under its owner name
    OPEN = "open"  # a job whose remote request has not ended (a poll must not move it back)
    ANY = "any"  # any job (a download's record)


class Results:
    db: Database

    if TYPE_CHECKING:  # Queries.page and Store._update, which this is mixed with

        def page(
            self,
            columns: Sequence[Any],
            where: Sequence[Any],
            batch: str | None,
            after: int,
            n: int,
        ) -> list[Any]: ...

        def _update(
            self,
            guard: Guard,
            job_id: int,
            worker: str,
            attempt: AttemptRecord | None,
            values: dict[str, Any],
        ) -> bool: ...

    # -- polls ----------

    def poll_targets(self, batch: str | None, after_id: int, limit: int) -> list[PollTarget]:
        """Jobs whose remote request has not ended."""
        rows = self.page(
            (
                Job.id,
                Job.reference_id,
                Job.request_id,
                Job.submitted_at,
                Job.remote_missing,
                Job.remote_done_at,
                Job.remote_status,
            ),
            (Job.state.in_(list(POLLABLE)), Job.request_id.is_not(None)),
            batch,
            after_id,
            limit,
        )
        return [PollTarget(*row) for row in rows]

    def record_remote(
        self, job_id: int, worker: str, view: RemoteView, attempt: AttemptRecord | None
    ) -> bool:
        """What a poll learned; guarded so that an ended job never moves again."""
        values: dict[str, Any] = {
            "state": view.state,
            "remote_status": view.status,
            "remote_error": view.error,
            "output_url": view.output_url,
            "remote_started_at": view.started_at,
            "remote_finished_at": view.finished_at,
            "remote_missing": 0,
            "remote_done_at": view.done_at,
            "polled_at": utcnow(),
        }
        if view.last_error is not None:
            values["last_error"] = view.last_error
        return self._update(Guard.OPEN, job_id, worker, attempt, values)

    def record_missing(
        self,
        job_id: int,
        worker: str,
        attempt: AttemptRecord,
        missing: int,
        gone: str | None = None,
    ) -> bool:
        """The API answered "not found" for the job's request: `missing` rounds in a row so
        far. With `gone` (the reason), the job ends failed: the API no longer knows it."""
        values: dict[str, Any] = {
            "remote_status": NOT_FOUND,
            "remote_missing": missing,
            "polled_at": utcnow(),
        }
        if gone is not None:
            values.update(state=State.FAILED, last_error=gone, last_http_status=404)
        return self._update(Guard.OPEN, job_id, worker, attempt, values)

    def record_poll_error(self, job_id: int, worker: str, attempt: AttemptRecord) -> None:
        """A poll that got no usable answer: only its attempt is kept."""
        self._update(Guard.OPEN, job_id, worker, attempt, {"polled_at": utcnow()})

    def known_request_id(self) -> str | None:
        """A request of ours (any batch) the API answered for and that ended: asking for it
        tells a wrong address from requests that are gone."""
        stmt = (
            select(Job.request_id)
            .where(
                Job.state.in_([State.COMPLETED, State.FAILED]),
                Job.request_id.is_not(None),
                Job.remote_status.is_not(None),
                Job.remote_status != NOT_FOUND,
            )
            .order_by(Job.id.desc())
            .limit(1)
        )
        with self.db.read() as conn:
            return conn.execute(stmt).scalar()

    def open_remote_statuses(self, batch: str | None) -> dict[str, int]:
        """How many jobs still open report each remote status."""
        stmt = (
            select(Job.remote_status, func.count())
            .where(Job.state.in_(list(POLLABLE)), Job.remote_status.is_not(None))
            .group_by(Job.remote_status)
        )
        with self.db.read() as conn:
            return {str(status): n for status, n in conn.execute(in_batch(stmt, batch))}

    # -- downloads ----------

    def fetch_targets(self, batch: str | None, after_id: int, limit: int) -> list[FetchTarget]:
        """Completed jobs with an output to download."""
        columns = (
            Job.id,
            Job.batch,
            Job.reference_id,
            Job.request_id,
            Job.output_url,
            Job.download_state,
            Job.local_path,
            Job.size_bytes,
            Job.sha256,
            Job.polled_at,
            Job.local_mtime_ns,
        )
        where = (Job.state == State.COMPLETED, Job.output_url.is_not(None))
        return [FetchTarget(*r) for r in self.page(columns, where, batch, after_id, limit)]

    def record_output_url(self, job_id: int, worker: str, url: str) -> None:
        """A fresh output_url the API gave for a completed job (the old one expired)."""
        self._update(Guard.ANY, job_id, worker, None, {"output_url": url, "polled_at": utcnow()})

    def mark_downloaded(
        self,
        job_id: int,
        worker: str,
        attempt: AttemptRecord,
        path: str,
        size: int,
        sha256: str,
        mtime_ns: int | None = None,
    ) -> None:
        values = {
            "download_state": "downloaded",
            "download_error": None,
            "local_path": path,
            "size_bytes": size,
            "sha256": sha256,
            "local_mtime_ns": mtime_ns,
        }
        self._update(Guard.ANY, job_id, worker, attempt, values)

    def mark_download_failed(
        self, job_id: int, worker: str, attempt: AttemptRecord, reason: str
    ) -> None:
        values = {"download_state": "failed", "download_error": reason}
        self._update(Guard.ANY, job_id, worker, attempt, values)
