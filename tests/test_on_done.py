"""`--on-done CMD`: run once a run has ended, with the summary on stdin and DUBRUNNER_BATCH /
DUBRUNNER_EXIT in its environment, never the API's credentials; a hook that fails, hangs or
cannot be found is said in one line and changes neither the exit code nor anything else.
Real hooks (a small Python script), a real emulator, a real SQLite file."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from dubrunner import hooks
from dubrunner.cli import cli
from dubrunner.emulator import Emulator
from dubrunner.sessions import Ending
from tests.conftest import TOKEN, Database, load_jobs, start, states, write_manifest

# Writes what it was given (stdin, environment) to argv[1] as JSON, says a word on stdout, and
# exits argv[2].
HOOK = """\
import json, os, sys
data = {"stdin": sys.stdin.read(), "env": dict(os.environ)}
with open(sys.argv[1], "w") as f:
    json.dump(data, f)
print("hook says hello")
sys.exit(int(sys.argv[2]))
"""


def hook_command(tmp_path: Path, exit_code: int = 0) -> tuple[str, Path]:
    """A hook command line, and the file where it writes what it received."""
    script = tmp_path / "hook.py"
    script.write_text(HOOK)
    seen = tmp_path / f"seen-{exit_code}.json"
    words = [sys.executable, str(script), str(seen), str(exit_code)]
    return " ".join(shlex.quote(w) for w in words), seen


def received(seen: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """What the hook read on stdin (parsed) and its environment."""
    data = json.loads(seen.read_text())
    return json.loads(data["stdin"]), data["env"]


def invoke(args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, args, env=env)
    return result.exit_code, result.stdout, result.stderr


def status_summary(env: dict[str, str], batch: str | None = None) -> Any:
    code, out, _err = invoke(
        ["status", "--summary", "--format", "json", *(["--batch", batch] if batch else [])], env
    )
    assert code == 0
    return json.loads(out)


# -- the library ----------


def test_the_environment_keeps_the_credentials_out() -> None:
    environ = {
        "PATH": "/usr/bin",
        "CHAMELAION_API_KEY": "key-0123456789",
        "CHAMELAION_BEARER_TOKEN": "bearer-0123456789",
        "CHAMELAION_BASE_URL": "http://127.0.0.1:9/api/",
        "COPY_OF_IT": "Bearer bearer-0123456789",  # a variable that holds a credential
        "DUBRUNNER_DB": "postgresql+psycopg://dub:pa55word@db.internal/dubrunner",
        "SLACK_CHANNEL": "#dubs",
    }
    env = hooks.environment(environ, ["b1", "b2"], 1)
    assert env == {
        "PATH": "/usr/bin",
        "CHAMELAION_BASE_URL": "http://127.0.0.1:9/api/",
        "SLACK_CHANNEL": "#dubs",
        "DUBRUNNER_BATCH": "b1,b2",
        "DUBRUNNER_EXIT": "1",
    }
    # A database URL without a password is kept: the hook can run the next dubrunner step.
    kept = hooks.environment({"DUBRUNNER_DB": "/data/jobs.db"}, [], 0)
    assert kept["DUBRUNNER_DB"] == "/data/jobs.db" and kept["DUBRUNNER_BATCH"] == ""


def test_a_hook_gets_its_input_and_its_exit_code_is_said(tmp_path: Path) -> None:
    command, seen = hook_command(tmp_path, 0)
    data = {"batch": "b", "exit": 0, "summary": [{"batch": "b", "state": "submitted", "jobs": 2}]}
    assert hooks.run(hooks.OnDone(command, 30), data, {"X": "1", "PATH": os.defpath}) is None
    got, env = received(seen)
    assert got == data and env["X"] == "1"
    command, seen = hook_command(tmp_path, 1)
    assert hooks.run(hooks.OnDone(command, 30), data, {}) == "on-done hook exited 1"
    assert received(seen)[0] == data


def test_a_hook_that_cannot_be_run_is_said(monkeypatch: pytest.MonkeyPatch) -> None:
    missing = hooks.run(hooks.OnDone("no-such-command-4711", 30), {}, {"PATH": os.defpath})
    assert missing == "on-done hook exited 127 (command not found)"
    killed = hooks.run(hooks.OnDone("kill -9 $$", 30), {}, {"PATH": os.defpath})
    assert killed == "on-done hook was killed by SIGKILL"
    monkeypatch.setattr(hooks, "SHELL", "/no/such/sh")
    assert hooks.run(hooks.OnDone("true", 30), {}, {}) == (
        "on-done hook could not be run: No such file or directory"
    )


def test_a_hook_that_reads_nothing_does_not_block(tmp_path: Path) -> None:
    # Far more than a pipe holds, to a hook that never reads its stdin.
    data = {"summary": [{"batch": f"b{i}", "state": "completed", "jobs": i} for i in range(20_000)]}
    started = time.monotonic()
    assert hooks.run(hooks.OnDone("exit 0", 30), data, {}) is None
    assert time.monotonic() - started < 10


def test_a_database_that_fails_still_runs_the_hook(tmp_path: Path, db: Database) -> None:
    store = load_jobs(db, write_manifest(tmp_path / "m.yaml", 2))
    try:
        db.rows("DROP TABLE jobs")
        command, seen = hook_command(tmp_path)
        lines = hooks.after_run(hooks.OnDone(command, 30), store, "poll", "b", Ending("x", 1))
    finally:
        store.close()
    assert lines == [
        "on-done hook: the summary could not be read (database error: no such table: jobs); "
        "it gets null"
    ]
    got, env = received(seen)
    assert got == {"command": "poll", "batch": "b", "exit": 1, "sentence": "x", "summary": None}
    assert env["DUBRUNNER_BATCH"] == "b" and env["DUBRUNNER_EXIT"] == "1"


@pytest.mark.slow
def test_a_hook_that_hangs_is_killed_with_what_it_started(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    command = f"sleep 60 & echo $! > {shlex.quote(str(pid_file))}; wait"
    started = time.monotonic()
    problem = hooks.run(hooks.OnDone(command, 0.5), {}, {"PATH": os.defpath})
    assert problem == "on-done hook took longer than 0.5 s and was killed"
    assert time.monotonic() - started < 5
    sleeper = int(pid_file.read_text())
    _gone(sleeper)


def _gone(pid: int) -> None:
    """The process has ended (a zombie of init's counts: it runs no more)."""
    for _ in range(100):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return
        time.sleep(0.05)
    pytest.fail(f"process {pid} is still running")


# -- the commands, against the emulator ----------


def test_submit_wait_hands_the_summary_to_the_hook(
    env: dict[str, str], tmp_path: Path, emulator: Emulator
) -> None:
    emulator.update(complete_after=0.0)
    manifest = write_manifest(tmp_path / "m.yaml", 3, batch="b1")
    command, seen = hook_command(tmp_path)
    code, out, err = invoke(
        ["submit", str(manifest), "--wait", "--interval", "0.05", "--on-done", command], env
    )
    assert code == 0, err
    assert out == ""
    got, hook_env = received(seen)
    assert got == {
        "command": "submit",
        "batch": "b1",
        "exit": 0,
        "sentence": "batch b1: 3 completed, 0 failed remotely, 0 still processing",
        "summary": status_summary(env, "b1"),
    }
    assert got["summary"] == [{"batch": "b1", "state": "completed", "jobs": 3}]
    assert hook_env["DUBRUNNER_BATCH"] == "b1" and hook_env["DUBRUNNER_EXIT"] == "0"
    assert "CHAMELAION_API_KEY" not in hook_env
    assert TOKEN not in seen.read_text()
    assert hook_env["CHAMELAION_BASE_URL"] == env["CHAMELAION_BASE_URL"]


def test_a_failing_hook_changes_nothing(env: dict[str, str], tmp_path: Path, db: Database) -> None:
    manifest = write_manifest(tmp_path / "m.yaml", 3)
    command, seen = hook_command(tmp_path, 1)
    code, _out, err = invoke(["submit", str(manifest), "--on-done", command], env)
    assert code == 0
    assert err.splitlines()[-1] == "on-done hook exited 1"
    assert received(seen)[0]["summary"] == [{"batch": "b", "state": "submitted", "jobs": 3}]
    code, _out, err = invoke(["poll", "--on-done", "no-such-command-4711"], env)
    assert code == 0
    assert err.splitlines()[-1] == "on-done hook exited 127 (command not found)"
    assert states(db) == {"processing": 3}  # what the poll saw, nothing of the hook


def test_poll_wait_over_every_batch_says_its_exit_and_batches(
    env: dict[str, str], tmp_path: Path, emulator: Emulator
) -> None:
    emulator.update(complete_after=0.0)
    for batch, failing in (("b1", frozenset({1})), ("b2", frozenset())):
        manifest = write_manifest(tmp_path / f"{batch}.yaml", 2, batch=batch, failing=failing)
        assert invoke(["submit", str(manifest)], env)[0] == 0
    command, seen = hook_command(tmp_path)
    code, _out, err = invoke(["poll", "--wait", "--interval", "0.05", "--on-done", command], env)
    assert code == 1, err  # a job failed remotely: the run's code, the hook's 0 notwithstanding
    got, hook_env = received(seen)
    assert got["exit"] == 1 and got["batch"] is None
    assert got["summary"] == status_summary(env)
    assert {row["batch"] for row in got["summary"]} == {"b1", "b2"}
    assert hook_env["DUBRUNNER_BATCH"] == "b1,b2" and hook_env["DUBRUNNER_EXIT"] == "1"


def test_a_halt_runs_the_hook(env: dict[str, str], tmp_path: Path, db: Database) -> None:
    load_jobs(db, write_manifest(tmp_path / "m.yaml", 2)).close()
    command, seen = hook_command(tmp_path)
    wrong = {**env, "CHAMELAION_API_KEY": "wrong-key-value"}
    code, _out, err = invoke(["work", "--batch", "b", "--on-done", command], wrong)
    assert code == 1, err
    got, hook_env = received(seen)
    assert got["exit"] == 1 and got["sentence"].startswith("invalid token after 0 of 2 jobs")
    assert got["summary"] == [{"batch": "b", "state": "halted", "jobs": 2}]
    assert "wrong-key-value" not in seen.read_text()
    assert hook_env["DUBRUNNER_EXIT"] == "1"


def test_a_dry_run_runs_no_hook(env: dict[str, str], tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.yaml", 2)
    command, seen = hook_command(tmp_path)
    assert invoke(["submit", str(manifest), "--dry-run", "--on-done", command], env)[0] == 0
    assert not seen.exists()


# -- a real dubrunner process ----------


@pytest.mark.slow
def test_a_follower_stopped_runs_its_hook_with_130(
    env: dict[str, str], tmp_path: Path, db: Database
) -> None:
    load_jobs(db, write_manifest(tmp_path / "m.yaml", 3)).close()
    command, seen = hook_command(tmp_path)
    proc = start(["work", "--follow", "--idle-poll", "0.1", "--on-done", command], env)
    try:
        deadline = time.monotonic() + 30
        while states(db) != {"submitted": 3} and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert out == ""  # the hook's "hello" went to stderr: stdout stays data alone
    assert "hook says hello" in err
    got, hook_env = received(seen)
    assert got["exit"] == 130 and got["command"] == "work"
    assert got["summary"] == [{"batch": "b", "state": "submitted", "jobs": 3}]
    assert hook_env["DUBRUNNER_EXIT"] == "130" and hook_env["DUBRUNNER_BATCH"] == "b"
    assert "CHAMELAION_API_KEY" not in hook_env and TOKEN not in seen.read_text()


@pytest.mark.slow
def test_ctrl_c_while_the_hook_runs_exits_130_at_once(
    env: dict[str, str], tmp_path: Path, db: Database
) -> None:
    load_jobs(db, write_manifest(tmp_path / "m.yaml", 2)).close()
    pid_file = tmp_path / "pid"
    command = f"sleep 60 & echo $! > {shlex.quote(str(pid_file))}; wait"
    proc = start(["work", "--on-done", command], env)
    try:
        deadline = time.monotonic() + 30
        while not pid_file.exists() or not pid_file.read_text().strip():
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=10)  # not the hook's 60 s default timeout
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    _gone(int(pid_file.read_text()))
    assert states(db) == {"submitted": 2}


@pytest.mark.slow
def test_on_done_from_the_shell_with_a_hanging_hook(
    env: dict[str, str], tmp_path: Path, emulator: Emulator
) -> None:
    manifest = write_manifest(tmp_path / "m.yaml", 2)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dubrunner",
            "submit",
            str(manifest),
            "--on-done",
            "echo on stdout; sleep 60",
            "--on-done-timeout",
            "0.5",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert "on stdout" in lines
    assert lines[-1] == "on-done hook took longer than 0.5 s and was killed"
    assert len(emulator.accepted()) == 2
