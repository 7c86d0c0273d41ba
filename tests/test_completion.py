"""Shell completion of batch names and reference_ids, from the database named by --db (before or
after the command) or DUBRUNNER_DB; never creating or changing one."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.shell_completion import ShellComplete

from dubrunner.cli import cli
from dubrunner.records import JobSpec
from dubrunner.store import Store


def specs(n: int, prefix: str) -> list[JobSpec]:
    return [
        JobSpec(f"{prefix}{i}", f"https://v/{prefix}{i}", "https://a/", False, 2) for i in range(n)
    ]


@pytest.fixture
def db(tmp_path: Path) -> str:
    store = Store(str(tmp_path / "j.db"))
    store.load("season1-ja", specs(3, "s1-ep"), "a.yaml")
    store.load("season2-ja", specs(2, "s2-ep"), "b.yaml")
    store.load("other", specs(1, "s1_ep"), "c.yaml")  # `_` is no LIKE wildcard here
    store.close()
    return str(tmp_path / "j.db")


def complete(args: list[str], incomplete: str) -> list[str]:
    completion = ShellComplete(cli, {}, "dubrunner", "_DUBRUNNER_COMPLETE")
    return [item.value for item in completion.get_completions(args, incomplete)]


def test_batch_names_complete_from_the_database(db: str) -> None:
    assert complete(["status", "--db", db, "--batch"], "season") == ["season1-ja", "season2-ja"]
    assert complete(["--db", db, "export", "--batch"], "season2") == ["season2-ja"]
    assert complete(["resume", "--batch"], "") == []  # ./dubrunner.db is not there


def test_reference_ids_complete_from_the_database(db: str) -> None:
    assert complete(["status", "--db", db], "s1-") == ["s1-ep0", "s1-ep1", "s1-ep2"]
    assert complete(["cancel", "--db", db, "--ref"], "s1_") == ["s1_ep0"]
    assert complete(["status", "--db", db], "S1-") == []  # reference_ids are case-sensitive


def test_the_database_comes_from_the_environment_too(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DUBRUNNER_DB", db)
    assert complete(["poll", "--batch"], "o") == ["other"]


def test_completion_never_creates_a_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert complete(["status", "--batch"], "") == []
    assert complete(["status", "--db", "new.db"], "") == []
    assert complete(["status", "--db", str(tmp_path / "junk.txt")], "") == []
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "junk.txt").write_text("not a database")
    assert complete(["status", "--db", str(tmp_path / "junk.txt")], "") == []
