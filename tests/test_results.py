"""Results: poll to the end, download the outputs, export the batch."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import signal
import time
from pathlib import Path

import pytest

from dubrunner.emulator import Emulator, output_content
from dubrunner.poller import interpret
from dubrunner.states import State
from tests.conftest import (
    BOTH_DATABASES,
    Database,
    db_rows,
    run_cli,
    start,
    states,
    write_manifest,
)


@pytest.mark.slow
@BOTH_DATABASES
def test_submit_wait_fetch_and_export(
    emulator: Emulator, env: dict[str, str], db: Database, tmp_path: Path
) -> None:
    emulator.update(complete_after=0.3, output_bytes=20_000)
    failing = frozenset({3, 11, 20, 33, 47})
    manifest = write_manifest(tmp_path / "s1.yaml", 50, batch="s1", failing=failing)
    out = tmp_path / "out"
    r = run_cli(["submit", str(manifest), "--wait", "--fetch", str(out), "--interval", "0.1"], env)
    assert r.code == 1, r.err  # five failed remotely
    assert "45 completed, 5 failed remotely, 0 still processing" in r.err
    assert "45 downloaded" in r.err
    files = sorted((out / "s1").iterdir())
    assert len(files) == 45
    rows = db_rows(
        db,
        "SELECT reference_id, request_id, state, local_path, sha256, "
        "size_bytes, last_error, remote_status FROM jobs ORDER BY id",
    )
    for ref, request_id, state, local, sha, size, error, remote in rows:
        if ref in {f"s1-ep{i:05d}" for i in failing}:
            assert (state, remote) == ("failed", "failed")
            assert error == "failed remotely: no face found in the video"
            assert local is None
            continue
        assert (state, remote) == ("completed", "completed")
        served = output_content(request_id, 20_000)
        assert Path(local) == out / "s1" / f"{ref}.mp4"
        assert Path(local).read_bytes() == served
        assert sha == hashlib.sha256(served).hexdigest() and size == 20_000
    assert not list(out.rglob("*.part"))

    exported = run_cli(["export", "--batch", "s1"], env)
    assert exported.code == 0
    table = list(csv.DictReader(io.StringIO(exported.out)))
    assert len(table) == 50
    assert {row["state"] for row in table} == {"completed", "failed"}
    assert sum(1 for row in table if row["sha256"]) == 45
    jsonl = run_cli(["export", "--format", "jsonl"], env)
    assert len([json.loads(line) for line in jsonl.out.splitlines()]) == 50

    # Fetching again downloads nothing: every file is already whole.
    downloads = emulator.stats.downloads
    again = run_cli(["fetch", "--out", str(out)], env)
    assert again.code == 0, again.err
    assert "0 downloaded" in again.err and "45 already there" in again.err
    assert emulator.stats.downloads == downloads
    one = run_cli(["status", "s1-ep00003"], env)
    assert "no face found" in one.out and "poll" in one.out


@pytest.mark.slow
@BOTH_DATABASES
def test_download_killed_halfway_resumes_with_range(
    emulator: Emulator, env: dict[str, str], db: Database, tmp_path: Path
) -> None:
    emulator.update(complete_after=0.05)
    manifest = write_manifest(tmp_path / "m.yaml", 1)
    assert run_cli(["submit", str(manifest), "--wait", "--interval", "0.1"], env).code == 0
    size = 3_000_000
    emulator.update(output_bytes=size, output_rate=1_000_000)
    out = tmp_path / "out"
    proc = start(["fetch", "--out", str(out)], env)
    part = out / "b" / "b-ep00000.mp4.part"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if part.exists() and 300_000 < part.stat().st_size < size - 300_000:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    halfway = part.stat().st_size
    assert 0 < halfway < size
    emulator.update(output_rate=None)
    r = run_cli(["fetch", "--out", str(out)], env)
    assert r.code == 0, r.err
    assert "1 resumed" in r.err
    assert emulator.stats.range_requests == 1
    request_id = db_rows(db, "SELECT request_id FROM jobs")[0][0]
    final = out / "b" / "b-ep00000.mp4"
    assert final.read_bytes() == output_content(request_id, size)
    assert not part.exists()
    assert db_rows(db, "SELECT sha256, size_bytes FROM jobs") == [
        (hashlib.sha256(final.read_bytes()).hexdigest(), size)
    ]


@pytest.mark.slow
@BOTH_DATABASES
def test_a_dead_output_url_is_asked_of_the_api_again(
    emulator: Emulator, env: dict[str, str], db: Database, tmp_path: Path
) -> None:
    emulator.update(complete_after=0.05)
    manifest = write_manifest(tmp_path / "m.yaml", 3)
    assert run_cli(["submit", str(manifest), "--wait", "--interval", "0.1"], env).code == 0
    # One output URL no longer works (the storage host answers 404).
    db.rows(
        "UPDATE jobs SET output_url = output_url || '-expired' WHERE reference_id = 'b-ep00001'"
    )
    r = run_cli(["fetch", "--out", str(tmp_path / "o")], env)
    assert r.code == 0, r.err
    assert "3 downloaded" in r.err and "1 fresh URL(s) from the API" in r.err
    # Without credentials, fetch uses the URL recorded: that download fails, the job does not.
    db.rows(
        "UPDATE jobs SET output_url = output_url || '-expired', download_state = NULL "
        "WHERE reference_id = 'b-ep00001'"
    )
    bare = {k: v for k, v in env.items() if k != "CHAMELAION_API_KEY"}
    r = run_cli(["fetch", "--out", str(tmp_path / "o2")], bare)
    assert r.code == 1
    assert db_rows(
        db,
        "SELECT state, download_state, download_error FROM jobs WHERE reference_id = 'b-ep00001'",
    ) == [("completed", "failed", "HTTP 404 for the output URL")]


@pytest.mark.slow
def test_poll_walks_the_list_instead_of_asking_for_each_job(
    emulator: Emulator, env: dict[str, str], db: Database, tmp_path: Path
) -> None:
    """1,000 jobs take ten pages of the list a round, not a thousand GETs."""
    emulator.update(complete_after=3600)
    manifest = write_manifest(tmp_path / "m.yaml", 1000)
    assert run_cli(["submit", str(manifest), "--concurrency", "16"], env).code == 0
    before = emulator.requests_endpoint_calls()
    r = run_cli(["poll"], env)
    assert r.code == 0, r.err
    assert "0 completed, 0 failed remotely, 1000 still processing" in r.err
    assert emulator.requests_endpoint_calls() - before <= 15
    assert states(db) == {"processing": 1000}
    emulator.update(complete_after=0.0)
    before = emulator.requests_endpoint_calls()
    r = run_cli(["poll", "--wait", "--interval", "0.1"], env)
    assert r.code == 0, r.err
    assert "1000 completed, 0 failed remotely, 0 still processing" in r.err
    assert emulator.requests_endpoint_calls() - before <= 20
    assert emulator.stats.by_endpoint.get("get", 0) == 0
    assert states(db) == {"completed": 1000}


@pytest.mark.parametrize(
    ("status", "state"),
    [
        ("COMPLETED", State.COMPLETED),
        ("completed", State.COMPLETED),
        ("succeeded", State.COMPLETED),
        ("success", State.PROCESSING),
        ("FAILED", State.FAILED),
        ("REJECTED", State.FAILED),
        ("CANCELED", State.FAILED),
        ("TIMED_OUT", State.FAILED),
        ("PENDING", State.PROCESSING),
        ("PROCESSING", State.PROCESSING),
        ("WARMING_UP", State.PROCESSING),
        (None, State.PROCESSING),
    ],
)
def test_remote_statuses(status: str | None, state: State) -> None:
    values = interpret({"status": status, "output_url": "https://o.test/x.mp4"})
    assert values.state is state
    assert values.status == status


@pytest.mark.slow
def test_a_full_disk_stops_the_fetch_and_blames_no_job(
    emulator: Emulator,
    env: dict[str, str],
    db_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import errno
    import os as os_module

    from dubrunner.fetcher import Fetcher
    from dubrunner.store import Store

    emulator.update(complete_after=0.05)
    manifest = write_manifest(tmp_path / "m.yaml", 3)
    assert run_cli(["submit", str(manifest), "--wait", "--interval", "0.1"], env).code == 0
    real_fsync = os_module.fsync
    calls = {"n": 0}

    def fsync(fd: int) -> None:  # the second file meets a full disk
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr("dubrunner.fetcher.os.fsync", fsync)
    store = Store(str(db_path))
    try:
        report = Fetcher(store, tmp_path / "out", None, concurrency=1).run()
    finally:
        store.close()
    # Failed before: each download meeting the full disk was recorded as that job's failure.
    assert (report.downloaded, report.failed) == (1, 0)
    part = tmp_path / "out" / "b" / "b-ep00001.mp4.part"
    assert report.halt_message == f"the disk is full (writing {part}); stopped"
    assert report.halt_advice == "make room (or fix the folder), then run `dubrunner fetch` again"
    assert db_rows(db_path, "SELECT download_state, download_error FROM jobs ORDER BY id") == [
        ("downloaded", None),
        (None, None),  # fetchable once there is room
        (None, None),
    ]
    monkeypatch.setattr("dubrunner.fetcher.os.fsync", real_fsync)
    store = Store(str(db_path))
    try:
        report = Fetcher(store, tmp_path / "out", None, concurrency=1).run()
    finally:
        store.close()
    assert (report.downloaded, report.failed, report.halt_message) == (2, 0, None)
