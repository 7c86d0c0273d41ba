"""The README is executable: every `dubrunner ...` line of its code blocks runs, in order, as a
real process against the emulator, on a scratch database, with the manifests of manifests/.
A line fails the test by a usage error (exit 2) or a traceback. A new README line is tested by
being written."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dubrunner.emulator import Emulator
from tests.conftest import TOKEN, clean_env

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parent.parent / "README.md"

# Lines that run until stopped: started, given this many seconds, then stopped with Ctrl-C
# (SIGINT), which must end them with exit 130 and no traceback.
RUN_UNTIL_STOPPED = {"work --follow": 3.0}
# Lines not run, and why. Keep this short: every line left out is one that can silently rot.
SKIPPED: dict[str, str] = {}


@dataclass
class Line:
    number: int  # in README.md
    text: str
    env: dict[str, str] = field(default_factory=dict)  # VAR=value before `dubrunner`
    args: list[str] = field(default_factory=list)  # after `dubrunner`
    stdout_to: str | None = None  # `> FILE`

    @property
    def command(self) -> str:
        return " ".join(self.args)


def readme_lines(text: str) -> list[Line]:
    """Every `dubrunner ...` command line of the README's fenced code blocks."""
    lines: list[Line] = []
    fenced = False
    for number, raw in enumerate(text.splitlines(), 1):
        if raw.lstrip().startswith("```"):
            fenced = not fenced
            continue
        words = shlex.split(raw, comments=True) if fenced else []
        env: dict[str, str] = {}
        while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
            name, _, value = words.pop(0).partition("=")
            env[name] = value
        if not words or words[0] != "dubrunner":
            continue
        line = Line(number, raw.strip(), env)
        args = words[1:]
        if ">" in args:
            at = args.index(">")
            line.stdout_to, args = args[at + 1], args[:at]
        line.args = args
        lines.append(line)
    return lines


def test_the_readme_has_the_lines_this_test_expects() -> None:
    """The extraction itself: a README whose examples this test no longer sees would pass."""
    commands = [line.command for line in readme_lines(README.read_text())]
    assert "validate manifests/season1-ja.yaml" in commands
    assert "export --format csv" in commands
    assert any(c.startswith("work --follow") for c in commands)
    assert len(commands) >= 15
    for skipped in SKIPPED:
        assert skipped in commands, f"SKIPPED names {skipped!r}, which the README no longer has"


def run_line(line: Line, env: dict[str, str], cwd: Path) -> tuple[int, str, str]:
    argv = [sys.executable, "-m", "dubrunner", *line.args]
    stdout: int | object = subprocess.PIPE
    target = None
    if line.stdout_to is not None:  # into the scratch folder, whatever the README's path
        target = open(cwd / Path(os.path.expanduser(line.stdout_to)).name, "w")  # noqa: SIM115
        stdout = target
    try:
        proc = subprocess.Popen(
            argv,
            env={**env, **line.env},
            cwd=cwd,
            stdout=stdout,  # type: ignore[arg-type]
            stderr=subprocess.PIPE,
            text=True,
        )
        until_stopped = next(
            (s for prefix, s in RUN_UNTIL_STOPPED.items() if line.command.startswith(prefix)),
            None,
        )
        if until_stopped is not None:
            time.sleep(until_stopped)
            assert proc.poll() is None, f"README line {line.number} ended by itself"
            proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=180)
        return proc.returncode, out or "", err
    finally:
        if target is not None:
            target.close()


def test_every_readme_command_runs(emulator: Emulator, tmp_path: Path) -> None:
    (tmp_path / "manifests").symlink_to(README.parent / "manifests")
    env = clean_env(
        CHAMELAION_BASE_URL=emulator.base_url,
        CHAMELAION_API_KEY=TOKEN,
        DUBRUNNER_POLL_INTERVAL="0.2",  # `poll --wait` without the default 5 s between rounds
        HOME=str(tmp_path),  # `~/...` in a line stays in the scratch folder
    )
    ran = 0
    for line in readme_lines(README.read_text()):
        if line.command in SKIPPED:
            continue
        code, _out, err = run_line(line, env, tmp_path)
        where = f"README.md:{line.number}: {line.text}\nexit {code}\n{err}"
        assert code != 2, where
        assert "Traceback" not in err and "internal error" not in err, where
        if any(line.command.startswith(p) for p in RUN_UNTIL_STOPPED):
            assert code == 130, where
        ran += 1
    assert ran >= 15
    # The lines did what they say: the scratch database holds the README's batch, sent.
    assert set(emulator.accepted()) >= {f"season1-ja-e{i:02d}" for i in range(1, 51)}
    assert emulator.duplicates() == {}
    assert (tmp_path / "season1-ja.csv").read_text().count("\n") == 51
    # `--on-done 'cat > last-run.json'` got the summary on its stdin.
    last_run = json.loads((tmp_path / "last-run.json").read_text())
    assert last_run["command"] == "poll" and last_run["exit"] == 0
    assert {"batch": "season1-ja", "state": "completed", "jobs": 50} in last_run["summary"]
