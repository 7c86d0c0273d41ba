"""Checking a batch's media before paying for it: a manifest's local files (bad input, exit 2)
and every media URL (a table of problems, exit 1)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from dubrunner import uploads
from dubrunner.constants import EXIT_INCOMPLETE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, MAX_SHOWN
from dubrunner.localmedia import DEFAULT_MAX_UPLOAD_BYTES, Digests, file_problem
from dubrunner.manifest import Manifest
from dubrunner.preflight import MediaProblem, Pair, Preflight, PreflightReport
from dubrunner.redact import redact_url
from dubrunner.session_ui import Ending, Ui


@dataclass(frozen=True)
class MediaCheck:
    """How hard to check media URLs: at once overall, and at once on any one host."""

    concurrency: int = 8
    per_host: int = 2
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES  # local files larger are a problem


class MediaJob(Protocol):
    """A job as the media check sees it: a manifest's, or one in the table."""

    @property
    def reference_id(self) -> str: ...
    @property
    def video_url(self) -> str: ...
    @property
    def audio_url(self) -> str: ...


class LoadedJob(uploads.LoadedJob, Protocol):
    """A local job's files as loaded, by its reference_id."""

    @property
    def reference_id(self) -> str: ...


@dataclass(frozen=True)
class Rehash:
    """Local files to hash again (`digests` without a cache), each to be the file its job was
    loaded with (check of a loaded batch)."""

    jobs: Iterable[LoadedJob]
    digests: Digests


def check_local_files(manifest: Manifest, media: MediaCheck) -> Ending | None:
    """A manifest's local files, checked before its URLs: a file that cannot be uploaded, or
    whose first bytes are not of its kind (a video given as the audio), is bad input like a
    missing one: exit 2, every problem with its file:line."""
    problems = []
    for job in manifest.jobs:
        if not job.is_local:
            continue
        for which, uri in (("video", job.video_url), ("audio", job.audio_url)):
            problem = file_problem(uri, which, media.max_upload_bytes)
            if problem:
                problems.append(
                    f"{manifest.path}:{job.line}: {job.reference_id}: {which}: {problem}"
                )
    if not problems:
        return None
    return Ending(
        f"{len(problems)} problem(s) with local files in {manifest.path}",
        EXIT_USAGE,
        is_error=True,
        details=tuple(problems[:MAX_SHOWN]),
    )


def check_media(
    jobs: Iterable[MediaJob], media: MediaCheck, ui: Ui, rehash: Rehash | None = None
) -> Ending:
    """Check every media URL of these jobs; exit 1 when any job has a problem. With `rehash`,
    the files of the local jobs among them are also hashed again: each must still be the file
    its job was loaded with."""
    return run_check(jobs, media, ui, rehash)[1]


def changed_files(rehash: Rehash, only: set[str], skip: set[tuple[str, str]]) -> list[MediaProblem]:
    """The local files of the jobs in `only` that are not those loaded (uploads.loaded_file),
    but for those in `skip` (already found unreadable or of the wrong kind)."""
    problems = []
    for j in rehash.jobs:
        if j.reference_id not in only:
            continue
        for which, uri, size, sha in (
            ("video", j.video_url, j.video_size, j.video_sha256),
            ("audio", j.audio_url, j.audio_size, j.audio_sha256),
        ):
            if sha is None or (j.reference_id, which) in skip:
                continue
            found = uploads.loaded_file(which, uri, size, sha, rehash.digests)
            if isinstance(found, str):
                problems.append(MediaProblem(j.reference_id, which, redact_url(uri), found))
    return problems


def run_check(
    jobs: Iterable[MediaJob], media: MediaCheck, ui: Ui, rehash: Rehash | None = None
) -> tuple[PreflightReport, Ending]:
    pairs = [Pair(j.reference_id, j.video_url, j.audio_url) for j in jobs]
    preflight = Preflight(
        media.concurrency, media.per_host, max_upload_bytes=media.max_upload_bytes
    )
    try:
        with ui.progress("checking media", None, preflight.stop.set) as progress:
            report = preflight.run(
                pairs, lambda done, total: progress.update(done, f"{done} of {total} URLs")
            )
    finally:
        preflight.close()
    if rehash is not None and not report.interrupted:
        skip = {(p.reference_id, p.which) for p in report.problems}
        only = {p.reference_id for p in pairs}
        report.problems += changed_files(rehash, only, skip)
        report.problems.sort(key=lambda p: (p.reference_id, p.which))
    if report.problems:
        ui.media_problems(report.problems)
    bad = len(report.bad_references)
    if report.interrupted:
        return report, Ending(
            f"interrupted: checked {report.checked} of {report.urls} media URL(s) of "
            f"{report.jobs} job(s) before the stop: {bad} job(s) with a problem so far",
            EXIT_INTERRUPTED,
        )
    return report, Ending(
        f"checked {report.checked} media URL(s) of {report.jobs} job(s): "
        f"{bad} job(s) with a problem",
        EXIT_INCOMPLETE if report.problems else EXIT_OK,
        routine=True,
    )
