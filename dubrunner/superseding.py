"""Replacing a job that was sent: a new job with a derived reference_id (REF~2, REF~3, ...),
linked both ways to the old one, which stays for audit (`status REF`) and leaves its batch's
counts, exports and selections (queries.CURRENT). Nothing is sent here: the new job is pending
like any loaded one; the old request is never sent again (retry, resume and claims skip it).

Which jobs may be superseded, in one place (`refusal`): one that was sent and has ended at the
API (completed: a redo; failed there). Not one a worker holds or whose send may have landed
without its answer (exactly-once: its request is still being found out), not one still running
at the API (poll it to its end first), and not one never sent: that job simply takes new values
from its manifest entry (`submit` changes it in place), so there is nothing to supersede.

Both `dubrunner supersede` and `submit --supersede` write through `supersede_row`, inside a
write transaction that holds the loads' lock (PostgreSQL) or the database (SQLite's BEGIN
IMMEDIATE), re-checking the old row where the data lives: a worker or `retry` moving it in
between makes the whole change roll back.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection

from dubrunner.constants import DEFAULT_MAX_UPLOAD_BYTES
from dubrunner.db import Database
from dubrunner.localmedia import Digests, local_pair
from dubrunner.models import Job
from dubrunner.records import JobSpec, utcnow
from dubrunner.states import POLLABLE, State

MAX_REFERENCE_ID = 200
# REF~2, REF~3, ...: `~` is not allowed in a manifest's reference_id, so a derived id never
# meets one a user chose, and the base of a chain is found again without ambiguity.
_DERIVED = re.compile(r"(.+)~([0-9]+)")
# Ended at the API: the only states a job may be superseded from (with its request_id known).
SUPERSEDABLE = frozenset({State.COMPLETED, State.FAILED})
LOADS_LOCK = 4242002  # the loads' advisory lock (loading._load): inserting reference_ids


# The look-up's other answer, said honestly: a request the API never got is sent then.
_NOT_FOUND = "; if the API has no request for it, resume sends it again as it is, once"


class SupersedeRefused(Exception):
    """The job cannot be superseded now; nothing was written."""


@dataclass(frozen=True, slots=True)
class OldJob:
    """A job about to be superseded, as far as superseding cares."""

    id: int
    batch: str
    reference_id: str
    state: str
    request_id: str | None
    lookup_needed: bool
    owner: str | None
    superseded_by: str | None
    video_url: str
    audio_url: str
    disable_active_speaker_detection: bool
    video_sha256: str | None
    audio_sha256: str | None
    video_size: int | None
    audio_size: int | None

    def as_spec(self) -> JobSpec:
        """The old job's inputs, for a redo that changes nothing but the reference_id."""
        return JobSpec(
            self.reference_id,
            self.video_url,
            self.audio_url,
            self.disable_active_speaker_detection,
            0,
            self.video_sha256,
            self.audio_sha256,
            self.video_size,
            self.audio_size,
        )


_OLD_COLUMNS = tuple(getattr(Job, f.name) for f in dataclasses.fields(OldJob))


@dataclass(frozen=True, slots=True)
class Superseded:
    """What superseding did: the old job's reference_id and state, and the new job's id."""

    old: str
    new: str
    state: str  # the old job's state when superseded (completed: a redo)
    batch: str


def refusal(job: OldJob) -> str | None:
    """Why this job cannot be superseded now, or None when it can."""
    ref = job.reference_id
    if job.superseded_by:
        return f"{ref} was already superseded by {job.superseded_by}: supersede that one"
    if job.state == State.SUBMITTING or job.owner is not None:
        return (
            f"{ref} is being sent by a worker right now (state {job.state}); supersede it once "
            "that send has ended"
        )
    if job.lookup_needed:
        lost = f"a request for {ref} may have reached the API without its answer reaching dubrunner"
        resume = f"`dubrunner resume --batch {job.batch}`"
        if job.state != State.FAILED:  # pending or halted: resume takes it as it is
            return f"{lost}; {resume} looks it up first — supersede it after{_NOT_FOUND}"
        # resume leaves failed jobs alone: retry puts it back first (as pending, still owing
        # its look-up, which resume makes before any resend).
        return (
            f"{lost}; `dubrunner retry --ref {ref}`, then {resume} looks it up first — "
            f"supersede it once it has ended (`dubrunner poll --wait`){_NOT_FOUND}"
        )
    if job.state in POLLABLE:
        return (
            f"{ref} is still running at the API (state {job.state}); `dubrunner poll --wait "
            f"--batch {job.batch}` until it ends, then supersede it"
        )
    if not job.request_id:
        return (
            f"{ref} holds no request at the API (state {job.state}): change its video or "
            "audio in the manifest and `dubrunner submit` it again — such a job takes the "
            "manifest's new values"
        )
    if job.state not in SUPERSEDABLE:
        return f"{ref} cannot be superseded in state {job.state}"
    return None


def successor_id(reference_id: str, taken: set[str]) -> str:
    """REF -> REF~2, REF~2 -> REF~3 (never REF~2~2), skipping ids already in `taken`."""
    m = _DERIVED.fullmatch(reference_id)
    base, n = (m.group(1), int(m.group(2))) if m else (reference_id, 1)
    n += 1
    while f"{base}~{n}" in taken:
        n += 1
    new = f"{base}~{n}"
    if len(new) > MAX_REFERENCE_ID:
        raise SupersedeRefused(
            f"{reference_id}: the new reference_id {new[:40]}… would be longer than "
            f"{MAX_REFERENCE_ID} characters"
        )
    return new


def lock_for_loading(conn: Connection) -> None:
    """Take turns with loads (PostgreSQL; SQLite's BEGIN IMMEDIATE serialises every writer)."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text(f"SELECT pg_advisory_xact_lock({LOADS_LOCK})"))


def read_old(conn: Connection, reference_id: str, lock: bool = True) -> OldJob | None:
    """The job; with `lock` (in a write transaction), locked against other writers until it
    ends (PostgreSQL; SQLite's BEGIN IMMEDIATE holds every writer back already)."""
    stmt = select(*_OLD_COLUMNS).where(Job.reference_id == reference_id)
    if lock and conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    row = conn.execute(stmt).first()
    return OldJob(*row) if row is not None else None


def supersede_row(
    conn: Connection, old: OldJob, spec: JobSpec, source: str, allow_same_media: bool = False
) -> Superseded:
    """In the caller's write transaction: insert the new job and link the old one to it, the
    old one re-checked where the data lives. Raises SupersedeRefused (the caller rolls back)."""
    why = refusal(old)
    if why:
        raise SupersedeRefused(why)
    base = _DERIVED.fullmatch(old.reference_id)
    stem = base.group(1) if base else old.reference_id
    taken = set(
        conn.execute(
            select(Job.reference_id).where(Job.reference_id.startswith(f"{stem}~", autoescape=True))
        ).scalars()
    )
    new = successor_id(old.reference_id, taken)
    spec = dataclasses.replace(spec, reference_id=new)
    if not allow_same_media:
        _refuse_same_media(conn, old, spec)
    now = utcnow()
    conn.execute(
        insert(Job).values(
            batch=old.batch,
            reference_id=new,
            video_url=spec.video_url,
            audio_url=spec.audio_url,
            video_size=spec.video_size,
            video_sha256=spec.video_sha256,
            audio_size=spec.audio_size,
            audio_sha256=spec.audio_sha256,
            disable_active_speaker_detection=spec.disable_active_speaker_detection,
            source=source,
            media_key=spec.media_key,
            state=State.PENDING,
            attempts=0,
            tries=0,
            lookup_needed=False,
            supersedes=old.reference_id,
            created_at=now,
            updated_at=now,
        )
    )
    moved = conn.execute(
        update(Job)
        .where(
            Job.id == old.id,
            Job.superseded_by.is_(None),
            Job.owner.is_(None),
            Job.lookup_needed.is_(False),
            Job.request_id.is_not(None),
            sa.or_(*(Job.state == s for s in sorted(SUPERSEDABLE))),
        )
        .values(superseded_by=new, updated_at=now)
    ).rowcount
    if moved != 1:
        raise SupersedeRefused(
            f"{old.reference_id} was moved by another dubrunner while superseding it; nothing "
            "was changed — look at `dubrunner status` and try again"
        )
    return Superseded(old.reference_id, new, old.state, old.batch)


def _refuse_same_media(conn: Connection, old: OldJob, spec: JobSpec) -> None:
    """The new inputs already asked for under another (current) reference_id: paid again."""
    row = conn.execute(
        select(Job.reference_id, Job.batch, Job.state)
        .where(
            Job.media_key == spec.media_key,
            Job.id != old.id,
            Job.superseded_by.is_(None),
            Job.state != State.CANCELLED,
        )
        .limit(1)
    ).first()
    if row is not None:
        ref, batch, state = row
        raise SupersedeRefused(
            f"the same video and audio were loaded before as reference_id {ref!r} (batch "
            f"{batch!r}, {state}); sending them again is paid again — give --allow-same-media "
            "to supersede anyway"
        )


def supersede(
    db: Database,
    reference_id: str,
    spec_of: SpecOf,
    source: str,
    allow_same_media: bool = False,
) -> Superseded:
    """`dubrunner supersede`: one job, one transaction. `spec_of(old)` gives the new inputs;
    local files are hashed before the transaction (which holds every other writer back), and
    the job is checked again inside it."""
    with db.read() as conn:
        seen = read_old(conn, reference_id, lock=False)
    if seen is None:
        raise SupersedeRefused(f"no job with reference_id {reference_id!r}")
    why = refusal(seen)
    if why:
        raise SupersedeRefused(why)
    spec = spec_of(seen)
    with db.write() as conn:
        lock_for_loading(conn)
        old = read_old(conn, reference_id)
        if old is None or old.as_spec() != seen.as_spec():
            raise SupersedeRefused(
                f"{reference_id} was changed by another dubrunner meanwhile; nothing was "
                "changed — try again"
            )
        return supersede_row(conn, old, spec, source, allow_same_media)


class SpecOf:
    """The new job's inputs: the options given, the rest as the old job had them. Local files
    are checked and hashed like a manifest's (relative to `base_dir`)."""

    def __init__(
        self,
        video: str | None,
        audio: str | None,
        disable_asd: bool | None,
        base_dir: Path,
        digests: Digests,
        max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    ) -> None:
        self.video = video
        self.audio = audio
        self.disable_asd = disable_asd
        self.base_dir = base_dir
        self.digests = digests
        self.max_upload_bytes = max_upload_bytes

    def __call__(self, old: OldJob) -> JobSpec:
        asd = old.disable_active_speaker_detection if self.disable_asd is None else self.disable_asd
        if self.video is None and self.audio is None:
            return dataclasses.replace(old.as_spec(), disable_active_speaker_detection=asd)
        return job_spec(
            self.video if self.video is not None else old.video_url,
            self.audio if self.audio is not None else old.audio_url,
            asd,
            self.base_dir,
            self.digests,
            self.max_upload_bytes,
        )


def job_spec(
    video: str,
    audio: str,
    disable_asd: bool,
    base_dir: Path,
    digests: Digests,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
) -> JobSpec:
    """A job's inputs given on the command line, checked as a manifest's are: two http(s)
    URLs, or two local files (hashed). Raises SupersedeRefused with every problem."""
    from dubrunner.manifest_core import check_source

    problems = [p for p in (check_source(video, "video"), check_source(audio, "audio")) if p]
    files = None
    if not problems:
        files, found = local_pair(video, audio, base_dir, max_upload_bytes)
        problems = [text for _, text in found]
    if problems:
        raise SupersedeRefused("; ".join(problems))
    if files is None:
        return JobSpec("-", video, audio, disable_asd, 0)
    try:
        hashes = digests(files[0]), digests(files[1])
    except OSError as exc:
        raise SupersedeRefused(f"cannot read a file: {exc}") from None
    v, a = files
    return JobSpec("-", v.uri, a.uri, disable_asd, 0, *hashes, v.size, a.size)
