"""Preflight and doctor: problems found before anything is paid for."""

from __future__ import annotations

from pathlib import Path

import pytest

from dubrunner.emulator import Emulator
from dubrunner.preflight import judge
from tests.conftest import TOKEN, db_rows, media_manifest, run_cli


@pytest.mark.slow
def test_check_reports_bad_media_in_one_table(
    emulator: Emulator, env: dict[str, str], tmp_path: Path
) -> None:
    manifest = media_manifest(tmp_path / "m.yaml", emulator)
    r = run_cli(["check", str(manifest)], env)
    assert r.code == 1, r.err
    assert "missing-video" in r.out and "HTTP 404" in r.out
    assert "html-audio" in r.out and "serves text/html, not audio" in r.out
    assert "unreachable" in r.out and "unreachable:" in r.out
    # The jobs listed are the three bad ones (the first cell of each row of the table): the
    # good job and the one whose server refuses HEAD (a ranged GET answers) are not.
    listed = {row.split("│")[1].strip() for row in r.out.splitlines() if row.startswith("│")}
    assert listed - {""} == {"missing-video", "html-audio", "unreachable"}, r.out
    assert "nohead" not in r.out
    assert "s3cr3t" not in r.out + r.err
    assert "3 job(s) with a problem" in r.err
    assert emulator.stats.generate == 0


@pytest.mark.slow
def test_submit_preflight_fails_bad_jobs_without_paying(
    emulator: Emulator, env: dict[str, str], db_path: Path, tmp_path: Path
) -> None:
    manifest = media_manifest(tmp_path / "m.yaml", emulator)
    r = run_cli(["submit", str(manifest), "--preflight"], env)
    assert r.code == 1, r.err
    assert set(emulator.accepted()) == {"good", "nohead"}
    assert emulator.stats.generate == 2  # zero POSTs for the three bad jobs
    failed = dict(
        db_rows(db_path, "SELECT reference_id, last_error FROM jobs WHERE state='failed'")
    )
    # Nothing listens on port 9 of loopback: the error names the refusal (its errno's number
    # differs between systems, so it is not compared whole).
    unreachable = failed.pop("unreachable", "")
    assert unreachable.startswith("preflight: audio: unreachable: "), unreachable
    assert "Connection refused" in unreachable, unreachable
    assert failed == {
        "missing-video": "preflight: video: HTTP 404",
        "html-audio": "preflight: audio: serves text/html, not audio",
    }
    # The batch can be checked again from the database.
    again = run_cli(["check", "media"], env)
    assert again.code == 1 and "3 job(s) with a problem" in again.err


def test_judge() -> None:
    assert judge("video", 200, "video/mp4", 10_000) is None
    assert judge("audio", 206, "application/octet-stream", None) is None
    assert judge("video", 404, "text/html", 10) == "HTTP 404"
    assert judge("audio", 200, "text/html; charset=utf-8", 5000) == "serves text/html, not audio"
    assert (
        judge("video", 200, "audio/wav", 5000)
        == "serves audio/wav: audio where the video should be"
    )
    assert judge("video", 200, "video/mp4", 0) == "only 0 bytes: too small to be video"


@pytest.mark.slow
def test_doctor(emulator: Emulator, env: dict[str, str]) -> None:
    ok = run_cli(["doctor"], env)
    assert ok.code == 0, ok.out + ok.err
    assert "PROBLEM" not in ok.out and "emulator user" in ok.out
    bad = run_cli(["doctor"], {**env, "CHAMELAION_API_KEY": "not-the-key-123"})
    assert bad.code == 1
    assert "credentials accepted" in bad.out and "invalid token" in bad.out
    assert "not-the-key-123" not in bad.out + bad.err
    none = run_cli(["doctor"], {k: v for k, v in env.items() if k != "CHAMELAION_API_KEY"})
    assert none.code == 1 and "neither CHAMELAION_API_KEY nor" in none.out
    assert TOKEN not in ok.out
