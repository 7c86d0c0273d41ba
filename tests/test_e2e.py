"""End to end: the CLI as a real process, a real SQLite file, the emulator on 127.0.0.1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dubrunner.emulator import Emulator
from tests.conftest import (
    BOTH_DATABASES,
    TOKEN,
    Database,
    assert_exactly_once,
    db_rows,
    run_cli,
    states,
    write_manifest,
)

pytestmark = [BOTH_DATABASES, pytest.mark.slow]


def test_200_jobs_land_exactly_once(
    emulator: Emulator, env: dict[str, str], db: Database, tmp_path: Path
) -> None:
    manifest = write_manifest(tmp_path / "season.yaml", 200, batch="season")
    r = run_cli(["submit", str(manifest), "--concurrency", "8"], env)
    assert r.code == 0, r.err
    assert "all 200 jobs of batch season submitted" in r.err
    assert_exactly_once(emulator, db, 200)
    attempts = db_rows(db, "SELECT count(*) FROM attempts WHERE kind = 'generate'")[0][0]
    assert attempts == 200


def test_loading_the_same_manifest_twice_adds_nothing(
    emulator: Emulator, env: dict[str, str], db: Database, tmp_path: Path
) -> None:
    manifest = write_manifest(tmp_path / "m.yaml", 30)
    assert run_cli(["submit", str(manifest)], env).code == 0
    again = run_cli(["submit", str(manifest)], env)
    assert again.code == 0, again.err
    assert "0 new, 30 unchanged (30 already submitted)" in again.err
    dry = run_cli(["submit", str(manifest), "--dry-run"], env)
    assert dry.code == 0
    assert "a run would send 0 job(s)" in dry.err
    assert emulator.stats.generate == 30
    assert_exactly_once(emulator, db, 30)


def test_dry_run_loads_and_sends_nothing(
    emulator: Emulator, env: dict[str, str], db: Database, tmp_path: Path
) -> None:
    manifest = write_manifest(tmp_path / "m.yaml", 12)
    r = run_cli(["submit", str(manifest), "--dry-run"], env)
    assert r.code == 0, r.err
    assert "12 new, 0 unchanged (0 already submitted), 0 changed; a run would send 12" in r.err
    assert db_rows(db, "SELECT count(*) FROM jobs") == [(0,)]
    assert emulator.stats.requests == 0


def test_500s_and_rate_limits_still_land_every_job_once(
    emulator: Emulator, env: dict[str, str], db: Database, tmp_path: Path
) -> None:
    # A bucket of 2: eight workers' requests meet it in clusters whatever the machine's speed
    # (a bucket of 150, the default, was never emptied by a slow machine's client: no 429).
    emulator.update(p500=0.15, rate=150.0, burst=2)
    manifest = write_manifest(tmp_path / "m.yaml", 200)
    r = run_cli(["submit", str(manifest), "--concurrency", "8", "--max-attempts", "12"], env)
    assert r.code == 0, r.err
    assert emulator.stats.errors_500 > 10
    assert emulator.stats.rate_limited > 0
    assert_exactly_once(emulator, db, 200)
    # A 500 may have stored the job: each was looked up before it was sent again.
    lookups = db_rows(db, "SELECT count(*) FROM attempts WHERE kind = 'lookup'")[0][0]
    assert lookups >= emulator.stats.errors_500


def test_token_limit_as_429_halts_then_resume_finishes(
    emulator: Emulator, env: dict[str, str], db: Database, tmp_path: Path
) -> None:
    emulator.update(token_limit=40, token_limit_status=429)
    manifest = write_manifest(tmp_path / "m.yaml", 100)
    r = run_cli(["submit", str(manifest), "--concurrency", "4"], env)
    assert r.code == 1, r.err
    assert "token limit reached after 40 of 100 jobs; 60 left pending" in r.err
    assert "top up" in r.err and "dubrunner resume" in r.err
    assert "Traceback" not in r.err
    refused = emulator.stats.by_status.get(429, 0)
    assert 1 <= refused <= 4  # within a handful: only what was already in flight
    counts = states(db)
    assert counts["submitted"] == 40
    assert counts.get("halted", 0) >= 1
    assert counts.get("halted", 0) + counts.get("pending", 0) == 60
    halted = db_rows(db, "SELECT last_error, last_http_status FROM jobs WHERE state='halted'")
    assert halted[0] == ("token limit reached", 429)

    emulator.update(token_limit=None)
    again = run_cli(["resume"], env)
    assert again.code == 0, again.err
    assert_exactly_once(emulator, db, 100)


def test_bad_credentials_stop_after_a_few_requests(
    emulator: Emulator, env: dict[str, str], db: Database, tmp_path: Path
) -> None:
    manifest = write_manifest(tmp_path / "m.yaml", 50)
    env = {**env, "CHAMELAION_API_KEY": "wrong-key-value"}
    r = run_cli(["submit", str(manifest), "--concurrency", "4"], env)
    assert r.code == 1
    assert "invalid token after 0 of 50 jobs" in r.err
    assert "CHAMELAION_API_KEY" in r.err
    assert emulator.stats.generate <= 4
    assert emulator.accepted() == {}
    assert "wrong-key-value" not in r.err + r.out
    # Fix the key, resume: everything lands once.
    fixed = run_cli(["resume", "--batch", "b"], {**env, "CHAMELAION_API_KEY": TOKEN})
    assert fixed.code == 0, fixed.err
    assert_exactly_once(emulator, db, 50)


def test_bearer_token_alone_works(
    emulator: Emulator, env: dict[str, str], db: Database, tmp_path: Path
) -> None:
    env = {k: v for k, v in env.items() if k != "CHAMELAION_API_KEY"}
    env["CHAMELAION_BEARER_TOKEN"] = TOKEN
    manifest = write_manifest(tmp_path / "m.yaml", 5)
    assert run_cli(["submit", str(manifest)], env).code == 0
    assert_exactly_once(emulator, db, 5)


def test_dropped_connections_after_accept_are_found_not_resent(
    emulator: Emulator, env: dict[str, str], db: Database, tmp_path: Path
) -> None:
    emulator.update(drop_after_accept=0.10)
    manifest = write_manifest(tmp_path / "m.yaml", 200)
    r = run_cli(["submit", str(manifest), "--concurrency", "8"], env)
    assert r.code == 0, r.err
    assert emulator.stats.dropped > 5
    assert_exactly_once(emulator, db, 200)
    found = db_rows(db, "SELECT count(*) FROM attempts WHERE outcome = 'found'")[0][0]
    assert found == emulator.stats.dropped


def test_fixing_a_url_of_a_failed_job_and_submitting_again(
    emulator: Emulator, env: dict[str, str], db: Database, tmp_path: Path
) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        "batch: fix\njobs:\n"
        "  - {reference_id: a, video: 'https://x.test/a.mp4', audio: 'https://x.test/a.wav'}\n"
        "  - {reference_id: b, video: 'https://x.test/b.mp4', audio: 'https://x.test/b.wav'}\n"
    )
    emulator.update(token_limit=0)  # nothing reaches the API this time
    assert run_cli(["submit", str(manifest)], env).code == 1
    manifest.write_text(manifest.read_text().replace("b.wav", "b-fixed.wav"))
    emulator.update(token_limit=None)
    r = run_cli(["submit", str(manifest)], env)
    assert r.code == 0, r.err
    assert "1 changed" in r.err
    assert db_rows(db, "SELECT audio_url FROM jobs WHERE reference_id='b'") == [
        ("https://x.test/b-fixed.wav",)
    ]
    # Once sent, a job's URLs are fixed: changing them again is refused, and nothing is written.
    manifest.write_text(manifest.read_text().replace("b-fixed.wav", "b-other.wav"))
    refused = run_cli(["submit", str(manifest)], env)
    assert refused.code == 2
    assert "already sent to the API" in refused.err
    assert "m.yaml:4: reference_id 'b'" in refused.err
    assert db_rows(db, "SELECT audio_url FROM jobs WHERE reference_id='b'") == [
        ("https://x.test/b-fixed.wav",)
    ]


def test_status_json_and_csv(emulator: Emulator, env: dict[str, str], tmp_path: Path) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        "batch: s1\njobs:\n"
        "  - reference_id: ep42\n"
        "    video: 'https://user:hunter2@cdn.test/42.mp4'\n"
        "    audio: 'https://cdn.test/42.wav?X-Amz-Signature=abcdef&X-Amz-Date=1'\n"
        "  - reference_id: ep43\n"
        "    video: 'https://cdn.test/43.mp4'\n"
        "    audio: 'https://cdn.test/43.wav'\n"
    )
    assert run_cli(["submit", str(manifest)], env).code == 0
    r = run_cli(["status", "--batch", "s1", "--state", "submitted", "--format", "json"], env)
    assert r.code == 0, r.err
    rows = json.loads(r.out)
    assert [row["reference_id"] for row in rows] == ["ep42", "ep43"]
    for key in (
        "batch",
        "reference_id",
        "state",
        "request_id",
        "error",
        "attempts",
        "video_url",
        "audio_url",
        "updated_at",
    ):
        assert key in rows[0]
    assert rows[0]["video_url"] == "https://***@cdn.test/42.mp4"
    assert "abcdef" not in r.out and "hunter2" not in r.out
    assert "X-Amz-Date=1" in rows[0]["audio_url"]
    csv_out = run_cli(["status", "--format", "csv"], env)
    assert csv_out.out.splitlines()[0].startswith("batch,reference_id,state,request_id")
    assert len(csv_out.out.splitlines()) == 3
    one = run_cli(["status", "ep42"], env)
    assert one.code == 0 and "generate" in one.out and "accepted" in one.out
    table = run_cli(["status"], env)
    assert table.code == 0 and "submitted" in table.out
    missing = run_cli(["status", "nope"], env)
    assert missing.code == 2 and "no job with reference_id 'nope'" in missing.err


def test_rate_auto_adapts_to_the_servers_limit(
    emulator: Emulator, env: dict[str, str], db: Database, tmp_path: Path
) -> None:
    emulator.update(rate=50.0)
    manifest = write_manifest(tmp_path / "m.yaml", 300)
    r = run_cli(["submit", str(manifest), "--rate", "auto", "--concurrency", "8"], env)
    assert r.code == 0, r.err
    assert_exactly_once(emulator, db, 300)
    throttled = emulator.stats.rate_limited
    assert 0 < throttled < 0.2 * (emulator.stats.generate + throttled)
    bad = run_cli(["submit", str(manifest), "--rate", "fast"], env)
    assert bad.code == 2 and "neither a positive number nor 'auto'" in bad.err


def test_every_field_of_a_job_reaches_the_api(
    emulator: Emulator, env: dict[str, str], db: Database, tmp_path: Path
) -> None:
    # Failed before (a renovation slip): disable_active_speaker_detection: true was stored, and so
    # sent, as false.
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        "batch: fields\njobs:\n"
        "  - {reference_id: asd-off, video: 'https://media.example/v1.mp4',"
        " audio: 'https://media.example/a1.wav', disable_active_speaker_detection: true}\n"
        "  - {reference_id: asd-on, video: 'https://media.example/v2.mp4',"
        " audio: 'https://media.example/a2.wav'}\n"
    )
    r = run_cli(["submit", str(manifest)], env)
    assert r.code == 0, r.err
    sent = {req.reference_id: req for req in emulator.requests.values()}
    assert sent["asd-off"].disable_active_speaker_detection is True
    assert sent["asd-on"].disable_active_speaker_detection is False
    assert sent["asd-off"].video_url == "https://media.example/v1.mp4"
    assert sent["asd-off"].audio_url == "https://media.example/a1.wav"
