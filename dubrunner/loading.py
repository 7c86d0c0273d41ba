"""Loading a manifest into the job table. What a load would do is decided by a pure function
(`plan_load`) from the rows already there: which jobs are new, which are unchanged, which may
take changed values, and which conflicts refuse the whole load. `load_jobs` reads those rows and
writes the plan, in one transaction: all of it, or nothing."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple, cast

import sqlalchemy as sa
from sqlalchemy import select, update
from sqlalchemy.engine import Connection

from dubrunner.db import Database, insert_many
from dubrunner.models import FileDigest, Job
from dubrunner.queries import CURRENT
from dubrunner.records import JobSpec, LoadPlan, derive_reference_id, job_identity, utcnow
from dubrunner.states import AT_API, State
from dubrunner.superseding import SupersedeRefused, lock_for_loading, read_old, supersede_row

# States from which a job whose manifest entry changed may take the new values, provided it was
# never sent (or sent and refused) and nobody holds it.
CHANGEABLE = frozenset({State.PENDING, State.HALTED, State.FAILED, State.CANCELLED})


class LoadConflict(Exception):
    """The manifest contradicts what the database already holds; nothing was written."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(problems[0])


class Existing(NamedTuple):
    """A job already in the table, as far as loading cares (a tuple: a reload reads 100,000)."""

    id: int
    batch: str
    video_url: str
    audio_url: str
    disable_active_speaker_detection: bool
    state: str
    request_id: str | None
    lookup_owed: bool
    owner: str | None
    video_sha256: str | None = None
    audio_sha256: str | None = None
    reference_id: str = ""
    superseded_by: str | None = None

    @property
    def identity(self) -> tuple[str, str, bool]:
        return job_identity(
            self.video_url,
            self.audio_url,
            self.disable_active_speaker_detection,
            self.video_sha256,
            self.audio_sha256,
        )

    @property
    def never_sent(self) -> bool:
        """The API holds no request for it and no worker is about to send it."""
        return (
            self.state in CHANGEABLE
            and self.owner is None
            and not self.request_id
            and not self.lookup_owed
        )


def _derived(batch: str, spec: JobSpec) -> bool:
    """Whether a local job's reference_id is the one derived from its files' content."""
    video, audio, _ = spec.identity
    return spec.reference_id == derive_reference_id(batch, video, audio)


def _unchanged(plan: LoadPlan, found: Existing, spec: JobSpec, sent: bool = False) -> None:
    """`found` (a chain's head) as the manifest has it; `sent`: its chain holds a request."""
    plan.unchanged += 1
    if (found.video_url, found.audio_url) != (spec.video_url, spec.audio_url):
        plan.moved.append((found.id, spec))  # the same files, somewhere else now
    if found.state in AT_API or sent:
        plan.already_submitted += 1
    if found.state in (State.PENDING, State.HALTED):
        plan.to_send += 1


def plan_load(
    batch: str,
    specs: Sequence[JobSpec],
    existing: Mapping[str, Existing],
    source: str,
    by_paths: Mapping[tuple[str, str], Existing] | None = None,
    chains: Mapping[str, Sequence[Existing]] | None = None,
    supersede: bool = False,
) -> LoadPlan:
    """The plan for loading `specs` into `batch`. Raises LoadConflict with every problem.

    `by_paths`: the batch's local jobs by their two files' paths. A local job whose derived
    reference_id is new, but whose paths a job of the batch already has, is that job with a
    file changed in place: it takes the new content while never sent, and is refused after.

    `chains`: for a job superseded (superseding.py), the jobs that replaced it, in order, by
    the old reference_id; the last is the chain's head. A manifest entry whose inputs are those
    of any job of its chain (the root or any REF~n) is unchanged: they were asked for already.
    Other inputs are a change of the head: while never sent it takes them; sent, it is refused,
    or with `supersede` replaced by a new job (REF~n+1)."""
    plan = LoadPlan(batch=batch)
    conflicts: list[str] = []
    for spec in specs:
        where = f"{source}:{spec.line}"
        found = existing.get(spec.reference_id)
        if found is None and spec.is_local and by_paths and _derived(batch, spec):
            found = by_paths.get((spec.video_url, spec.audio_url))
            if found is None:
                pass
            elif found.identity == spec.identity:
                _unchanged(plan, found, spec)  # superseded before: its successor is this job
                continue
            elif not found.never_sent and supersede:
                plan.superseded.append((found.reference_id, spec))
                continue
            elif not found.never_sent:
                conflicts.append(
                    f"{where}: the files of job {found.reference_id!r} changed since it was "
                    f"sent to the API (state {found.state}); a changed job is paid again: "
                    "submit with --supersede to replace it with a new job, or give it a "
                    "reference_id of its own"
                )
                continue
            else:
                # A successor (REF~2) keeps its name: the old job's link points to it.
                keep = "~" in found.reference_id
                ref = found.reference_id if keep else spec.reference_id
                plan.changed.append((found.id, dataclasses.replace(spec, reference_id=ref)))
                continue
        if found is None:
            plan.new.append(spec)
            continue
        if found.batch != batch:
            conflicts.append(
                f"{where}: reference_id {spec.reference_id!r} already belongs to batch "
                f"{found.batch!r}; reference_ids are unique across the database"
            )
            continue
        chain = (
            [found, *(chains or {}).get(found.reference_id, ())] if found.superseded_by else [found]
        )
        head = chain[-1]
        if any(job.identity == spec.identity for job in chain):
            # As loaded, or as any job of its chain was (the manifest may name older inputs).
            sent = any(not job.never_sent for job in chain)
            _unchanged(plan, head, spec if head.identity == spec.identity else _as(head), sent)
        elif not head.never_sent and supersede:
            plan.superseded.append((head.reference_id, spec))
        elif not head.never_sent:
            named = spec.reference_id
            also = f" (now {head.reference_id})" if head is not found else ""
            conflicts.append(
                f"{where}: reference_id {named!r}{also} was already sent to the API with other "
                f"URLs, files or settings (state {head.state}); submit with --supersede to "
                "replace it with a new job, or give the changed job a new reference_id"
            )
        else:
            plan.changed.append(
                (head.id, dataclasses.replace(spec, reference_id=head.reference_id))
            )
    if conflicts:
        raise LoadConflict(conflicts)
    plan.to_send += len(plan.new) + len(plan.changed) + len(plan.superseded)
    return plan


def _as(job: Existing) -> JobSpec:
    """A spec that leaves the job where it is (no move of its files)."""
    return JobSpec(
        job.reference_id,
        job.video_url,
        job.audio_url,
        job.disable_active_speaker_detection,
        0,
        job.video_sha256,
        job.audio_sha256,
    )


# -- the SQL of a load ----------

_CHUNK = 500
# `Existing.never_sent` as SQL, checked again at the moment of the write.
_NEVER_SENT = (
    sa.or_(*(Job.state == state for state in sorted(CHANGEABLE))),
    CURRENT,
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
    supersede: bool = False,
) -> LoadPlan:
    """Add a manifest's jobs in one transaction: all of them, or (on a conflict) none."""
    try:
        return _load(db, batch, specs, source, dry_run, allow_same_media, supersede)
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
    supersede: bool,
) -> LoadPlan:
    with db.write() as conn:
        # Two loads at once (of any batches: reference_ids are unique across all of them)
        # would both see shared jobs as new: loads take turns.
        lock_for_loading(conn)
        by_paths = _by_paths(conn, batch, specs)
        existing = _existing(conn, specs)
        chains = _chains(conn, existing)
        plan = plan_load(batch, specs, existing, source, by_paths, chains, supersede)
        if not allow_same_media:
            repeated = _same_media(conn, plan, source)
            if repeated:
                raise LoadConflict(repeated)
        if dry_run:
            conn.rollback()
            return plan
        now = utcnow()
        new = {
            "batch": batch,
            "state": State.PENDING,
            "attempts": 0,
            "tries": 0,
            "lookup_needed": False,
            "created_at": now,
            "updated_at": now,
        }
        for chunk in _chunks(plan.new, 5000):
            insert_many(conn, _JOBS, _NEW_COLUMNS, (_new_row(s, source) for s in chunk), new)
        lost: list[str] = []
        for job_id, spec in plan.changed:
            # Guarded where the data lives: a worker may have claimed the job since it was read
            # above (workers do not take the loads' lock). Changing a claimed job would send it
            # twice, with the old URLs and the new ones.
            moved = conn.execute(
                update(Job)
                .where(Job.id == job_id, *_NEVER_SENT)
                .values(
                    **_media_values(spec),
                    # A local job's derived id follows its files' content (see plan_load).
                    **({"reference_id": spec.reference_id} if spec.is_local else {}),
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
        for job_id, spec in plan.moved:
            # Only where the row still holds these very files: the paths are where to read
            # them from now, whatever the job's state (the same content is the same job).
            conn.execute(
                update(Job)
                .where(
                    Job.id == job_id,
                    Job.video_sha256 == spec.video_sha256,
                    Job.audio_sha256 == spec.audio_sha256,
                )
                .values(video_url=spec.video_url, audio_url=spec.audio_url, updated_at=now)
            )
        if lost:
            raise LoadConflict(lost)
        refused: list[str] = []
        for old_ref, spec in plan.superseded:
            old = read_old(conn, old_ref)
            try:
                if old is None:
                    raise SupersedeRefused(f"{old_ref} is no longer in the database")
                done = supersede_row(
                    conn, old, spec, f"{source}:{spec.line}", allow_same_media=allow_same_media
                )
            except SupersedeRefused as exc:
                refused.append(f"{source}:{spec.line}: {exc}")
                continue
            plan.supersessions.append((done.old, done.new))
        if refused:
            raise LoadConflict(refused)
    return plan


def _media_values(spec: JobSpec) -> dict[str, Any]:
    return {
        "video_url": spec.video_url,
        "audio_url": spec.audio_url,
        "video_size": spec.video_size,
        "video_sha256": spec.video_sha256,
        "audio_size": spec.audio_size,
        "audio_sha256": spec.audio_sha256,
    }


_EXISTING_COLUMNS = (
    Job.id,
    Job.batch,
    Job.video_url,
    Job.audio_url,
    Job.disable_active_speaker_detection,
    Job.state,
    Job.request_id,
    Job.lookup_needed,
    Job.owner,
    Job.video_sha256,
    Job.audio_sha256,
    Job.reference_id,
    Job.superseded_by,
)


# The look-ups of a load, `keys` a chunk of values: statements made once, so that each chunk
# costs its values' binding alone (an IN of literals is coerced value by value, every time).
_KEYS: sa.BindParameter[str] = sa.bindparam("keys", expanding=True)
_BY_REFERENCE = select(*_EXISTING_COLUMNS).where(Job.reference_id.in_(_KEYS))
_BY_MEDIA = select(Job.id, Job.media_key, Job.reference_id, Job.batch, Job.state).where(
    Job.media_key.in_(_KEYS), Job.state != State.CANCELLED
)


def _by_paths(
    conn: Connection, batch: str, specs: Sequence[JobSpec]
) -> dict[tuple[str, str], Existing]:
    """The batch's local jobs with the same file paths as the manifest's local jobs."""
    found: dict[tuple[str, str], Existing] = {}
    audios = sorted({s.audio_url for s in specs if s.is_local})
    for chunk in _chunks(audios):
        rows = conn.execute(
            select(*_EXISTING_COLUMNS).where(
                Job.batch == batch,
                Job.audio_url.in_(chunk),
                Job.video_sha256.is_not(None),
                CURRENT,
            )
        )
        for row in rows.all():
            job = Existing._make(row)
            found[(job.video_url, job.audio_url)] = job
    return found


def _existing(conn: Connection, specs: Sequence[JobSpec]) -> dict[str, Existing]:
    existing: dict[str, Existing] = {}
    for chunk in _chunks([s.reference_id for s in specs]):
        for row in conn.execute(_BY_REFERENCE, {"keys": chunk}).all():
            job = Existing._make(row)
            existing[job.reference_id] = job
    return existing


def _chains(conn: Connection, existing: Mapping[str, Existing]) -> dict[str, list[Existing]]:
    """For each job superseded, the jobs that replaced it, in order (chains are short)."""
    chains: dict[str, list[Existing]] = {}
    for ref, job in existing.items():
        seen = {ref}
        while job.superseded_by and job.superseded_by not in seen:
            row = conn.execute(
                select(*_EXISTING_COLUMNS).where(Job.reference_id == job.superseded_by)
            ).first()
            if row is None:
                break
            job = Existing._make(row)
            seen.add(job.reference_id)
            chains.setdefault(ref, []).append(job)
    return chains


_JOBS = cast(sa.Table, Job.__table__)
# A new job's own values (_new_row), beside those all of a load's new jobs share (_load).
_NEW_COLUMNS = (
    "reference_id",
    "video_url",
    "audio_url",
    "video_size",
    "video_sha256",
    "audio_size",
    "audio_sha256",
    "disable_active_speaker_detection",
    "source",
    "media_key",
)


def _new_row(spec: JobSpec, source: str) -> tuple[Any, ...]:
    return (
        spec.reference_id,
        spec.video_url,
        spec.audio_url,
        spec.video_size,
        spec.video_sha256,
        spec.audio_size,
        spec.audio_sha256,
        spec.disable_active_speaker_detection,
        f"{source}:{spec.line}",
        spec.media_key,
    )


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
        rows = conn.execute(_BY_MEDIA, {"keys": chunk})
        for job_id, key, ref, batch, state in rows.all():
            spec = incoming[str(key)]
            if job_id in changing or ref == spec.reference_id:
                continue
            problems.append(
                f"{source}:{spec.line}: the same video and audio were loaded before as "
                f"reference_id {ref!r} (batch {batch!r}, {state}); sending them again is paid "
                "again — give --allow-same-media to load them anyway"
            )
    return problems


# -- the cache of local files' SHA-256 ----------


def cached_digest(db: Database, path: str, size: int, stamp: int) -> str | None:
    """A file's SHA-256 as computed before, if it still has that size and stamp (LocalFile)."""
    with db.read() as conn:
        return conn.execute(
            select(FileDigest.sha256).where(
                FileDigest.path == path, FileDigest.size == size, FileDigest.stamp == stamp
            )
        ).scalar_one_or_none()


def save_digest(db: Database, path: str, size: int, stamp: int, sha256: str) -> None:
    """Remember a file's SHA-256 (a cache: the last writer's row stays)."""
    row = {"size": size, "mtime_ns": stamp, "sha256": sha256, "hashed_at": utcnow()}
    db.upsert(FileDigest, {"path": path}, row)
