"""Outgrowing one machine: many workers, one PostgreSQL job table, processes killed at random."""

from __future__ import annotations

import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from dubrunner.emulator import Emulator
from tests.conftest import (
    BOTH_DATABASES,
    Database,
    assert_exactly_once,
    db_rows,
    run_cli,
    start,
    write_manifest,
)

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("db", ["postgresql"], indirect=True)
def test_eight_workers_with_random_kills_and_restarts(
    emulator: Emulator, env: dict[str, str], db: Database, tmp_path: Path
) -> None:
    emulator.update(latency_ms=20)
    manifest = write_manifest(tmp_path / "m.yaml", 5000)
    assert run_cli(["load", str(manifest)], env).code == 0
    env = {**env, "DUBRUNNER_REQUEST_TIMEOUT": "1.5"}
    rng = random.Random(8)
    workers: list[subprocess.Popen[str]] = [
        start(["work", "--follow", "--idle-poll", "0.2", "--concurrency", "4"], env)
        for _ in range(8)
    ]
    kills = 0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        time.sleep(rng.uniform(0.3, 0.9))
        victim = rng.randrange(len(workers))
        workers[victim].send_signal(signal.SIGKILL)
        workers[victim].wait(timeout=10)
        kills += 1
        workers[victim] = start(
            ["work", "--follow", "--idle-poll", "0.2", "--concurrency", "4"], env
        )
        done = db_rows(db, "SELECT count(*) FROM jobs WHERE state = 'submitted'")[0][0]
        if done >= 4500:
            break
    assert kills >= 8
    time.sleep(2.5)  # the last one restarted is past its start-up, its signal handlers set
    for proc in workers:  # a polite stop for the survivors: SIGTERM, in-flight work finishes
        proc.send_signal(signal.SIGTERM)
    for proc in workers:
        proc.wait(timeout=60)
        assert proc.returncode == 130
    final = run_cli(["resume"], env, timeout=300)
    assert final.code == 0, final.err
    assert_exactly_once(emulator, db, 5000)
    workers_seen = db_rows(db, "SELECT count(DISTINCT worker) FROM attempts")[0][0]
    # Most of them took part (on a loaded machine a worker may be killed while starting up).
    assert workers_seen >= 5


@BOTH_DATABASES
def test_a_shared_rate_holds_across_workers(
    emulator: Emulator, env: dict[str, str], db: Database, tmp_path: Path
) -> None:
    emulator.update(rate=10.0)  # the account allows 10 requests a second
    manifest = write_manifest(tmp_path / "m.yaml", 60)
    assert run_cli(["load", str(manifest)], env).code == 0
    args = ["resume", "--rate", "10", "--rate-shared", "--concurrency", "2"]
    workers = [start(args, env) for _ in range(3)]  # unshared, they would send 30 a second
    for proc in workers:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    assert_exactly_once(emulator, db, 60)
    assert emulator.stats.rate_limited == 0
    span = emulator.stats.last_generate_at - emulator.stats.first_generate_at  # type: ignore[operator]
    assert (emulator.stats.generate - 1) / span <= 10.5
    assert len(db_rows(db, "SELECT name FROM rate_budget")) == 1
