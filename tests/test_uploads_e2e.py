"""Local files uploaded by real dubrunner processes: lost answers, and kill -9 mid-upload."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from dubrunner.emulator import Emulator
from tests import mediafiles
from tests.conftest import BOTH_DATABASES, Database, assert_exactly_once, db_rows, run_cli, start

pytestmark = pytest.mark.slow


@BOTH_DATABASES
def test_twenty_local_jobs_with_lost_answers_are_each_uploaded_once(
    emulator: Emulator, env: dict[str, str], db: Database, tmp_path: Path
) -> None:
    emulator.update(drop_after_accept=0.1)
    manifest = mediafiles.local_manifest(tmp_path, 20, size=1_000_000)
    result = run_cli(["submit", str(manifest)], env)
    assert result.code == 0, result.err
    assert_exactly_once(emulator, db, 20)
    assert emulator.stats.dropped > 0
    uploads = emulator.uploads()
    for i in range(20):
        video = tmp_path / "media" / f"e{i:03d}.mp4"
        audio = tmp_path / "media" / f"e{i:03d}-ja.wav"
        [ref] = db_rows(
            db, "SELECT reference_id FROM jobs WHERE video_url LIKE ?", f"%e{i:03d}.mp4"
        )
        assert uploads[ref[0]] == [
            {
                "video": (video.stat().st_size, mediafiles.sha256(video)),
                "audio": (audio.stat().st_size, mediafiles.sha256(audio)),
            }
        ]


@BOTH_DATABASES
def test_sigkill_mid_upload_then_resume_uploads_it_once(
    emulator: Emulator, env: dict[str, str], db: Database, tmp_path: Path
) -> None:
    emulator.update(upload_read_rate=40_000_000)  # 200 MB: about 5 s
    video = mediafiles.video(tmp_path / "big.mp4", 200_000_000, sparse=True)
    audio = mediafiles.audio(tmp_path / "big.wav", 1_000_000)
    manifest = tmp_path / "m.yaml"
    manifest.write_text("batch: big\njobs:\n  - {video: big.mp4, audio: big.wav}\n")
    env = {**env, "DUBRUNNER_REQUEST_TIMEOUT": "3"}
    proc = start(["submit", str(manifest)], env)
    deadline = time.monotonic() + 60
    while emulator.stats.uploading == 0:  # the body has started to arrive
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert emulator.accepted() == {} and emulator.stats.uploads == 0  # cut mid-body
    result = run_cli(["resume"], env, timeout=180)
    assert result.code == 0, result.err
    assert_exactly_once(emulator, db, 1)
    [(ref,)] = db_rows(db, "SELECT reference_id FROM jobs")
    assert emulator.uploads()[ref] == [
        {
            "video": (200_000_000, mediafiles.sha256(video)),
            "audio": (audio.stat().st_size, mediafiles.sha256(audio)),
        }
    ]
    # The killed upload was looked up before it was sent again.
    kinds = [k for (k,) in db_rows(db, "SELECT kind FROM attempts ORDER BY id")]
    assert kinds == ["lookup", "generate"], kinds
