"""Output that cannot be written (a full disk, a missing folder, a directory for a file) is one
line on stderr and exit 2, as `report --out` always said: never an internal error, never click's
own wording; a closed pipe stays quiet."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from dubrunner.cli import cli, main
from tests.conftest import Database, clean_env, load_jobs, write_manifest

FULL = "/dev/full"
needs_full = pytest.mark.skipif(not os.path.exists(FULL), reason="no /dev/full here")
COMMANDS = [
    ["status", "--format", "json"],
    ["status"],
    ["export"],
    ["export", "--format", "jsonl"],
    ["report", "--format", "json"],
]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    db = Database(f"sqlite:///{tmp_path / 'j.db'}", "sqlite", tmp_path / "j.db")
    load_jobs(db, write_manifest(tmp_path / "m.yaml", 3)).close()
    assert db.path is not None
    return db.path


@needs_full
@pytest.mark.parametrize("unbuffered", [False, True], ids=["buffered", "python-u"])
@pytest.mark.parametrize("args", COMMANDS, ids=[" ".join(a) for a in COMMANDS])
def test_a_full_disk_under_stdout_is_one_line_exit_2(
    db_path: Path,
    args: list[str],
    unbuffered: bool,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fd = os.open(FULL, os.O_WRONLY)
    raw = io.FileIO(fd, "w")
    stdout = io.TextIOWrapper(
        raw if unbuffered else io.BufferedWriter(raw), encoding="utf-8", write_through=unbuffered
    )
    monkeypatch.setattr(sys, "stdout", stdout)
    monkeypatch.setattr(sys, "argv", ["dubrunner", *args, "--db", str(db_path)])
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    assert err.splitlines() == ["error: cannot write to stdout: No space left on device"], err


@needs_full
@pytest.mark.slow
def test_a_full_disk_under_a_real_process(db_path: Path) -> None:
    env = clean_env(DUBRUNNER_DB=str(db_path))
    env.pop("PYTHONUNBUFFERED", None)
    with open(FULL, "w") as full:
        proc = subprocess.run(
            [sys.executable, "-m", "dubrunner", "status", "--format", "json"],
            env=env,
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == "error: cannot write to stdout: No space left on device\n"


@pytest.mark.slow
def test_a_closed_pipe_stays_quiet(db_path: Path) -> None:
    env = clean_env(DUBRUNNER_DB=str(db_path))
    proc = subprocess.Popen(
        [sys.executable, "-m", "dubrunner", "export", "--format", "jsonl"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # as `| head -c0` does
    err = proc.stderr.read()
    # click ends a write to a closed pipe with exit 1 and says nothing: as it was.
    assert proc.wait(timeout=120) in (0, 1), err
    assert "error" not in err and "Traceback" not in err and "Exception ignored" not in err, err


@pytest.mark.parametrize("command", ["export", "report"])
@pytest.mark.parametrize("where", ["missing folder", "a directory", "full"])
def test_an_out_file_that_cannot_be_written_is_one_line_exit_2(
    db_path: Path, tmp_path: Path, command: str, where: str
) -> None:
    if where == "full" and not os.path.exists(FULL):
        pytest.skip("no /dev/full here")
    out = {
        "missing folder": tmp_path / "nowhere" / "x.csv",
        "a directory": tmp_path,
        "full": Path(FULL),
    }[where]
    reason = {
        "missing folder": "No such file or directory",
        "a directory": "Is a directory",
        "full": "No space left on device",
    }[where]
    result = CliRunner().invoke(cli, [command, "--db", str(db_path), "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert result.output.splitlines() == [f"error: cannot write {out}: {reason}"], result.output


def test_export_still_writes_its_file_and_dash_is_stdout(db_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "e.csv"
    result = CliRunner().invoke(cli, ["export", "--db", str(db_path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_text(encoding="utf-8").count("\n") == 4  # the header and 3 jobs
    result = CliRunner().invoke(cli, ["export", "--db", str(db_path), "--out", "-", "-q"])
    assert result.exit_code == 0, result.output
    assert result.stdout == out.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    "args",
    [["status", "e\udcff"], ["status", "--batch", "\udcff"], ["validate", "m\udcff.yaml"]],
    ids=["reference_id", "batch", "manifest"],
)
def test_an_argument_that_is_not_utf8_is_one_line_exit_2(
    db_path: Path,
    args: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(sys, "argv", ["dubrunner", "--db", str(db_path), *args])
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    shown = args[-1].replace("\udcff", "\\xff")
    assert err.splitlines() == [
        f"error: the argument '{shown}' is not valid UTF-8: what dubrunner is given (names, "
        "files, references) it keeps as text"
    ], err
