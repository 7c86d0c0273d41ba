"""The database under the job table: its engine (SQLite pragmas or PostgreSQL), its schema
(Alembic migrations, run from code), short transactions, and the group committer that lets
many threads share one commit. No query about jobs lives here (see store)."""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import sqlalchemy as sa
from sqlalchemy import event, insert
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from dubrunner.constants import database_url
from dubrunner.dbfile import SCHEMA_HEAD, SqliteFile, refusal
from dubrunner.models import Attempt, Base

T = TypeVar("T")
INSERT_ATTEMPT = insert(Attempt)


class StoreError(Exception):
    """The database cannot be used (unreachable, locked, not a dubrunner database...)."""


@dataclass(frozen=True, slots=True)
class Update:
    """A one-row UPDATE (plus maybe an attempt row) that the group committer may run together
    with others of the same statement in one executemany. Its result: did the row move?"""

    stmt: sa.Update
    params: dict[str, Any]
    attempt: dict[str, Any] | None


class _Redo(Exception):
    """A batched UPDATE moved fewer rows than it had: redo the batch one write at a time."""


_Write = Callable[[Connection], Any] | Update


class _GroupCommitter:
    """One writer thread per process: every write waiting in the queue goes into one transaction.

    Callers block until their write is committed, so each outcome is still durable the moment the
    caller moves on; but N threads cost one commit, and nobody sleeps on SQLite's write lock.
    """

    MAX_BATCH = 512
    LINGER = 0.002  # seconds to gather a batch: nothing next to a network round trip

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.queue: queue.SimpleQueue[tuple[_Write, Future[Any]] | None] = queue.SimpleQueue()
        # Attempt rows of the batch being committed: inserted with one executemany.
        self.attempt_rows: list[dict[str, Any]] | None = None
        self.conn: Connection | None = None
        self.fallbacks = 0  # batches redone one write at a time (a lost row, or an error)
        self.thread = threading.Thread(target=self._loop, name="db-writer", daemon=True)
        self.thread.start()

    def submit(self, write: _Write) -> Any:
        future: Future[Any] = Future()
        self.queue.put((write, future))
        return future.result()

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join(timeout=30)

    def _loop(self) -> None:
        try:
            while True:
                first = self.queue.get()
                if first is None:
                    return
                batch = [first]
                stop = False
                deadline = time.monotonic() + self.LINGER
                while len(batch) < self.MAX_BATCH:
                    try:
                        item = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
                    except queue.Empty:
                        break
                    if item is None:
                        stop = True
                        break
                    batch.append(item)
                self._commit(batch)
                if stop:
                    return
        finally:
            if self.conn is not None:
                self.conn.close()

    def _connection(self) -> Connection:
        if self.conn is None or self.conn.closed or self.conn.invalidated:
            self.conn = self.engine.connect()
        return self.conn

    def _commit(self, batch: list[tuple[_Write, Future[Any]]]) -> None:
        try:
            conn = self._connection()
            with conn.begin():
                self.attempt_rows = []
                results = self._run(conn, [w for w, _ in batch])
                if self.attempt_rows:
                    conn.execute(INSERT_ATTEMPT, self.attempt_rows)
        except OperationalError as exc:
            self.conn = None
            for _, future in batch:
                future.set_exception(StoreError(db_message(exc)))
            return
        except Exception:
            if len(batch) == 1:
                batch[0][1].set_exception(sys.exc_info()[1] or RuntimeError("write failed"))
                return
            self.fallbacks += 1
            for item in batch:  # one bad write (or a lost row) must not sink the others
                self._commit([item])
            return
        finally:
            self.attempt_rows = None
        for (_, future), result in zip(batch, results, strict=True):
            future.set_result(result)

    def _run(self, conn: Connection, writes: list[_Write]) -> list[Any]:
        results: list[Any] = [None] * len(writes)
        groups: dict[int, list[int]] = {}
        for i, write in enumerate(writes):
            if isinstance(write, Update):
                groups.setdefault(id(write.stmt), []).append(i)
                if write.attempt is not None:
                    assert self.attempt_rows is not None
                    self.attempt_rows.append(write.attempt)
            else:
                results[i] = write(conn)
        for indexes in groups.values():
            updates = [writes[i] for i in indexes]
            stmt = updates[0].stmt  # type: ignore[union-attr]
            if len(indexes) == 1:
                results[indexes[0]] = conn.execute(stmt, updates[0].params).rowcount == 1  # type: ignore[union-attr]
                continue
            moved = conn.execute(stmt, [u.params for u in updates]).rowcount  # type: ignore[union-attr]
            if moved != len(indexes) or not conn.dialect.supports_sane_multi_rowcount:
                raise _Redo
            for i in indexes:
                results[i] = True
        return results


class Database:
    """One engine and the ways to write and read through it."""

    def __init__(self, url: str | None = None, *, pool_size: int = 5, create: bool = True) -> None:
        """`create`: a database with none of dubrunner's tables (a new file, a 0-byte file, an
        empty server database) may become one; without it, it is refused and left as it is."""
        self.url = database_url(url)
        self.create = create
        try:
            parsed = sa.engine.make_url(self.url)
        except sa.exc.ArgumentError as exc:
            raise StoreError(f"not a database URL or path: {exc}") from None
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        self.file: str | None = None  # a SQLite database's file, as given
        self.shown_url = parsed.render_as_string(hide_password=True)
        # No SQL parameters in any exception text: they hold media URLs and their credentials.
        kwargs: dict[str, Any] = {
            "pool_size": pool_size,
            "max_overflow": pool_size,
            "hide_parameters": True,
        }
        if self.is_sqlite:
            database = parsed.database or ""
            if database in ("", ":memory:"):
                raise StoreError("an in-memory SQLite database cannot hold a batch; give a file")
            path = Path(database)
            self.file = str(path)
            # Looked at before any connection of ours, which would switch the file to WAL: a
            # file of another program, or one that must not become a database, is left as it was.
            problem = SqliteFile.peek(path).refusal(str(path), create=create)
            if problem is not None:
                raise StoreError(problem)
            _create_private_file(path)
            kwargs["connect_args"] = {"timeout": 60, "check_same_thread": False}
        try:
            self.engine: Engine = sa.create_engine(self.url, **kwargs)
        except (ImportError, sa.exc.ArgumentError) as exc:
            raise StoreError(f"cannot use {parsed.render_as_string()}: {exc}") from None
        if self.is_sqlite:
            _setup_sqlite(self.engine)
        self._committer: _GroupCommitter | None = None

    def start_group_commit(self) -> None:
        """From now on this process's frequent writes share commits (see _GroupCommitter)."""
        if self._committer is None:
            self._committer = _GroupCommitter(self.engine)

    @property
    def group_commit_fallbacks(self) -> int:
        """Batches the group committer had to redo one write at a time (a lost row, an error)."""
        return self._committer.fallbacks if self._committer is not None else 0

    def close(self) -> None:
        if self._committer is not None:
            self._committer.close()
            self._committer = None
        self.engine.dispose()

    def run_write(self, op: Callable[[Connection], T]) -> T:
        if self._committer is not None:
            return self._committer.submit(op)  # type: ignore[no-any-return]
        with self.write() as conn:
            return op(conn)

    def run_update(self, write: Update) -> bool:
        """A one-row UPDATE and its attempt row; batched with others under group commit."""
        if self._committer is not None:
            return bool(self._committer.submit(write))
        with self.write() as conn:
            moved = conn.execute(write.stmt, write.params).rowcount == 1
            if write.attempt is not None:
                conn.execute(INSERT_ATTEMPT, write.attempt)
            return moved

    def upsert(self, model: type[Base], key: Mapping[str, Any], values: Mapping[str, Any]) -> None:
        """Make or change the row of `key` (its primary key): an UPDATE, else an INSERT. Two
        writers may both find no row (PostgreSQL does not serialize them as SQLite's BEGIN
        IMMEDIATE does); the one whose INSERT loses updates the winner's row instead. `key` and
        `values` are by column name."""
        table = cast(sa.Table, model.__table__)
        where = [table.c[name] == value for name, value in key.items()]
        for _ in range(3):
            try:
                with self.write() as conn:
                    moved = conn.execute(sa.update(table).where(*where).values(values)).rowcount
                    if not moved:
                        conn.execute(sa.insert(table).values({**key, **values}))
                return
            except sa.exc.IntegrityError:
                continue
        raise StoreError(f"could not write a row of {table.name}: other writers kept taking it")

    # -- transactions ----------

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction (SQLite: BEGIN IMMEDIATE, so it never deadlocks on upgrade)."""
        with self._store_errors(), self.engine.begin() as conn:
            yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self._store_errors(), self.engine.connect() as conn:
            conn.execution_options(dubrunner_readonly=True)
            yield conn

    @contextmanager
    def _store_errors(self) -> Iterator[None]:
        """An error of the database as it is set up (locked, full, unreadable, a role that may
        not write) as a StoreError of one line; dubrunner's own SQL errors as they are."""
        try:
            yield
        except (OperationalError, sa.exc.ProgrammingError) as exc:
            if not _environmental(exc):
                raise
            raise StoreError(db_message(exc, self.file)) from None

    # -- schema ----------

    def current_revision(self) -> str | None:
        with self.read() as conn:
            return _revision(conn)

    def upgrade(self) -> tuple[str | None, str]:
        """Bring the schema to the newest migration; safe when several processes start at once."""
        try:
            current = self.current_revision()
        except SQLAlchemyError as exc:
            raise StoreError(db_message(exc, self.file)) from None
        if current == SCHEMA_HEAD:
            return current, current
        if current is None:  # a server's database is looked at here (a SQLite file on opening)
            with self.read() as conn:
                tables = sa.inspect(conn).get_table_names()
            problem = refusal(self.shown_url, tables, create=self.create, own_file=self.is_sqlite)
            if problem is not None:
                raise StoreError(problem)
        if current is not None and current not in known_revisions():
            raise StoreError(
                f"this database was written by a newer dubrunner (revision {current}); "
                "upgrade dubrunner"
            )
        head = migration_head()
        from alembic import command

        try:
            with self.write() as conn:
                if not self.is_sqlite and conn.dialect.name == "postgresql":
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(4242001)"))
                # Another process may have migrated while we waited for the lock.
                if _revision(conn) != head:
                    command.upgrade(alembic_config(conn), "head")
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot migrate the database: {db_message(exc, self.file)}") from None
        return current, head


_MARKERS = {"qmark": "?", "format": "%s", "pyformat": "%s"}  # a positional parameter's


def insert_many(
    conn: Connection,
    table: sa.Table,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    constants: Mapping[str, Any],
) -> None:
    """INSERT many rows through the driver's own executemany: `rows` hold the values of
    `columns` (by key), `constants` the values every row shares. Each value goes through its
    column type's bind processor and unnamed columns take their scalar defaults, as with
    SQLAlchemy's executemany, whose per-row parameter handling made a load of 100,000 jobs
    take twice as long as SQLite's own inserting (bench.py's load rows)."""
    dialect = conn.dialect
    named = {*columns, *constants}
    defaults = {
        column.key: column.default.arg
        for column in table.columns
        if column.key not in named
        and isinstance(column.default, sa.ColumnDefault)
        and column.default.is_scalar
    }
    shared = {**constants, **defaults}
    keys = [*columns, *shared]
    marker = _MARKERS.get(dialect.paramstyle)
    if marker is None:  # a driver of another parameter style: SQLAlchemy's own executemany
        named_rows = [dict(zip(keys, (*row, *shared.values()), strict=True)) for row in rows]
        conn.execute(sa.insert(table), named_rows)
        return
    preparer = dialect.identifier_preparer
    sql = (
        f"INSERT INTO {preparer.format_table(table)} "
        f"({', '.join(preparer.format_column(table.c[key]) for key in keys)}) "
        f"VALUES ({', '.join([marker] * len(keys))})"
    )

    def processor(key: str) -> Callable[[Any], Any] | None:
        return table.c[key].type.dialect_impl(dialect).bind_processor(dialect)

    tail = tuple(
        value if (process := processor(key)) is None else process(value)
        for key, value in shared.items()
    )
    each = [(i, process) for i, key in enumerate(columns) if (process := processor(key))]

    def params(row: Sequence[Any]) -> tuple[Any, ...]:
        if each:
            row = list(row)
            for i, process in each:
                row[i] = process(row[i])
        return (*row, *tail)

    conn.exec_driver_sql(sql, [params(row) for row in rows])


def _migrations_dir() -> Path:
    here = Path(__file__).resolve().parent
    packaged = here / "_migrations"  # a wheel install (see pyproject's force-include)
    return packaged if packaged.is_dir() else here.parent / "migrations"


def alembic_config(connection: Connection | None = None) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(_migrations_dir()))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def migration_head() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def known_revisions() -> set[str]:
    from alembic.script import ScriptDirectory

    return {rev.revision for rev in ScriptDirectory.from_config(alembic_config()).walk_revisions()}


def _revision(conn: Connection) -> str | None:
    if not sa.inspect(conn).has_table("alembic_version"):
        return None
    return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one_or_none()


def _create_private_file(path: Path) -> None:
    """Create the SQLite file readable by its owner only (it names every media URL)."""
    if path.exists():
        return
    if not path.parent.is_dir():
        raise StoreError(f"cannot create the database {path}: no such directory {path.parent}")
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.close(fd)
    except FileExistsError:
        pass
    except OSError as exc:
        raise StoreError(f"cannot create the database {path}: {exc.strerror}") from None


def _setup_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # We issue BEGIN ourselves (below), so pysqlite must not.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
        cur.execute("PRAGMA busy_timeout=60000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        readonly = conn.get_execution_options().get("dubrunner_readonly")
        conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")


def _environmental(exc: SQLAlchemyError) -> bool:
    """An error of the database as it is set up, for the user to mend (locked, full, a role that
    may not write: PostgreSQL's insufficient_privilege), not of dubrunner's SQL."""
    if isinstance(exc, OperationalError):
        return True
    return getattr(getattr(exc, "orig", None), "sqlstate", None) == "42501"


def db_message(exc: SQLAlchemyError, file: str | None = None) -> str:
    """One line for a database error; `file`: the SQLite file, named where the error is its."""
    orig = getattr(exc, "orig", None)
    # The first line only: the driver's details below it may quote the values of a row.
    text = (str(orig) if orig is not None else str(exc)).partition("\n")[0]
    if "file is not a database" in text:
        return f"{file or 'the file'} is not a SQLite database (or is damaged)"
    if "unable to open database file" in text:
        return "cannot open the database file" + (f" {file}" if file else "")
    return f"database error: {text}"
