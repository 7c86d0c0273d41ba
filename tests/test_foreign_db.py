"""Databases dubrunner leaves exactly as they are: an empty file given to a command on jobs
already loaded (it holds no dubrunner database yet), and another program's database even when it
has a `jobs` table of its own. Each is refused in one line with exit 2, and the file is
byte-identical afterwards. And `status` on an empty dubrunner database, which answers without
SQLAlchemy (dbfile.SqliteFile.no_jobs_yet), says exactly what the SQLAlchemy path says."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from dubrunner.cli import cli
from dubrunner.dbfile import SqliteFile
from dubrunner.store import Store, StoreError
from tests.conftest import (
    PG_SERVER,
    Database,
    clean_env,
    manifest_of,
    run_cli,
    write_manifest,
)

API = {"CHAMELAION_API_KEY": "k", "CHAMELAION_BASE_URL": "http://127.0.0.1:9/api/"}

FOREIGN = "app.db is not a dubrunner database (its tables: jobs); give another --db"
# Commands that act on jobs already loaded: they must never create or change a database.
ON_LOADED_JOBS = [
    ["status"],
    ["status", "--format", "json"],
    ["status", "--summary"],
    ["status", "ep1"],
    ["export"],
    ["report"],
    ["poll"],
    ["fetch", "--out", "dubs"],
    ["retry"],
    ["cancel", "--all-pending"],
    ["resume"],
    ["work"],
    ["check", "b"],
]
# Commands that load jobs: they make a new database, but never of another program's.
LOADING = [["load", "m.yaml"], ["submit", "m.yaml"], ["db", "upgrade"]]


def invoke(args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, args, env=env)
    return result.exit_code, result.stdout, result.stderr


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def foreign_with_jobs(path: Path) -> None:
    """Another program's SQLite file, with a `jobs` table of its own (and no dubrunner schema)."""
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY, command TEXT, cron TEXT)")
    conn.execute("INSERT INTO jobs (command, cron) VALUES ('backup', '0 3 * * *')")
    conn.commit()
    conn.close()


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    write_manifest(tmp_path / "m.yaml", 2)
    return tmp_path


@pytest.mark.parametrize("args", ON_LOADED_JOBS, ids=" ".join)
def test_an_empty_file_is_no_database_to_a_command_on_loaded_jobs(
    args: list[str], folder: Path
) -> None:
    # Failed before: the command wrote dubrunner's schema into the file, then found no job.
    (folder / "empty.db").touch()
    before = files(folder)
    code, out, err = invoke([*args, "--db", "empty.db"], clean_env(**API))
    assert (code, out) == (2, "")
    assert err == "error: empty.db holds no dubrunner database yet — load a manifest first\n"
    assert files(folder) == before


@pytest.mark.parametrize("args", ON_LOADED_JOBS + LOADING, ids=" ".join)
def test_another_programs_jobs_table_is_refused_and_left_alone(
    args: list[str], folder: Path
) -> None:
    # Failed before: "table jobs already exists", from the first migration.
    foreign_with_jobs(folder / "app.db")
    before = files(folder)
    code, out, err = invoke([*args, "--db", "app.db"], clean_env(**API))
    assert (code, out) == (2, "")
    assert err == f"error: {FOREIGN}\n"
    assert files(folder) == before


def test_a_command_that_loads_jobs_makes_a_database_of_an_empty_file(folder: Path) -> None:
    (folder / "empty.db").touch()
    code, _, err = invoke(["load", "m.yaml", "--db", "empty.db"], clean_env())
    assert code == 0, err
    code, out, _ = invoke(["status", "--db", "empty.db", "--format", "json"], clean_env())
    assert code == 0 and len(out.splitlines()) > 1


def test_the_library_refuses_them_too(tmp_path: Path) -> None:
    empty, app = tmp_path / "empty.db", tmp_path / "app.db"
    empty.touch()
    foreign_with_jobs(app)
    before = files(tmp_path)
    with pytest.raises(StoreError, match="holds no dubrunner database yet"):
        Store(str(empty), create=False)
    with pytest.raises(StoreError, match="not a dubrunner database"):
        Store(str(app))
    with pytest.raises(StoreError, match="no database at"):
        Store(str(tmp_path / "none.db"), create=False)
    assert files(tmp_path) == before


def test_shell_completion_leaves_an_empty_file_alone(folder: Path) -> None:
    from click.shell_completion import ShellComplete

    (folder / "empty.db").touch()
    completion = ShellComplete(cli, {}, "dubrunner", "_DUBRUNNER_COMPLETE")
    assert completion.get_completions(["status", "--db", "empty.db", "--batch"], "") == []
    assert (folder / "empty.db").read_bytes() == b""


@pytest.mark.slow
def test_as_a_process_too(folder: Path) -> None:
    (folder / "empty.db").touch()
    foreign_with_jobs(folder / "app.db")
    before = files(folder)
    env = clean_env(**API)
    for args in (["status"], ["export"], ["report"]):
        r = run_cli([*args, "--db", "empty.db"], env, cwd=folder)
        assert (r.code, r.out) == (2, "")
        assert r.err == "error: empty.db holds no dubrunner database yet — load a manifest first\n"
    for args in (["status"], ["load", "m.yaml"], ["db", "upgrade"]):
        r = run_cli([*args, "--db", "app.db"], env, cwd=folder)
        assert (r.code, r.out) == (2, "")
        assert r.err.count("\n") == 1 and "app.db is not a dubrunner database" in r.err
    assert files(folder) == before


@pytest.fixture
def server_db() -> Iterator[str]:
    """A throwaway, empty PostgreSQL database (skipped where there is no server)."""
    from tests.conftest import _postgres_error, require_slow_tier

    require_slow_tier("needs PostgreSQL")
    problem = _postgres_error()
    if problem:
        pytest.skip(f"no PostgreSQL server on 127.0.0.1:5432 ({problem})")
    name = f"dubrunner_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(f"{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_SERVER}/{name}"
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.mark.slow
def test_a_server_database_gets_the_same_verdicts(server_db: str, folder: Path) -> None:
    db = Database(server_db, "postgresql")
    env = clean_env(**API, DUBRUNNER_DB=server_db)

    def tables() -> list[Any]:
        return sorted(
            db.rows("SELECT tablename FROM pg_tables WHERE schemaname = 'public'"), key=str
        )

    code, _, err = invoke(["status"], env)
    assert code == 2 and err.endswith("holds no dubrunner database yet — load a manifest first\n")
    assert tables() == []
    db.rows("CREATE TABLE jobs (id INTEGER PRIMARY KEY, command TEXT)")
    for args in (["status"], ["load", "m.yaml"], ["db", "upgrade"]):
        code, _, err = invoke(args, env)
        assert code == 2 and err.count("\n") == 1, err
        assert "is not a dubrunner database (its tables: jobs)" in err and "@" in err
    assert tables() == [("jobs",)]


STATUS_OPTIONS = [[], ["--state", "failed"], ["--limit", "0"], ["--wide"], ["-q"], ["--limit", "3"]]


@pytest.mark.parametrize("options", STATUS_OPTIONS, ids=lambda o: " ".join(o) or "plain")
def test_status_on_an_empty_database_says_what_the_full_path_says(
    options: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "j.db"
    Store(str(db)).close()
    before = db.read_bytes()
    summaries: list[object] = []
    full_summary = Store.summary

    def summary(self: Store, batch: str | None = None) -> list[tuple[str, str, int]]:
        summaries.append(batch)
        return full_summary(self, batch)

    monkeypatch.setattr(Store, "summary", summary)
    env = clean_env(DUBRUNNER_DB=str(db))
    fast = invoke(["status", *options], env)
    assert summaries == []  # answered without the store
    monkeypatch.setattr(SqliteFile, "no_jobs_yet", property(lambda self: False))
    full = invoke(["status", *options], env)
    assert summaries == [None]  # the store's own answer
    assert fast == full == (0, "", "no jobs yet: `dubrunner submit MANIFEST` loads some\n")
    assert db.read_bytes() == before


def test_status_with_jobs_or_other_questions_takes_the_full_path(tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    store = Store(str(db))
    assert SqliteFile.peek(db).no_jobs_yet
    store.load("b", manifest_of(tmp_path, 1).jobs, "m.yaml")
    store.close()
    assert not SqliteFile.peek(db).no_jobs_yet
    empty = tmp_path / "e.db"
    Store(str(empty)).close()
    env = clean_env(DUBRUNNER_DB=str(empty))
    assert invoke(["status", "--batch", "b"], env)[2] == "error: no batch 'b' in the database\n"
    assert invoke(["status", "--format", "json"], env)[:2] == (0, "[]\n")


def test_doctor_looks_without_creating_or_changing(folder: Path) -> None:
    from dubrunner.doctor import _database_finding

    (folder / "empty.db").touch()
    foreign_with_jobs(folder / "app.db")
    before = files(folder)
    # Failed before: doctor created ./dubrunner.db, and switched the empty file to WAL.
    assert _database_finding(None).detail == "sqlite, none yet: its tables are made on first use"
    assert _database_finding("empty.db").detail == "sqlite, empty: its tables are made on first use"
    foreign = _database_finding("app.db")
    assert not foreign.ok and "is not a dubrunner database (its tables: jobs)" in foreign.detail
    assert files(folder) == before


@pytest.mark.slow
@pytest.mark.parametrize("db", ["postgresql"], indirect=True)
def test_a_role_that_may_only_read_gets_one_sentence_and_nothing_loaded(
    db: Database, folder: Path
) -> None:
    """PostgreSQL's "permission denied" on the insert (a role granted SELECT only) is the
    database's set-up, said in one line with exit 2, never an internal error."""
    code, _, err = invoke(["load", "m.yaml"], clean_env(DUBRUNNER_DB=db.url))
    assert code == 0, err
    role = f"dubrunner_ro_{uuid.uuid4().hex[:8]}"
    name = db.url.rsplit("/", 1)[1]
    admin = sa.create_engine(f"{PG_SERVER}/{name}", isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE ROLE {role} LOGIN")
            conn.exec_driver_sql(f'GRANT CONNECT ON DATABASE "{name}" TO {role}')
            conn.exec_driver_sql(f"GRANT USAGE ON SCHEMA public TO {role}")
            conn.exec_driver_sql(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")
        write_manifest(folder / "more.yaml", 3, batch="more")
        reader = f"postgresql+psycopg://{role}@127.0.0.1:5432/{name}"
        code, out, err = invoke(["load", "more.yaml"], clean_env(DUBRUNNER_DB=reader))
        assert (code, out) == (2, "")
        assert err.strip().splitlines() == [
            "error: the database failed: database error: permission denied for table jobs; "
            "nothing was loaded"
        ]
        assert db.rows("SELECT count(*) FROM jobs") == [(2,)]
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP OWNED BY {role}")
            conn.exec_driver_sql(f"DROP ROLE {role}")
        admin.dispose()
