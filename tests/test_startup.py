"""Start-up: a command imports what it needs when it runs. `dubrunner --help` and each TAB of
shell completion import no SQLAlchemy, httpx, rich or YAML; nor does `status` on an empty
database (dbfile.SqliteFile.no_jobs_yet). (The times themselves are measured by `make bench`.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dubrunner.store import Store
from tests.conftest import clean_env, manifest_of, require_slow_tier

pytestmark = pytest.mark.slow

HEAVY = ("sqlalchemy", "alembic", "httpx", "rich", "yaml", "tenacity")
PROBE = """
import json, sys
from dubrunner.cli import cli
try:
    cli.main(sys.argv[1:], prog_name="dubrunner", standalone_mode=False)
except SystemExit:
    pass
print(json.dumps([m for m in {heavy!r} if m in sys.modules]), file=sys.stderr)
"""


def imported(args: list[str], env: dict[str, str]) -> set[str]:
    require_slow_tier("starts a Python process")
    proc = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=HEAVY), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return set(json.loads(proc.stderr.splitlines()[-1]))


def test_help_imports_nothing_heavy() -> None:
    # Failed before: every module, SQLAlchemy, Alembic and rich were imported first (~0.4 s).
    assert imported(["--help"], clean_env()) == set()
    assert imported(["submit", "--help"], clean_env()) == set()


def test_completion_imports_nothing_heavy() -> None:
    env = clean_env(_DUBRUNNER_COMPLETE="bash_complete", COMP_WORDS="dubrunner sub", COMP_CWORD="1")
    assert imported([], env) == set()


def test_status_on_an_empty_database_imports_nothing_heavy(tmp_path: Path) -> None:
    # Failed before: SQLAlchemy was imported (~0.3 s) to find that there is no job.
    db = tmp_path / "j.db"
    Store(str(db)).close()
    assert imported(["status", "--db", str(db)], clean_env()) == set()
    # Where there are jobs, SQLAlchemy reads them (and nothing else heavy is needed).
    store = Store(str(db))
    store.load("b", manifest_of(tmp_path, 1).jobs, "m.yaml")
    store.close()
    assert imported(["status", "--db", str(db)], clean_env()) == {"sqlalchemy", "rich"}
