"""A server that is wrong as a whole — a wrong address, an outage, garbage — is one batch-wide
event, never hundreds of failed jobs. Real processes against the emulator."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from dubrunner.emulator import Emulator
from tests.conftest import (
    BOTH_DATABASES,
    Database,
    assert_exactly_once,
    closed_port,
    run_cli,
    start,
    states,
    write_manifest,
)

pytestmark = pytest.mark.slow


def test_a_wrong_base_url_halts_at_once_and_fails_no_job(
    emulator: Emulator, env: dict[str, str], db: Database, tmp_path: Path
) -> None:
    # Without its "api/", every path answers the router's "404 page not found". Failed before:
    # every job was marked failed ("not found"), one by one.
    env = {**env, "CHAMELAION_BASE_URL": emulator.root_url}
    manifest = write_manifest(tmp_path / "m.yaml", 50)
    started = time.monotonic()
    r = run_cli(["submit", str(manifest), "--concurrency", "4"], env, timeout=60)
    assert time.monotonic() - started < 30
    assert r.code == 1, r.err
    assert emulator.stats.requests <= 5
    assert states(db) == {"pending": 50}
    last = r.err.strip().splitlines()[-1]
    assert f"CHAMELAION_BASE_URL={emulator.root_url} does not lead to the API" in last
    assert "HTTP 404" in last and "check CHAMELAION_BASE_URL" in last
    assert env["CHAMELAION_API_KEY"] not in r.err
    status = run_cli(["status"], env)
    assert f"note: a worker found CHAMELAION_BASE_URL={emulator.root_url} wrong" in status.err


def test_a_refused_port_halts_quickly_and_fails_no_job(
    env: dict[str, str], db: Database, tmp_path: Path
) -> None:
    port = closed_port()  # nothing listens on it
    env = {**env, "CHAMELAION_BASE_URL": f"http://127.0.0.1:{port}/api/"}
    manifest = write_manifest(tmp_path / "m.yaml", 50)
    started = time.monotonic()
    r = run_cli(["submit", str(manifest)], env, timeout=120)
    assert time.monotonic() - started < 60
    assert r.code == 1, r.err
    assert states(db) == {"pending": 50}
    assert f"cannot connect to CHAMELAION_BASE_URL=http://127.0.0.1:{port}/api/" in r.err


@pytest.mark.parametrize("concurrency", ["1", "8"])
def test_garbage_from_the_start_halts_and_resume_finishes_once(
    emulator: Emulator, env: dict[str, str], db: Database, tmp_path: Path, concurrency: str
) -> None:
    # With one at a time, each garbled POST's look-up is answered before the next POST: failed
    # before (254 POSTs for 30 jobs, seen in CI with the default concurrency on a slow machine).
    emulator.update(garbage=True)
    manifest = write_manifest(tmp_path / "m.yaml", 30)
    started = time.monotonic()
    r = run_cli(["submit", str(manifest), "--concurrency", concurrency], env, timeout=120)
    assert time.monotonic() - started < 60
    assert r.code == 1, r.err
    assert emulator.stats.generate <= 10
    assert "does not answer like the API" in r.err and "CHAMELAION_BASE_URL" in r.err
    assert states(db) == {"pending": 30}
    emulator.update(garbage=False)
    again = run_cli(["resume"], env, timeout=120)
    assert again.code == 0, again.err
    assert_exactly_once(emulator, db, 30)


@BOTH_DATABASES
def test_a_minute_of_outage_mid_batch_is_waited_out_not_failed(
    emulator: Emulator, env: dict[str, str], db: Database, tmp_path: Path
) -> None:
    emulator.update(latency_ms=40)
    manifest = write_manifest(tmp_path / "m.yaml", 300)
    proc = start(["submit", str(manifest), "--concurrency", "4"], env)
    deadline = time.monotonic() + 60
    while emulator.stats.accepted < 100 and time.monotonic() < deadline:
        time.sleep(0.05)
    began = time.time()
    emulator.update(outage_from=began, outage_until=began + 60)
    time.sleep(25)  # a heartbeat (every 10 s by default) has told the database by now
    status = run_cli(["status"], env)
    assert "the API at" in status.err and "has been failing since" in status.err, status.err
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert_exactly_once(emulator, db, 300)
    assert emulator.stats.outage_answers <= 90, emulator.stats.outage_answers
    assert "Traceback" not in err
