"""Which databases dubrunner may open, decided before SQLAlchemy touches one; standard library only.

A SQLite file is looked at with `sqlite3` alone: SQLAlchemy's first connection switches the file
to WAL (a write, even to a 0-byte file), and importing it costs ~0.3 s. So a file of another
program, or one a command that only reads must not turn into a database, is refused untouched;
and `status` can say that a database holds no job yet without importing SQLAlchemy at all (see
`SqliteFile.no_jobs_yet`). A server's database gets the same verdict from its table names (db.py).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

# The newest migration. Checked against Alembic by a test; it lets an up-to-date database skip
# loading Alembic and its scripts on every start.
SCHEMA_HEAD = "0010"
JOBS_TABLE = "jobs"
SQLITE_HEADER = b"SQLite format 3\x00"  # the first bytes of every SQLite database file
VERSION_TABLE = "alembic_version"  # every dubrunner database has one: its tables come from it


def is_dubrunner(tables: Collection[str]) -> bool:
    return JOBS_TABLE in tables and VERSION_TABLE in tables


def refusal(where: str, tables: Collection[str], *, create: bool, own_file: bool) -> str | None:
    """Why dubrunner must not use the database at `where`, holding `tables`; None: it may.

    `create`: a database with none of dubrunner's tables may become one (a command that loads
    jobs); otherwise it is refused as it is. `own_file`: a SQLite file, dubrunner's alone, so any
    table in it that is not dubrunner's makes it another program's (a server's database may be
    shared: only a `jobs` table not made by dubrunner's migrations is in the way)."""
    if is_dubrunner(tables):
        return None
    if JOBS_TABLE in tables or (own_file and tables):
        names = sorted(tables)
        listed = ", ".join(names[:3]) + (", …" if len(names) > 3 else "")
        return f"{where} is not a dubrunner database (its tables: {listed}); give another --db"
    if create:
        return None
    return f"{where} holds no dubrunner database yet — load a manifest first"


@dataclass(frozen=True)
class SqliteFile:
    """What a SQLite file holds, as read by `peek`."""

    exists: bool
    tables: tuple[str, ...] | None = None  # None: not a SQLite database, or unreadable
    revision: str | None = None  # of a dubrunner database
    has_jobs: bool = True  # of a dubrunner database (True when unknown)
    unusable: str | None = None  # what the path is instead of a SQLite database

    @classmethod
    def peek(cls, path: Path) -> SqliteFile:
        """Read without changing anything. (A read-write connection, as dubrunner's own are: a
        read-only one would leave a WAL database's -wal and -shm files behind.)"""
        if not path.exists():
            return cls(exists=False)
        if path.is_dir():
            return cls(exists=True, unusable="is a directory, not a database file")
        if not path.is_file():  # a FIFO (opening it would wait for a writer), a device
            return cls(exists=True, unusable="is not a regular file")
        try:
            with path.open("rb") as file:
                head = file.read(len(SQLITE_HEADER))
        except OSError:
            return cls(exists=True)  # unreadable: said on first use
        # A few bytes of text SQLite would take for an empty database, and overwrite.
        if head and head != SQLITE_HEADER:
            return cls(exists=True, unusable="is not a SQLite database")
        try:
            conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=rw", uri=True, timeout=60)
        except sqlite3.Error:
            return cls(exists=True)
        try:
            tables = tuple(
                name
                for (name,) in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table' "
                    "AND name NOT LIKE 'sqlite%' ORDER BY name"
                )
            )
            if not is_dubrunner(tables):
                return cls(exists=True, tables=tables)
            revision = conn.execute(f"SELECT max(version_num) FROM {VERSION_TABLE}").fetchone()[0]
            has_jobs = conn.execute(f"SELECT EXISTS (SELECT 1 FROM {JOBS_TABLE})").fetchone()[0]
            return cls(True, tables, revision, bool(has_jobs))
        except sqlite3.Error:
            return cls(exists=True)  # not a database at all, or unreadable: said on first use
        finally:
            conn.close()

    def refusal(self, where: str, *, create: bool) -> str | None:
        """As `refusal` above; a file that is not there is created only by a command that loads
        jobs. A file SQLite cannot read is left to the first connection to say why."""
        if not self.exists:
            return None if create else f"no database at {where} — load a manifest first"
        if self.unusable:
            return f"{where} {self.unusable}; give another --db"
        if self.tables is None:
            return None
        return refusal(where, self.tables, create=create, own_file=True)

    @property
    def no_jobs_yet(self) -> bool:
        """A dubrunner database of the current schema that holds no job: all `status` says of it
        is that (its other queries would find nothing), so it says it without SQLAlchemy."""
        return self.revision == SCHEMA_HEAD and not self.has_jobs
