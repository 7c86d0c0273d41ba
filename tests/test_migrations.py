"""The schema built by the migrations is the schema the models declare."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from dubrunner.db import alembic_config, migration_head
from dubrunner.dbfile import JOBS_TABLE, SCHEMA_HEAD, VERSION_TABLE
from dubrunner.models import Base, Job
from dubrunner.store import Store


def test_exactly_one_head_and_the_code_knows_it() -> None:
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    assert heads == [SCHEMA_HEAD]


def test_the_tables_that_make_a_database_dubrunners_are_its_own(tmp_path: Path) -> None:
    # dbfile names them without importing SQLAlchemy (it decides before any connection).
    assert Job.__tablename__ == JOBS_TABLE
    store = Store(str(tmp_path / "m.db"))
    assert sorted(sa.inspect(store.engine).get_table_names()).count(VERSION_TABLE) == 1
    store.close()


def test_migrated_schema_matches_the_models(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "m.db"))
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
    assert store.current_revision() == migration_head()
    store.close()


def test_upgrade_is_idempotent(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "m.db"), migrate=False)
    assert store.current_revision() is None
    before, after = store.upgrade()
    assert before is None and after == migration_head()
    assert store.upgrade() == (after, after)
    store.close()
