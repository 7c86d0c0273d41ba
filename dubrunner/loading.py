"""Loading a manifest into the job table. What a load would do is decided by a pure function
(`plan_load`) from the rows already there: which jobs are new, which are unchanged, which may
take changed values, and which conflicts refuse the whole load. `load_jobs` reads those rows and
writes the plan, in one transaction: all of it, or nothing."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection

from dubrunner.db import Database
from dubrunner.models import Job
from dubrunner.records import JobSpec, LoadPlan, utcnow
from dubrunner.states import AT_API, State

# States from which a job whose manifest entry changed may take the new values, provided it was
# never sent (or sent and refused) and nobody holds it.
CHANGEABLE = frozenset({State.PENDING, State.HALTED, State.FAILED, State.CANCELLED})


class LoadConflict(Exception):
    """The manifest contradicts what the database already holds; nothing was written."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(problems[0])


@dataclass(frozen=True, slots=True)
class Existing:
    """A job already in the table, as far as loading cares."""

    id: int
    batch: str
    video_url: str
    audio_url: str
    disable_active_speaker_detection: bool
    state: str
    request_id: str | None
    lookup_owed: bool
    owner: str | None

    @property
    def never_sent(self) -> bool:
        """The API holds no request for it and no worker is about to send it."""
        return (
            self.state in CHANGEABLE
            and self.owner is None
            and not self.request_id
            and not self.lookup_owed
        )


def plan_load(
    batch: str, specs: Sequence[JobSpec], existing: Mapping[str, Existing], source: str
) -> LoadPlan:
    """The plan for loading `specs` into `batch`. Raises LoadConflict with every problem."""
    plan = LoadPlan(batch=batch)
    conflicts: list[str] = []
    for spec in specs:
        found = existing.get(spec.reference_id)
        if found is None:
            plan.new.append(spec)
            continue
        where = f"{source}:{spec.line}"
        if found.batch != batch:
            conflicts.append(
                f"{where}: reference_id {spec.reference_id!r} already belongs to batch "
                f"{found.batch!r}; reference_ids are unique across the database"
            )
        elif (found.video_url, found.audio_url, found.disable_active_speaker_detection) == (
            spec.video_url,
            spec.audio_url,
            spec.disable_active_speaker_detection,
        ):
            plan.unchanged += 1
            if found.state in AT_API:
                plan.already_submitted += 1
            elif found.state in (State.PENDING, State.HALTED):
                plan.to_send += 1
        elif not found.never_sent:
            conflicts.append(
                f"{where}: reference_id {spec.reference_id!r} was already sent to the "
                f"API with other URLs or settings (state {found.state}); give the changed "
                "job a new reference_id"
            )
        else:
            plan.changed.append((found.id, spec))
    if conflicts:
        raise LoadConflict(conflicts)
    plan.to_send += len(plan.new) + len(plan.changed)
    return plan


# -- the SQL of a load ----------

_CHUNK = 500
# `Existing.never_sent` as SQL, checked again at the moment of the write.
_NEVER_SENT = (
    sa.or_(*(Job.state == state for state in sorted(CHANGEABLE))),
    Job.owner.is_(None),
    Job.request_id.is_(None),
    Job.lookup_needed.is_(False),
)


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def load_jobs(
    db: Database,
    batch: str,
    specs: Sequence[JobSpec],
    source: str,
    dry_run: bool = False,
    allow_same_media: bool = False,
) -> LoadPlan:
    """Add a manifest's jobs in one transaction: all of them, or (on a conflict) none."""
    try:
        return _load(db, batch, specs, source, dry_run, allow_same_media)
    except sa.exc.IntegrityError:
        # Only another writer inserting the same reference_ids at the same moment gets here
        # (loads take turns): say so, never the statement and its parameters.
        raise LoadConflict(
            [f"{source}: another process loaded some of these reference_ids at the same time"]
        ) from None


def _load(
    db: Database,
    batch: str,
    specs: Sequence[JobSpec],
    source: str,
    dry_run: bool,
    allow_same_media: bool,
) -> LoadPlan:
    with db.write() as conn:
        if conn.dialect.name == "postgresql":
            # Two loads at once (of any batches: reference_ids are unique across all of them)
            # would both see shared jobs as new: loads take turns. SQLite's BEGIN IMMEDIATE
            # already serialises every writer.
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(4242002)"))
        plan = plan_load(batch, specs, _existing(conn, specs), source)
        if not allow_same_media:
            repeated = _same_media(conn, plan, source)
            if repeated:
                raise LoadConflict(repeated)
        if dry_run:
            conn.rollback()
            return plan
        now = utcnow()
        for chunk in _chunks(plan.new, 5000):
            conn.execute(insert(Job), [_new_row(batch, s, source, now) for s in chunk])
        lost: list[str] = []
        for job_id, spec in plan.changed:
            # Guarded where the data lives: a worker may have claimed the job since it was read
            # above (workers do not take the loads' lock). Changing a claimed job would send it
            # twice, with the old URLs and the new ones.
            moved = conn.execute(
                update(Job)
                .where(Job.id == job_id, *_NEVER_SENT)
                .values(
                    video_url=spec.video_url,
                    audio_url=spec.audio_url,
                    disable_active_speaker_detection=spec.disable_active_speaker_detection,
                    source=f"{source}:{spec.line}",
                    media_key=spec.media_key,
                    state=State.PENDING,
                    tries=0,
                    last_error=None,
                    last_http_status=None,
                    updated_at=now,
                )
            ).rowcount
            if moved != 1:
                lost.append(
                    f"{source}:{spec.line}: reference_id {spec.reference_id!r} was taken by a "
                    "worker while loading; nothing was loaded — load again to see whether it "
                    "can still change"
                )
        if lost:
            raise LoadConflict(lost)
    return plan


def _existing(conn: Connection, specs: Sequence[JobSpec]) -> dict[str, Existing]:
    existing: dict[str, Existing] = {}
    for chunk in _chunks([s.reference_id for s in specs]):
        for row in conn.execute(
            select(
                Job.reference_id,
                Job.id,
                Job.batch,
                Job.video_url,
                Job.audio_url,
                Job.disable_active_speaker_detection,
                Job.state,
                Job.request_id,
                Job.lookup_needed,
                Job.owner,
            ).where(Job.reference_id.in_(chunk))
        ):
            ref, *values = row
            existing[ref] = Existing(*values)
    return existing


def _new_row(batch: str, spec: JobSpec, source: str, now: datetime) -> dict[str, Any]:
    return {
        "batch": batch,
        "reference_id": spec.reference_id,
        "video_url": spec.video_url,
        "audio_url": spec.audio_url,
        "disable_active_speaker_detection": spec.disable_active_speaker_detection,
        "source": f"{source}:{spec.line}",
        "media_key": spec.media_key,
        "state": State.PENDING,
        "attempts": 0,
        "tries": 0,
        "lookup_needed": False,
        "created_at": now,
        "updated_at": now,
    }


def _same_media(conn: Connection, plan: LoadPlan, source: str) -> list[str]:
    """New (or changed) jobs asking for the same video, audio and settings as a job already in
    the table under another reference_id: each would be paid again. A manifest renamed or
    copied without `batch:` and reference_ids is the usual way to get here."""
    incoming = {s.media_key: s for s in plan.new}
    incoming.update({s.media_key: s for _, s in plan.changed})
    changing = {job_id for job_id, _ in plan.changed}
    problems: list[str] = []
    keys = sorted(incoming)
    for chunk in _chunks(keys):
        rows = conn.execute(
            select(Job.id, Job.media_key, Job.reference_id, Job.batch, Job.state).where(
                Job.media_key.in_(chunk), Job.state != State.CANCELLED
            )
        )
        for job_id, key, ref, batch, state in rows:
            spec = incoming[str(key)]
            if job_id in changing or ref == spec.reference_id:
                continue
            problems.append(
                f"{source}:{spec.line}: the same video and audio were loaded before as "
                f"reference_id {ref!r} (batch {batch!r}, {state}); sending them again is paid "
                "again — give --allow-same-media to load them anyway"
            )
    return problems
