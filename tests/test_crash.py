"""Crash safety, proven by really killing and interrupting processes."""

from __future__ import annotations

import os
import random
import signal
import socket
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from dubrunner.emulator import Emulator
from dubrunner.records import Lease
from dubrunner.states import State
from tests.conftest import (
    BOTH_DATABASES,
    TOKEN,
    Database,
    assert_exactly_once,
    db_rows,
    load_jobs,
    run_cli,
    start,
    states,
    write_manifest,
)

# Re-exported (explicitly, for mypy): tests/test_never_twice.py imports it from this module.
from tests.conftest import dead_owner as dead_owner

pytestmark = [BOTH_DATABASES, pytest.mark.slow]


def submitted(db: Database, where: str = "WHERE state = 'submitted'") -> int:
    if db.path is not None and not db.path.exists():
        return 0
    try:
        return int(db_rows(db, f"SELECT count(*) FROM jobs {where}")[0][0])
    except Exception:  # the schema may not exist yet
        return 0


def test_sigkill_at_random_moments_then_resume(
    emulator: Emulator, env: dict[str, str], db: Database, tmp_path: Path
) -> None:
    emulator.update(latency_ms=40)
    manifest = write_manifest(tmp_path / "m.yaml", 600)
    # Slow enough that several runs are killed before the batch is done: a dead worker's unsent
    # jobs are reclaimed at once, so each run gets far.
    env = {**env, "DUBRUNNER_REQUEST_TIMEOUT": "1.5", "DUBRUNNER_CONCURRENCY": "3"}
    rng = random.Random(int(os.environ.get("DUBRUNNER_TEST_SEED", "20261125")))
    kills = 0
    progress = []
    while kills < 8 and submitted(db) < 420:
        # A kill may come before the first load committed (a slow machine): load it again.
        args = ["submit", str(manifest)] if not submitted(db, "") else ["resume"]
        before = emulator.stats.requests
        proc = start(args, env)
        # Kill while it talks to the API, not while a loaded machine is still starting it up.
        deadline = time.monotonic() + 30
        while emulator.stats.requests == before and proc.poll() is None:
            assert time.monotonic() < deadline, "the run never sent a request"
            time.sleep(0.02)
        time.sleep(rng.uniform(0.1, 0.8))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=30)
        progress.append(submitted(db))
    assert kills >= 5, progress
    assert progress[-1] < 600, "the kills came too late to interrupt anything"
    final = run_cli(["resume"], env, timeout=180)
    assert final.code == 0, final.err
    assert_exactly_once(emulator, db, 600)
    # Jobs caught mid-request were looked up, not resent blindly.
    lookups = db_rows(db, "SELECT count(*) FROM attempts WHERE kind = 'lookup'")[0][0]
    assert lookups > 0


def test_sigint_finishes_in_flight_work_and_exits_130(
    emulator: Emulator, env: dict[str, str], db: Database, tmp_path: Path
) -> None:
    emulator.update(latency_ms=50)
    manifest = write_manifest(tmp_path / "m.yaml", 300)
    proc = start(["submit", str(manifest), "--concurrency", "4"], env)
    deadline = time.monotonic() + 60
    while submitted(db) < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "interrupted:" in err and "dubrunner resume --batch b" in err
    assert "Traceback" not in err
    counts = states(db)
    assert State.SUBMITTING not in counts, counts
    assert 20 <= counts["submitted"] < 300
    final = run_cli(["resume"], env)
    assert final.code == 0, final.err
    assert_exactly_once(emulator, db, 300)


def test_four_workers_on_one_sqlite_file(
    emulator: Emulator, env: dict[str, str], db: Database, tmp_path: Path
) -> None:
    emulator.update(latency_ms=5)
    load_jobs(db, write_manifest(tmp_path / "m.yaml", 1000)).close()
    procs = [start(["resume", "--concurrency", "4"], env) for _ in range(4)]
    for p in procs:
        _, err = p.communicate(timeout=180)
        assert p.returncode == 0, err
    assert_exactly_once(emulator, db, 1000)
    workers = db_rows(db, "SELECT count(DISTINCT worker) FROM attempts")[0][0]
    assert workers >= 2  # the work was shared


def test_dead_workers_job_whose_post_landed_is_found_not_resent(
    emulator: Emulator, env: dict[str, str], db: Database, tmp_path: Path
) -> None:
    store = load_jobs(db, write_manifest(tmp_path / "m.yaml", 2))
    claimed = store.claim(dead_owner(), "b", 2, Lease(0.3))
    store.close()
    assert len(claimed) == 2
    # The dead worker's POST of the first job reached the API; its answer never came back.
    first = claimed[0]
    answer = httpx.post(
        emulator.base_url + "v1/lipsync/generate",
        headers={"Authorization": f"Bearer {TOKEN}"},
        json={
            "inputs": [
                {"type": "video", "url": first.video_url},
                {"type": "audio", "url": first.audio_url},
            ],
            "reference_id": first.reference_id,
        },
    )
    landed = answer.json()["request_id"]
    r = run_cli(["resume"], env)
    assert r.code == 0, r.err
    assert_exactly_once(emulator, db, 2)
    assert emulator.stats.generate == 2  # the landed one by the dead worker, one by resume
    row = db_rows(db, "SELECT request_id FROM jobs WHERE reference_id = ?", first.reference_id)
    assert row == [(landed,)]
    outcomes = db_rows(db, "SELECT outcome FROM attempts WHERE kind='lookup' ORDER BY id")
    assert sorted(o for (o,) in outcomes) == ["found", "not_found"]


def test_another_workers_claim_is_respected_until_its_lease_lapses(
    emulator: Emulator, env: dict[str, str], db: Database, tmp_path: Path
) -> None:
    store = load_jobs(db, write_manifest(tmp_path / "m.yaml", 3))
    # This very test process (alive) holds one job and then stops renewing its lease.
    mine = f"{socket.gethostname()}:{os.getpid()}:live0001"
    held = store.claim(mine, "b", 1, Lease(1.0))[0]
    store.close()
    lease_expires = db_rows(db, "SELECT lease_expires FROM jobs WHERE id = ?", held.id)[0][0]
    r = run_cli(["resume"], env)
    assert r.code == 0, r.err
    assert_exactly_once(emulator, db, 3)
    # Nobody touched the held job before its lease lapsed, and then it was looked up first.
    first = db_rows(db, "SELECT kind, at FROM attempts WHERE job_id = ? ORDER BY id", held.id)
    assert first[0][0] == "lookup"
    at = datetime.fromisoformat(str(first[0][1])).replace(tzinfo=UTC)
    assert at.timestamp() >= lease_expires - 0.001
