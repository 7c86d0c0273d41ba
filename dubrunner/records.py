"""The values that pass between the layers: a manifest's job, a claimed job, what a worker did
with it, a lease. Plain data, no behaviour that touches a database or the network."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime


def utcnow() -> datetime:
    """The time as the job table stores it: UTC, without a zone."""
    return datetime.now(UTC).replace(tzinfo=None)


def media_key(video_url: str, audio_url: str, disable_asd: bool) -> str:
    """A digest of what a job asks the API to make: the same key, the same paid work."""
    text = f"{video_url}\0{audio_url}\0{1 if disable_asd else 0}"
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def derive_reference_id(batch: str, video_url: str, audio_url: str) -> str:
    """A stable reference_id for a job that has none: same batch and URLs (or, for local files,
    the same content: `sha256:...`), same id."""
    digest = hashlib.sha256(f"{batch}\0{video_url}\0{audio_url}".encode()).hexdigest()[:20]
    return f"{batch}-{digest}"


@dataclass(frozen=True, slots=True)
class JobSpec:
    """One job of a manifest, validated."""

    reference_id: str
    video_url: str
    audio_url: str
    disable_active_speaker_detection: bool
    line: int  # where the job starts in the manifest (1-based)
    # A job of two local files (uploaded through generate-with-media): the URLs are file://
    # URLs, and the files' content is what identifies the job.
    video_sha256: str | None = None
    audio_sha256: str | None = None
    video_size: int | None = None
    audio_size: int | None = None
    # media_key(*identity), made once: a load of 100,000 jobs looks it up more than once each.
    media_key: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "media_key", media_key(*self.identity))

    @property
    def is_local(self) -> bool:
        return self.video_sha256 is not None

    @property
    def identity(self) -> tuple[str, str, bool]:
        """What the API is asked to make: the URLs, or for local files their content."""
        return job_identity(
            self.video_url,
            self.audio_url,
            self.disable_active_speaker_detection,
            self.video_sha256,
            self.audio_sha256,
        )


def job_identity(
    video_url: str, audio_url: str, asd: bool, video_sha256: str | None, audio_sha256: str | None
) -> tuple[str, str, bool]:
    """(video, audio, settings) as they identify a job: a local file by its content, so that
    moving the folder changes nothing."""
    if video_sha256 is not None and audio_sha256 is not None:
        return f"sha256:{video_sha256}", f"sha256:{audio_sha256}", asd
    return video_url, audio_url, asd


@dataclass(frozen=True, slots=True)
class Lease:
    """How long a claim holds, derived from the request timeout R: the time within which the
    server is assumed to act on a POST it received, if it ever does.

    Every write that asserts a worker's hold on a job (the claim, each heartbeat's renewal, a
    confirmation right before a send) is one atomic guarded UPDATE made at a moment T. It covers
    sends of that job for `window` seconds from T (checked right before the first byte of each
    POST, on a clock that keeps counting while the machine is suspended), and sets:

    - `settle_at` = T + window + R: a POST covered by it was acted on by then, so from then on a
      look-up by reference_id tells the truth. A worker on this host that is provably dead is
      reclaimed then.
    - `lease_expires` = T + 2R, later than settle_at: anyone may reclaim the job then, and looks
      it up before sending it.

    Renewals come every `heartbeat`, half the window, so a worker whose database answers keeps
    sending without a write per job; one paused past its lease finds, at its next renewal, that
    the jobs another worker took are no longer its own, and sends none of them.
    """

    request_timeout: float = 60.0

    @property
    def heartbeat(self) -> float:
        return max(0.05, self.request_timeout / 6)

    @property
    def window(self) -> float:
        """How long after a write that asserted the hold a POST may still leave."""
        return 2 * self.heartbeat

    @property
    def seconds(self) -> float:
        return 2 * self.request_timeout

    def held(self, now: float) -> tuple[float, float]:
        """(lease_expires, settle_at) written by a claim, renewal or confirmation at `now`."""
        return now + self.seconds, now + self.window + self.request_timeout


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    """A job a worker holds: what it needs to send it, and what earlier claims left owed."""

    id: int
    reference_id: str
    video_url: str
    audio_url: str
    disable_active_speaker_detection: bool
    lookup_owed: bool  # an earlier POST may have landed: look it up before any resend
    posts: int  # POSTs sent so far, all claims together
    lookup_after: float | None  # a "not found" before this moment proves nothing (Unix time)
    tries: int  # POSTs so far that count against --max-attempts
    # Local files (file:// URLs above): uploaded, and checked unchanged first (see uploads.py).
    video_sha256: str | None = None
    audio_sha256: str | None = None
    video_size: int | None = None
    audio_size: int | None = None

    @property
    def is_local(self) -> bool:
        return self.video_sha256 is not None


@dataclass(frozen=True, slots=True)
class Tally:
    """What one claim of a job has come to so far, as the job table keeps it."""

    posts: int
    tries: int
    http_status: int | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class PollTarget:
    id: int
    reference_id: str
    request_id: str
    submitted_at: datetime | None = None
    missing: int = 0  # rounds in a row the API answered "not found"
    done_at: float | None = None  # since when the API says finished, without an output_url
    status: str | None = None  # the remote status last recorded


@dataclass(frozen=True, slots=True)
class FetchTarget:
    id: int
    batch: str
    reference_id: str
    request_id: str | None
    output_url: str
    download_state: str | None
    local_path: str | None
    size_bytes: int | None
    sha256: str | None
    polled_at: datetime | None = None  # when the output_url was had from the API
    local_mtime_ns: int | None = None  # the file's modification time when it was recorded


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One HTTP exchange about a job, for the attempts table (its audit trail)."""

    kind: str  # generate | lookup | poll | download
    outcome: str
    http_status: int | None
    error: str | None
    duration_ms: int | None
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class RemoteView:
    """What a GET of a request said about it, ready to be kept (see poller.interpret)."""

    state: str  # the job's state it implies (processing, completed or failed)
    status: str | None
    error: str | None
    output_url: str | None
    started_at: str | None
    finished_at: str | None
    last_error: str | None  # the job's error when it failed remotely
    # Since when (Unix seconds) the API says it finished without an output_url; None otherwise.
    done_at: float | None = None


@dataclass(slots=True)
class LoadPlan:
    batch: str
    new: list[JobSpec] = field(default_factory=list)
    changed: list[tuple[int, JobSpec]] = field(default_factory=list)
    # Local jobs whose files moved (same content, new paths): only their paths are updated.
    moved: list[tuple[int, JobSpec]] = field(default_factory=list)
    # Sent jobs the manifest changed, under `--supersede`: (the reference_id to supersede, the
    # new inputs); once written, `supersessions` holds (old reference_id, new reference_id).
    superseded: list[tuple[str, JobSpec]] = field(default_factory=list)
    supersessions: list[tuple[str, str]] = field(default_factory=list)
    unchanged: int = 0
    already_submitted: int = 0  # among unchanged: the API already holds them
    to_send: int = 0  # what a run would send: new + changed + unchanged not yet at the API


@dataclass(frozen=True, slots=True)
class HealthView:
    """How the API at one address looked to a worker, at `updated_at` (Unix seconds)."""

    base_url: str
    condition: str  # healthy | outage | misconfigured
    since: float | None
    last_success: float | None
    retry_every: float | None
    message: str | None
    updated_at: float
    worker: str | None = None
