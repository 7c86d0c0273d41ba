"""Shared fixtures: a real emulator on 127.0.0.1, a real SQLite file, the CLI as a subprocess."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from dubrunner.api import ApiClient, Credentials
from dubrunner.emulator import Emulator, EmulatorConfig
from dubrunner.manifest import Manifest
from dubrunner.manifest import load as load_manifest
from dubrunner.preflight import MediaProblem
from dubrunner.sessions import Ending
from dubrunner.store import Store
from dubrunner.worker import WorkerOptions

TOKEN = "test-token-0123456789abcdef"

# -- test tiers ---------------------------------------------------------------------------------
# `make unit` runs `pytest -m "not slow"`. A test is `slow` when it starts dubrunner as a process,
# kills processes, needs PostgreSQL or takes over about a second. Modules mark themselves
# (`pytestmark`) or their tests.

# Whether the running test is of the slow tier; None outside a test (the benchmark uses helpers).
_running_slow: bool | None = None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(
    item: pytest.Item, nextitem: pytest.Item | None
) -> Generator[None, object, object]:
    global _running_slow
    _running_slow = item.get_closest_marker("slow") is not None
    try:
        return (yield)
    finally:
        _running_slow = None


def require_slow_tier(what: str) -> None:
    """Fail a fast-tier test that does what only the slow tier may: an unmarked subprocess
    test would quietly make `make unit` slow again."""
    if _running_slow is False:
        pytest.fail(f"{what}: a test doing this belongs to the slow tier (@pytest.mark.slow)")


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    emu = Emulator(EmulatorConfig(tokens=(TOKEN,), seed=1234)).start()
    try:
        yield emu
    finally:
        emu.stop()


PG_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"
BOTH_DATABASES = pytest.mark.parametrize("db", ["sqlite", "postgresql"], indirect=True)


@dataclass
class Database:
    """The job table's database for one test: a SQLite file, or a throwaway PostgreSQL one."""

    url: str
    kind: str
    path: Path | None = None

    def rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Run SQL written with ? placeholders; the rows as tuples."""
        if self.path is not None:
            conn = sqlite3.connect(self.path)
            try:
                rows = conn.execute(sql, params).fetchall()
                conn.commit()
                return rows
            finally:
                conn.close()
        parts = sql.split("?")
        named = parts[0] + "".join(f":p{i}{part}" for i, part in enumerate(parts[1:]))
        engine = sa.create_engine(self.url, poolclass=sa.pool.NullPool)
        try:
            with engine.begin() as sa_conn:
                result = sa_conn.execute(sa.text(named), {f"p{i}": p for i, p in enumerate(params)})
                return [tuple(r) for r in result] if result.returns_rows else []
        finally:
            engine.dispose()


def _postgres_error() -> str | None:
    try:
        engine = sa.create_engine(f"{PG_SERVER}/postgres", connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        engine.dispose()
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    return None


@pytest.fixture
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    kind = getattr(request, "param", "sqlite")
    if kind == "sqlite":
        path = tmp_path / "jobs.db"
        yield Database(f"sqlite:///{path}", "sqlite", path)
        return
    require_slow_tier("needs PostgreSQL")
    problem = _postgres_error()
    if problem:
        reason = f"no PostgreSQL server on 127.0.0.1:5432 ({problem})"
        if os.environ.get("DUBRUNNER_REQUIRE_POSTGRES") == "1":
            pytest.fail(reason + "; DUBRUNNER_REQUIRE_POSTGRES=1 makes that a failure")
        pytest.skip(reason)
    name = f"dubrunner_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(f"{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield Database(f"{PG_SERVER}/{name}", "postgresql")
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture
def db_path(db: Database) -> Path:
    assert db.path is not None, "this test reads the SQLite file itself"
    return db.path


def clean_env(**overrides: str) -> dict[str, str]:
    """This process's environment without any DUBRUNNER_ or CHAMELAION_ variable, then
    `overrides`: a developer's own settings (a real API key, another database) must never reach
    a dubrunner started by a test."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DUBRUNNER_", "CHAMELAION_"))}
    env.update(overrides)
    return env


@pytest.fixture
def env(emulator: Emulator, db: Database) -> dict[str, str]:
    """The environment of a user pointed at the emulator, with fast retry backoff."""
    return clean_env(
        CHAMELAION_BASE_URL=emulator.base_url,
        CHAMELAION_API_KEY=TOKEN,
        DUBRUNNER_DB=db.url,
        DUBRUNNER_RETRY_WAIT="0.02",
        DUBRUNNER_LOOKUP_GRACE="0.3",
    )


@dataclass
class Result:
    code: int
    out: str
    err: str


def run_cli(
    args: list[str], env: dict[str, str], timeout: float = 120, cwd: Path | None = None
) -> Result:
    """Run `python -m dubrunner ARGS` as a real process."""
    require_slow_tier("starts dubrunner as a process")
    proc = subprocess.run(
        [sys.executable, "-m", "dubrunner", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def start(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    """Start `python -m dubrunner ARGS` as a real process, without waiting for it."""
    require_slow_tier("starts dubrunner as a process")
    return subprocess.Popen(
        [sys.executable, "-m", "dubrunner", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def dead_owner() -> str:
    """An owner name for a process of this host that surely no longer exists."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return f"{socket.gethostname()}:{proc.pid}:deadbeef"


def write_manifest(
    path: Path, n: int, batch: str = "b", prefix: str = "ep", failing: frozenset[int] = frozenset()
) -> Path:
    """n jobs; those whose index is in `failing` carry the emulator's remote-failure marker."""
    lines = [f"batch: {batch}", "jobs:"]
    for i in range(n):
        marker = "FAIL-" if i in failing else ""
        lines += [
            f"  - reference_id: {batch}-{prefix}{i:05d}",
            f"    video: https://cdn.example.com/{batch}/{marker}{prefix}{i}.mp4",
            f"    audio: https://cdn.example.com/{batch}/{prefix}{i}-ja.wav",
        ]
    path.write_text("\n".join(lines) + "\n")
    return path


def load_jobs(db: Database, manifest: Path) -> Store:
    """Load a manifest straight into the job table; the open store, for more set-up."""
    m = load_manifest(manifest)
    store = Store(db.url)
    store.load(m.batch, m.jobs, str(manifest))
    return store


def db_rows(db: Database | Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    if isinstance(db, Path):
        db = Database(f"sqlite:///{db}", "sqlite", db)
    return db.rows(sql, *params)


def states(db: Database | Path) -> dict[str, int]:
    return dict(db_rows(db, "SELECT state, count(*) FROM jobs GROUP BY state"))


def assert_exactly_once(emulator: Emulator, db: Database | Path, n: int) -> None:
    """Every job submitted, one accepted request each, and the table holds that request_id."""
    ledger = emulator.accepted()
    assert emulator.duplicates() == {}
    rows = db_rows(db, "SELECT reference_id, state, request_id FROM jobs")
    assert len(rows) == n
    for ref, state, request_id in rows:
        assert state == "submitted", (ref, state)
        assert ledger.get(ref) == [request_id], ref
    assert len(ledger) == n


# -- the library's sessions without a terminal or a subprocess ----------

OPTIONS = WorkerOptions(concurrency=2, backoff_base=0.02, lookup_grace=0.3)


@pytest.fixture
def store(db: Database) -> Iterator[Store]:
    store = Store(db.url)
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
def api(emulator: Emulator) -> Iterator[ApiClient]:
    api = ApiClient(Credentials(TOKEN, None), emulator.base_url)
    try:
        yield api
    finally:
        api.close()


class FakeUi:
    """Records every line, ending and progress it is given; asks for a stop as soon as the
    progress labelled `stop_at` starts, as a Ctrl-C at that moment would."""

    def __init__(self, stop_at: str | None = None) -> None:
        self.stop_at = stop_at
        self.said: list[str] = []
        self.told: list[Ending] = []
        self.shown: list[tuple[str, int | None]] = []
        self.updates: list[tuple[int, str]] = []
        self.problems: list[MediaProblem] = []

    @contextmanager
    def progress(self, label: str, total: int | None, stop: Callable[[], None]) -> Iterator[FakeUi]:
        self.shown.append((label, total))
        if label == self.stop_at:
            stop()
        yield self

    def update(self, completed: int, detail: str, left: int | None = None) -> None:
        self.updates.append((completed, detail))

    def say(self, line: str) -> None:
        self.said.append(line)

    def tell(self, ending: Ending) -> None:
        self.told.append(ending)

    def media_problems(self, problems: Sequence[MediaProblem]) -> None:
        self.problems.extend(problems)

    @property
    def labels(self) -> list[str]:
        return [label for label, _total in self.shown]


def manifest_of(tmp_path: Path, n: int, failing: frozenset[int] = frozenset()) -> Manifest:
    return load_manifest(write_manifest(tmp_path / "m.yaml", n, failing=failing))


def media_manifest(path: Path, emulator: Emulator) -> Path:
    media = emulator.root_url + "media/"
    jobs = {
        "good": (f"{media}video/e1.mp4", f"{media}audio/e1.wav?sig=s3cr3t"),
        "nohead": (f"{media}nohead/e2.mp4", f"{media}audio/e2.wav"),
        "missing-video": (f"{media}missing/e3.mp4", f"{media}audio/e3.wav"),
        "html-audio": (f"{media}video/e4.mp4", f"{media}html/e4.wav"),
        "unreachable": (f"{media}video/e5.mp4", "http://127.0.0.1:9/e5.wav"),
    }
    lines = ["batch: media", "jobs:"]
    for ref, (video, audio) in jobs.items():
        lines += [f"  - reference_id: {ref}", f"    video: '{video}'", f"    audio: '{audio}'"]
    path.write_text("\n".join(lines) + "\n")
    return path


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound for a moment, then let go)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
