"""The job table and the attempts table. Times are UTC; leases are Unix seconds."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    batch: Mapped[str] = mapped_column(String(100))
    # Unique across the database: the API looks requests up by it account-wide.
    reference_id: Mapped[str] = mapped_column(String(200), unique=True)
    video_url: Mapped[str] = mapped_column(Text)
    audio_url: Mapped[str] = mapped_column(Text)
    # The column's key is the attribute's name: Core inserts of dicts (loading's executemany)
    # match keys, and silently dropped this one under its short column name (every job then
    # went to the API with detection on, whatever the manifest said).
    disable_active_speaker_detection: Mapped[bool] = mapped_column(
        "disable_asd", Boolean, default=False, key="disable_active_speaker_detection"
    )
    source: Mapped[str | None] = mapped_column(Text)  # manifest file:line it came from
    # A digest of (video, audio, settings): the same media loaded again under another
    # reference_id (a renamed manifest) would be paid again; loading says so first.
    media_key: Mapped[str | None] = mapped_column(String(32))
    # A job of two local files (video_url and audio_url are then file:// URLs): the size and
    # SHA-256 of each file as loaded, what is uploaded and what identifies the job.
    video_size: Mapped[int | None] = mapped_column(BigInteger)
    video_sha256: Mapped[str | None] = mapped_column(String(64))
    audio_size: Mapped[int | None] = mapped_column(BigInteger)
    audio_sha256: Mapped[str | None] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(20))
    # The API documents UUIDs; a look-up may show ids of another shape, and they are kept too.
    request_id: Mapped[str | None] = mapped_column(String(200))
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # POSTs sent
    # POSTs that count against --max-attempts: not those the server only throttled.
    tries: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_error: Mapped[str | None] = mapped_column(Text)
    last_http_status: Mapped[int | None] = mapped_column(Integer)
    # A POST may have reached the API without its answer reaching us: look up before any resend.
    lookup_needed: Mapped[bool] = mapped_column(Boolean, default=False)
    # After an ambiguous answer the server may still be creating the request: a look-up that
    # finds nothing before this moment (Unix seconds) proves nothing, and the job waits for it.
    lookup_after: Mapped[float | None] = mapped_column(Float)
    owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires: Mapped[float | None] = mapped_column(Float)
    # From when a look-up tells the truth about every POST its owner made (see records.Lease).
    settle_at: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)
    submitted_at: Mapped[datetime | None] = mapped_column(DateTime)
    # What polling learned, kept verbatim (the API does not enumerate its statuses).
    remote_status: Mapped[str | None] = mapped_column(String(40))
    remote_error: Mapped[str | None] = mapped_column(Text)
    output_url: Mapped[str | None] = mapped_column(Text)
    remote_started_at: Mapped[str | None] = mapped_column(String(40))
    remote_finished_at: Mapped[str | None] = mapped_column(String(40))
    polled_at: Mapped[datetime | None] = mapped_column(DateTime)
    # Poll rounds in a row the API answered "not found" for this request_id (while knowing others
    # of ours); at --gone-after the job fails: the API no longer knows the request.
    remote_missing: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # When (Unix seconds) the API first said the request finished without giving an output_url.
    remote_done_at: Mapped[float | None] = mapped_column(Float)
    # The download of the output: downloaded | failed (None: not tried).
    download_state: Mapped[str | None] = mapped_column(String(20))
    download_error: Mapped[str | None] = mapped_column(Text)
    local_path: Mapped[str | None] = mapped_column(Text)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64))
    # The file's modification time (ns) when recorded: a file changed since is hashed again.
    local_mtime_ns: Mapped[int | None] = mapped_column(BigInteger)
    # A sent job replaced by another (`dubrunner supersede`): the successor's reference_id. The
    # row stays for audit but is out of its batch's counts, exports and selections (see
    # queries.current). `supersedes` is the other end of the link, on the successor.
    superseded_by: Mapped[str | None] = mapped_column(String(200))
    supersedes: Mapped[str | None] = mapped_column(String(200))

    __table_args__ = (
        # Claims read `WHERE [batch = ? AND] state = 'pending' AND superseded_by IS NULL ORDER BY
        # id LIMIT n`: with id in the index that is a range scan, not a sort of every pending job;
        # and the summary's count of current jobs per batch and state reads the index alone.
        Index("ix_jobs_batch_state_superseded_by_id", "batch", "state", "superseded_by", "id"),
        Index("ix_jobs_state_id", "state", "id"),
        Index("ix_jobs_state_lease_expires", "state", "lease_expires"),
        Index("ix_jobs_owner", "owner"),
        Index("ix_jobs_media_key", "media_key"),
    )


class Attempt(Base):
    """One HTTP exchange about a job: the audit trail behind 'why did episode 42 fail?'."""

    __tablename__ = "attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(DateTime)
    kind: Mapped[str] = mapped_column(String(20))  # generate | lookup | poll | download
    # generate: an errors.Action; lookup: found / not_found or an Action; poll: a job state;
    # download: downloaded / failed
    outcome: Mapped[str] = mapped_column(String(20))
    http_status: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    request_id: Mapped[str | None] = mapped_column(String(200))
    duration_ms: Mapped[int | None] = mapped_column(Integer)
    worker: Mapped[str | None] = mapped_column(String(200))


class RateBudget(Base):
    """A request rate shared by every worker on the database (`--rate-shared`): GCRA's
    theoretical arrival time, in Unix seconds, advanced by whoever books the next slots."""

    __tablename__ = "rate_budget"

    name: Mapped[str] = mapped_column(String(300), primary_key=True)  # the API's base URL
    tat: Mapped[float] = mapped_column(Float)


class ApiHealth(Base):
    """How the API looks to the workers on this database, so that `status` can say it: one row
    per API address, written when a worker's view changes (and kept fresh during an outage)."""

    __tablename__ = "api_health"

    base_url: Mapped[str] = mapped_column(String(300), primary_key=True)
    condition: Mapped[str] = mapped_column(String(20))  # health.Condition
    since: Mapped[float | None] = mapped_column(Float)  # Unix seconds the trouble began
    last_success: Mapped[float | None] = mapped_column(Float)
    retry_every: Mapped[float | None] = mapped_column(Float)  # seconds between probes
    message: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[float] = mapped_column(Float)
    worker: Mapped[str | None] = mapped_column(String(200))


class FileDigest(Base):
    """The SHA-256 of a local file, computed once: valid while its size and stamp stay."""

    __tablename__ = "file_digests"

    path: Mapped[str] = mapped_column(Text, primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    # localmedia.LocalFile.stamp: mtime, ctime and inode folded together (the column keeps the
    # name it was made with, when it held the mtime alone; an old row no longer matches).
    stamp: Mapped[int] = mapped_column("mtime_ns", BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    hashed_at: Mapped[datetime] = mapped_column(DateTime)
