"""Local jobs sent through generate-with-media by the real worker, in-process: streamed bodies,
the same look-ups as for URLs, files checked unchanged, --upload-concurrency (fast tier)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from dubrunner.api import ApiClient
from dubrunner.emulator import Emulator
from dubrunner.holds import Holds
from dubrunner.localmedia import Digests
from dubrunner.manifest import load as load_manifest
from dubrunner.records import ClaimedJob, Lease
from dubrunner.sessions import submit_pending
from dubrunner.store import Store
from dubrunner.uploads import FileChanged, FilePart, MultipartBody, UploadInterrupted
from dubrunner.worker import WorkerOptions
from tests import mediafiles
from tests.conftest import Database, FakeUi, assert_exactly_once, db_rows

OPTIONS = WorkerOptions(concurrency=4, backoff_base=0.02, lookup_grace=0.3)


def _load(store: Store, folder: Path, n: int, size: int = 50_000) -> Path:
    manifest = mediafiles.local_manifest(folder, n, size=size)
    m = load_manifest(manifest, digests=Digests(store.cached_digest, store.save_digest))
    store.load(m.batch, m.jobs, str(manifest))
    return manifest


def _assert_files_arrived(emulator: Emulator, db: Database) -> None:
    uploads = emulator.uploads()
    rows = db_rows(db, "SELECT reference_id, video_sha256, audio_sha256, video_size FROM jobs")
    for ref, video_sha, audio_sha, video_size in rows:
        [parts] = uploads[ref]
        assert parts["video"] == (video_size, video_sha)
        assert parts["audio"][1] == audio_sha


def test_local_jobs_are_uploaded_once_each_even_when_answers_are_lost(
    emulator: Emulator, store: Store, api: ApiClient, db: Database, tmp_path: Path
) -> None:
    emulator.update(drop_after_accept=0.3)
    _load(store, tmp_path, 8)
    ending = submit_pending(store, api, None, OPTIONS, FakeUi())
    assert ending.code == 0, ending
    assert_exactly_once(emulator, db, 8)
    _assert_files_arrived(emulator, db)
    assert emulator.stats.dropped > 0
    lookups = db_rows(db, "SELECT count(*) FROM attempts WHERE kind = 'lookup'")[0][0]
    assert lookups >= emulator.stats.dropped


def test_a_file_changed_after_loading_fails_its_job_unsent(
    emulator: Emulator, store: Store, api: ApiClient, db: Database, tmp_path: Path
) -> None:
    _load(store, tmp_path, 2)
    changed = tmp_path / "media" / "e001-ja.wav"
    mediafiles.audio(changed, 25_000, seed="edited after loading")
    ending = submit_pending(store, api, None, OPTIONS, FakeUi())
    assert ending.code == 1
    rows = dict(db_rows(db, "SELECT state, last_error FROM jobs ORDER BY id"))
    assert rows["failed"] == (
        f"the audio file {changed} changed since it was loaded: load the manifest again"
    )
    assert len(emulator.accepted()) == 1  # the other job; the changed one was never sent
    assert db_rows(db, "SELECT attempts FROM jobs WHERE state = 'failed'") == [(0,)]


def _rewrite_in_place(path: Path, seed: str) -> None:
    """Other bytes of the same size in the same file (same inode), its mtime put back."""
    before = path.stat()
    data = path.read_bytes()
    replacement = mediafiles.make_file(path.with_suffix(".new"), data[:64], len(data), seed)
    with open(path, "r+b") as f:
        f.write(replacement.read_bytes())
    replacement.unlink()
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_a_file_swapped_under_the_same_name_size_and_mtime_is_not_uploaded(
    emulator: Emulator, store: Store, api: ApiClient, db: Database, tmp_path: Path
) -> None:
    """Found by an outside attack: a symlink pointed at another file of the same size and
    mtime, or a file rewritten in place with its mtime put back, was uploaded (and paid for)
    though its bytes were not those the job is identified by."""
    manifest = mediafiles.local_manifest(tmp_path, 3, size=300_000)
    media = tmp_path / "media"
    real = media / "e000.real.mp4"
    (media / "e000.mp4").rename(real)
    (media / "e000.mp4").symlink_to(real.name)
    other = mediafiles.video(media / "other.mp4", 300_000, seed="another file")
    m = load_manifest(manifest, digests=Digests(store.cached_digest, store.save_digest))
    store.load(m.batch, m.jobs, str(manifest))
    os.utime(other, ns=(real.stat().st_atime_ns, real.stat().st_mtime_ns))
    (media / "e000.mp4").unlink()
    (media / "e000.mp4").symlink_to(other.name)
    _rewrite_in_place(media / "e001-ja.wav", "rewritten in place")
    ending = submit_pending(store, api, None, OPTIONS, FakeUi())
    assert ending.code == 1
    rows = db_rows(
        db, "SELECT reference_id, state, last_error, lookup_needed FROM jobs ORDER BY id"
    )
    assert [r[1:] for r in rows] == [
        (
            "failed",
            f"the video file {media / 'e000.mp4'} changed since it was loaded: "
            "load the manifest again",
            False,
        ),
        (
            "failed",
            f"the audio file {media / 'e001-ja.wav'} changed since it was loaded: "
            "load the manifest again",
            False,
        ),
        ("submitted", None, False),
    ]
    assert list(emulator.accepted()) == [rows[2][0]]
    _assert_files_arrived_for(emulator, db, rows[2][0])


def _assert_files_arrived_for(emulator: Emulator, db: Database, ref: str) -> None:
    [(video_size, video_sha, audio_sha)] = db_rows(
        db, "SELECT video_size, video_sha256, audio_sha256 FROM jobs WHERE reference_id = ?", ref
    )
    [parts] = emulator.uploads()[ref]
    assert parts["video"] == (video_size, video_sha)
    assert parts["audio"][1] == audio_sha


def test_a_file_changed_during_its_upload_stops_the_body_before_its_end(
    emulator: Emulator,
    store: Store,
    api: ApiClient,
    db: Database,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The bytes are hashed as they are read: a file rewritten while it is being sent stops
    the body before its last chunk, so the API never has a whole request; the job fails
    unsent, with nothing to look up (no look-up loop, nothing paid)."""
    _load(store, tmp_path, 2, size=3 * 1024 * 1024 + 100)
    target = tmp_path / "media" / "e000.mp4"
    reads = 0

    def rewrite_mid_body(self: Holds, job: ClaimedJob) -> object:
        def guard() -> None:
            nonlocal reads
            reads += 1
            if job.video_url == target.as_uri() and reads == 2:  # after its first chunk
                _rewrite_in_place(target, "rewritten mid-upload")

        return guard

    monkeypatch.setattr(Holds, "body_guard", rewrite_mid_body)
    options = WorkerOptions(concurrency=1, backoff_base=0.02, lookup_grace=0.3)
    ending = submit_pending(store, api, None, options, FakeUi())
    assert ending.code == 1
    rows = db_rows(
        db, "SELECT reference_id, state, last_error, lookup_needed FROM jobs ORDER BY id"
    )
    assert [r[1:] for r in rows] == [
        (
            "failed",
            f"the video file {target} changed since it was loaded: load the manifest again",
            False,
        ),
        ("submitted", None, False),
    ]
    assert list(emulator.accepted()) == [rows[1][0]]
    assert emulator.stats.uploads == 1  # the cut body was never read to its end
    lookups = db_rows(db, "SELECT count(*) FROM attempts WHERE kind = 'lookup'")[0][0]
    assert lookups == 0


def test_a_body_whose_bytes_do_not_hash_right_stops_before_its_last_chunk(
    tmp_path: Path,
) -> None:
    video = mediafiles.video(tmp_path / "v.mp4", 3 * 1024 * 1024 + 5)
    audio = mediafiles.audio(tmp_path / "a.wav", 2 * 1024 * 1024)
    size_v, size_a = video.stat().st_size, audio.stat().st_size

    def parts(video_sha: str, audio_sha: str) -> list[FilePart]:
        return [
            FilePart("video", str(video), size_v, "video/mp4", video_sha),
            FilePart("audio", str(audio), size_a, "audio/wav", audio_sha),
        ]

    good_v, good_a = mediafiles.sha256(video), mediafiles.sha256(audio)
    whole = b"".join(MultipartBody([("reference_id", "r")], parts(good_v, good_a), boundary="B"))
    assert whole == b"".join(MultipartBody([("reference_id", "r")], parts("", ""), boundary="B"))
    # Where each file's bytes end in the whole body:
    ends = {"video": whole.index(b'\r\n--B\r\nContent-Disposition: form-data; name="audio"')}
    ends["audio"] = len(whole) - len(b"\r\n--B--\r\n")
    for bad_v, bad_a, which in ((good_v, "0" * 64, "audio"), ("0" * 64, good_a, "video")):
        body = MultipartBody([("reference_id", "r")], parts(bad_v, bad_a), boundary="B")
        sent: list[bytes] = []
        with pytest.raises(FileChanged, match=f"the {which} file .* changed since it was loaded"):
            for chunk in body:
                sent.append(chunk)
        data = b"".join(sent)
        assert len(data) < ends[which]  # its last bytes held back: the body is never whole
        assert whole.startswith(data)


def test_upload_concurrency_bounds_the_uploads_at_once(
    emulator: Emulator, store: Store, api: ApiClient, db: Database, tmp_path: Path
) -> None:
    emulator.update(upload_read_rate=4_000_000)  # each upload takes over 0.1 s
    _load(store, tmp_path, 6, size=300_000)
    options = WorkerOptions(concurrency=6, backoff_base=0.02, upload_concurrency=2)
    assert submit_pending(store, api, None, options, FakeUi()).code == 0
    assert_exactly_once(emulator, db, 6)
    assert emulator.stats.peak_uploading == 2


def test_the_body_is_what_it_says(tmp_path: Path) -> None:
    video = mediafiles.video(tmp_path / 'v "1".mp4', 3 * 1024 * 1024 + 5)
    audio = mediafiles.audio(tmp_path / "a.wav", 10)
    files = [
        FilePart("video", str(video), video.stat().st_size, "video/mp4"),
        FilePart("audio", str(audio), audio.stat().st_size, "audio/wav"),
    ]
    seen: list[int] = []
    body = MultipartBody([("reference_id", "r-1")], files, sent=seen.append, boundary="B")
    chunks = list(body)
    data = b"".join(chunks)
    assert len(data) == body.length
    assert max(len(c) for c in chunks) <= 1024 * 1024  # streamed, never the whole file
    assert sum(seen) == video.stat().st_size + audio.stat().st_size
    assert data.startswith(b'--B\r\nContent-Disposition: form-data; name="reference_id"\r\n\r\nr-1')
    assert b'filename="v %221%22.mp4"\r\nContent-Type: video/mp4\r\n\r\n' in data
    assert data.endswith(audio.read_bytes() + b"\r\n--B--\r\n")


def test_a_body_stops_when_its_file_shrinks_or_its_hold_lapses(tmp_path: Path) -> None:
    video = mediafiles.video(tmp_path / "v.mp4", 3 * 1024 * 1024)
    part = FilePart("video", str(video), 4 * 1024 * 1024, "video/mp4")  # bigger than it is
    with pytest.raises(UploadInterrupted, match="became shorter"):
        list(MultipartBody([], [part]))
    known = FilePart("video", str(video), 4 * 1024 * 1024, "video/mp4", "0" * 64)
    with pytest.raises(FileChanged, match="changed since it was loaded"):
        list(MultipartBody([], [known]))

    def lapsed() -> None:
        raise UploadInterrupted("the hold lapsed")

    with pytest.raises(UploadInterrupted, match="the hold lapsed"):
        list(MultipartBody([], [part], check=lapsed))


def test_the_body_guard_follows_the_hold(db: Database) -> None:
    store = Store(db.url)
    holds = Holds(store, "me", None, Lease(0.3), 1, None, threading.Event())
    job = ClaimedJob(1, "r", "file:///v", "file:///a", False, False, 0, None, 0)
    guard = holds.body_guard(job)
    with pytest.raises(UploadInterrupted):
        guard()  # not held at all
    holds._held[1] = -1e9  # held, but not renewed for ages
    with pytest.raises(UploadInterrupted):
        guard()
    from dubrunner.api import boottime

    holds._held[1] = boottime()
    guard()  # freshly renewed: goes on
    holds._taken.add(1)
    with pytest.raises(UploadInterrupted):
        guard()
    store.close()


def test_the_progress_line_tells_megabytes_rate_and_eta() -> None:
    import time as clock

    from dubrunner.sessions import _uploading
    from dubrunner.worker import RunReport

    started = clock.monotonic() - 10
    report = RunReport(upload_total=800_000_000, upload_bytes=200_000_000)
    line = _uploading(report, started)
    assert line.startswith(" · uploaded 200 of 800 MB, 20.0 MB/s, ETA 30 s"), line
    assert _uploading(RunReport(upload_total=500_000, upload_bytes=1), started) == ""  # small


def test_an_upload_reset_mid_body_is_looked_up_then_sent_again(
    emulator: Emulator, store: Store, api: ApiClient, db: Database, tmp_path: Path
) -> None:
    emulator.update(p_upload_reset=0.4)
    _load(store, tmp_path, 6, size=400_000)
    assert submit_pending(store, api, None, OPTIONS, FakeUi()).code == 0
    assert_exactly_once(emulator, db, 6)
    _assert_files_arrived(emulator, db)
    resets = emulator.stats.upload_resets
    assert resets > 0
    lookups = db_rows(db, "SELECT count(*) FROM attempts WHERE kind = 'lookup'")[0][0]
    assert lookups >= resets  # each cut upload was looked up before it was sent again


def test_every_setting_reaches_the_api(
    emulator: Emulator, store: Store, api: ApiClient, db: Database, tmp_path: Path
) -> None:
    mediafiles.video(tmp_path / "v.mp4")
    mediafiles.audio(tmp_path / "a.wav")
    mediafiles.audio(tmp_path / "b.wav", seed="b")
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        "defaults: {disable_active_speaker_detection: true}\n"
        "jobs:\n"
        "  - {reference_id: r-on, video: v.mp4, audio: a.wav}\n"
        "  - {reference_id: r-off, video: v.mp4, audio: b.wav,"
        " disable_active_speaker_detection: false}\n"
    )
    m = load_manifest(manifest)
    store.load(m.batch, m.jobs, str(manifest))
    assert submit_pending(store, api, None, OPTIONS, FakeUi()).code == 0
    sent = {r.reference_id: r for r in emulator.requests.values()}
    assert sent["r-on"].disable_active_speaker_detection is True
    assert sent["r-off"].disable_active_speaker_detection is False
    assert (sent["r-on"].video_url, sent["r-on"].audio_url) == ("upload:v.mp4", "upload:a.wav")
