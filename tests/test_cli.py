"""The command line through click's CliRunner: help, exit codes, usage errors."""

from __future__ import annotations

import os
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from dubrunner.cli import cli
from tests.conftest import db_rows, write_manifest


def all_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for name, command in group.commands.items():
        out.append((*prefix, name))
        if isinstance(command, click.Group):
            out.extend(all_commands(command, (*prefix, name)))
    return out


@pytest.mark.parametrize("path", all_commands(cli), ids=" ".join)
def test_every_command_has_help(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0
    assert "Usage:" in result.output
    command: click.Command = cli
    for name in path:
        assert isinstance(command, click.Group)
        command = command.commands[name]
    assert command.help, f"{' '.join(path)} has no help text"


def test_no_credentials_is_a_usage_error_and_writes_nothing(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.yaml", 3)
    db = tmp_path / "j.db"
    result = CliRunner().invoke(
        cli,
        ["submit", str(manifest), "--db", str(db)],
        env={"CHAMELAION_API_KEY": "", "CHAMELAION_BEARER_TOKEN": ""},
    )
    assert result.exit_code == 2
    assert "set CHAMELAION_API_KEY or CHAMELAION_BEARER_TOKEN" in result.output
    assert not db.exists()


def test_plain_http_to_a_remote_host_is_refused(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.yaml", 3)
    result = CliRunner().invoke(
        cli,
        ["submit", str(manifest), "--db", str(tmp_path / "j.db")],
        env={
            "CHAMELAION_API_KEY": "k-123456",
            "CHAMELAION_BASE_URL": "http://api.example.com/api/",
        },
    )
    assert result.exit_code == 2
    assert "refusing to send credentials over plain http" in result.output


def test_options_from_the_environment(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.yaml", 3)
    db = tmp_path / "env.db"
    result = CliRunner().invoke(
        cli, ["submit", str(manifest), "--dry-run"], env={"DUBRUNNER_DB": str(db)}
    )
    assert result.exit_code == 0, result.output
    assert db.exists()
    bad = CliRunner().invoke(
        cli, ["submit", str(manifest)], env={"DUBRUNNER_CONCURRENCY": "0", "DUBRUNNER_DB": str(db)}
    )
    assert bad.exit_code == 2
    assert "--concurrency" in bad.output


def test_retry_and_cancel_say_how_many(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.yaml", 4)
    db = str(tmp_path / "j.db")
    runner = CliRunner()
    assert runner.invoke(cli, ["submit", str(manifest), "--dry-run", "--db", db]).exit_code == 0
    assert db_rows(Path(db), "SELECT count(*) FROM jobs") == [(0,)]
    from dubrunner.store import Store

    store = Store(db)
    from dubrunner.manifest import load

    m = load(manifest)
    store.load(m.batch, m.jobs, str(manifest))
    store.close()
    result = runner.invoke(cli, ["cancel", "--ref", "b-ep00001", "--db", db])
    assert result.exit_code == 0 and "1 pending job(s) cancelled" in result.output
    assert "say which jobs" in runner.invoke(cli, ["cancel", "--db", db]).output
    result = runner.invoke(cli, ["retry", "--batch", "b", "--db", db])
    assert result.exit_code == 0 and "0 job(s) put back to pending" in result.output


def test_retry_and_cancel_take_reference_ids_and_refuse_unknown_ones(tmp_path: Path) -> None:
    # Before: retry had no --ref (episode 42 alone could not be put back), and cancel of a
    # mistyped reference_id said "0 pending job(s) cancelled", exit 0.
    from dubrunner.manifest import load
    from dubrunner.store import Store

    manifest = write_manifest(tmp_path / "m.yaml", 4)
    db = str(tmp_path / "j.db")
    store = Store(db)
    m = load(manifest)
    store.load(m.batch, m.jobs, str(manifest))
    store.fail_unsent("b", {"b-ep00001": "bad video", "b-ep00002": "bad video"})
    store.close()
    runner = CliRunner()
    result = runner.invoke(cli, ["retry", "--ref", "b-ep00001", "--db", db])
    assert result.exit_code == 0 and "1 job(s) put back to pending" in result.output
    sql = "SELECT reference_id, state FROM jobs ORDER BY reference_id"
    after = [("b-ep00000", "pending"), ("b-ep00001", "pending"), ("b-ep00002", "failed")]
    after += [("b-ep00003", "pending")]
    assert db_rows(Path(db), sql) == after
    for args in (["retry", "--ref", "b-ep0002"], ["cancel", "--ref", "b-ep00003", "--ref", "x"]):
        result = runner.invoke(cli, [*args, "--db", db])
        assert result.exit_code == 2, result.output
        bad = args[-1]
        assert result.output == f"error: no job with reference_id {bad!r}; nothing was changed\n"
    assert db_rows(Path(db), sql) == after
    # A reference_id of another batch than --batch names: said so, not "0 job(s)".
    result = runner.invoke(cli, ["retry", "--batch", "nope", "--ref", "b-ep00002", "--db", db])
    assert result.exit_code == 2 and "no batch 'nope'" in result.output
    store = Store(db)
    other = load(write_manifest(tmp_path / "o.yaml", 1, batch="o"))
    store.load(other.batch, other.jobs, "o.yaml")
    store.close()
    result = runner.invoke(cli, ["retry", "--batch", "o", "--ref", "b-ep00002", "--db", db])
    assert result.exit_code == 2
    assert "no job with reference_id 'b-ep00002' in batch 'o'; nothing was changed" in (
        result.output
    )
    assert db_rows(Path(db), sql)[:4] == after


def test_resume_of_an_unknown_batch(tmp_path: Path) -> None:
    CliRunner().invoke(cli, ["db", "upgrade", "--db", str(tmp_path / "j.db")])
    result = CliRunner().invoke(
        cli,
        ["resume", "--batch", "nope", "--db", str(tmp_path / "j.db")],
        env={"CHAMELAION_API_KEY": "k-123456"},
    )
    assert result.exit_code == 2 and "no batch 'nope'" in result.output


def test_db_upgrade_and_bad_database(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["db", "upgrade", "--db", str(tmp_path / "n.db")])
    assert result.exit_code == 0 and "database at revision" in result.output
    junk = tmp_path / "junk.db"
    junk.write_text("not a database at all" * 50)
    result = runner.invoke(cli, ["status", "--db", str(junk)])
    assert result.exit_code == 2
    assert "not a SQLite database" in result.output
    assert "Traceback" not in result.output
    # Before: "cannot open the database file" named no file; a file of a few bytes (SQLite
    # takes it for an empty database) became a database, its content overwritten.
    tiny = tmp_path / "tiny.db"
    tiny.write_text("x")
    (tmp_path / "folder.db").mkdir()
    manifest = str(write_manifest(tmp_path / "m.yaml", 2))
    cases = [("junk.db", "is not a SQLite"), ("tiny.db", "is not a SQLite")]
    cases.append(("folder.db", "is a directory, not a database file"))
    damaged = tmp_path / "damaged.db"  # SQLite's header, then nothing SQLite can read
    damaged.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4000)
    cases.append(("damaged.db", "is not a SQLite database (or is damaged)"))
    os.mkfifo(tmp_path / "fifo.db")  # before: waited for a writer, for ever
    cases.append(("fifo.db", "is not a regular file"))
    for name, what in cases:
        for args in (["status"], ["load", manifest]):
            result = runner.invoke(cli, [*args, "--db", str(tmp_path / name)])
            assert result.exit_code == 2, result.output
            assert result.output.startswith(f"error: {tmp_path / name} {what}"), result.output
    assert tiny.read_text() == "x"


def test_version() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and "dubrunner" in result.output


def test_a_first_sigterm_says_how_to_quit_in_its_own_words(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Before: a SIGTERM (a scheduler's stop) was answered "press Ctrl-C again to quit now".
    import signal

    from dubrunner.cli.ending import stop_on_signals

    stops: list[int] = []
    for signum, words in ((signal.SIGTERM, "send it again"), (signal.SIGINT, "press Ctrl-C again")):
        with stop_on_signals(lambda: stops.append(1)):
            os.kill(os.getpid(), signum)
        assert f"({words} to quit now)" in capsys.readouterr().err
    assert stops == [1, 1]


def test_a_database_path_with_url_characters_is_that_file(tmp_path: Path) -> None:
    # Before: `--db 'a?b.db'` loaded into ./a (the rest read as a URL query), `--db 'a%20b.db'`
    # into 'a b.db'; status then found no database at the name given.
    manifest = str(write_manifest(tmp_path / "m.yaml", 2))
    for name in ("a?b.db", "a%20b.db", "c%3Fd.db"):
        db = str(tmp_path / name)
        assert CliRunner().invoke(cli, ["load", manifest, "--db", db]).exit_code == 0
        result = CliRunner().invoke(cli, ["status", "--summary", "--format", "json", "--db", db])
        assert result.exit_code == 0, result.output
        assert db_rows(Path(db), "SELECT count(*) FROM jobs") == [(2,)]
    assert sorted(p.name for p in tmp_path.glob("*.db")) == ["a%20b.db", "a?b.db", "c%3Fd.db"]
