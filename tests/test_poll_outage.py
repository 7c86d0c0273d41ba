"""An API that fails as a whole while jobs are being polled is one batch-wide event: the progress
line says so, no job is charged for it, and the poll halts after --outage-timeout with one
sentence (or carries on when the API comes back). Real processes against the emulator."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from dubrunner.emulator import Emulator
from tests.conftest import Database, run_cli, start, states, write_manifest

pytestmark = pytest.mark.slow


def _submitted(emulator: Emulator, env: dict[str, str], tmp_path: Path, n: int) -> None:
    emulator.update(complete_after=3600)
    manifest = write_manifest(tmp_path / "m.yaml", n)
    r = run_cli(["submit", str(manifest)], env)
    assert r.code == 0, r.err


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def test_poll_wait_halts_after_the_outage_timeout_charging_no_job(
    emulator: Emulator, env: dict[str, str], db: Database, tmp_path: Path
) -> None:
    # Failed before: `poll --wait` went on for ever ("still going 6"), --outage-timeout ignored.
    _submitted(emulator, env, tmp_path, 6)
    emulator.update(outage_from=time.time(), outage_until=time.time() + 3600)
    started = time.monotonic()
    r = run_cli(["poll", "--wait", "--interval", "0.5", "--outage-timeout", "5"], env, timeout=90)
    assert time.monotonic() - started < 30
    assert r.code == 1, r.err
    errors = _error_lines(r.err)
    assert len(errors) == 1, r.err
    assert "the API has failed every request since" in errors[0]
    assert "longer than --outage-timeout" in errors[0]
    assert "6 still processing" in errors[0] and "dubrunner poll --wait" in errors[0]
    assert "Traceback" not in r.err
    assert states(db) == {"submitted": 6}  # none failed, none "not found"
    assert emulator.stats.outage_answers <= 15, emulator.stats.outage_answers  # probed, politely


def test_an_outage_in_the_middle_of_poll_wait_is_waited_out(
    emulator: Emulator, env: dict[str, str], db: Database, tmp_path: Path
) -> None:
    # Failed before: no word of the outage, and every round asked for every job through it.
    _submitted(emulator, env, tmp_path, 6)
    proc = start(["poll", "--wait", "--interval", "0.5", "--outage-timeout", "60"], env)
    time.sleep(2)
    began = time.time()
    emulator.update(outage_from=began, outage_until=began + 10, complete_after=0.0)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert states(db) == {"completed": 6}
    assert "API failing since" in err and "retrying every" in err, err
    assert emulator.stats.outage_answers <= 15, emulator.stats.outage_answers
    assert "Traceback" not in err


def test_one_poll_round_that_got_no_answer_exits_1_saying_so(
    emulator: Emulator, env: dict[str, str], db: Database, tmp_path: Path
) -> None:
    # Failed before: exit 0, "6 still processing", not a word of the errors.
    _submitted(emulator, env, tmp_path, 6)
    emulator.update(outage_from=time.time(), outage_until=time.time() + 3600)
    started = time.monotonic()
    r = run_cli(["poll"], env, timeout=90)
    assert time.monotonic() - started < 30
    assert r.code == 1, r.err
    errors = _error_lines(r.err)
    assert len(errors) == 1, r.err
    assert "HTTP 500" in errors[0] and "6 still processing" in errors[0], errors[0]
    assert states(db) == {"submitted": 6}
    # `status` says so too (failed before: only workers left word of the API's health).
    shown = run_cli(["status"], env)
    assert f"note: the API at {emulator.base_url} has been failing since" in shown.err, shown.err
