"""The schema built by the migrations is the schema the models declare."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from dubrunner.db import alembic_config, migration_head
from dubrunner.dbfile import JOBS_TABLE, SCHEMA_HEAD, VERSION_TABLE
from dubrunner.models import Base, Job
from dubrunner.store import Store
from tests.conftest import Database


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


@pytest.mark.parametrize(
    "db", ["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)], indirect=True
)
def test_0010_upgrades_a_0009_table_with_jobs_and_back(db: Database) -> None:
    """A database written before supersede keeps its jobs, none of them superseded; the
    downgrade drops the two columns again."""
    from alembic import command

    engine = sa.create_engine(db.url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), "0009")
        db.rows(
            "INSERT INTO jobs (batch, reference_id, video_url, audio_url, disable_asd, state, "
            "attempts, tries, lookup_needed, remote_missing, created_at, updated_at) VALUES "
            "('b', 'ep1', 'https://x/v.mp4', 'https://x/a.wav', ?, 'completed', 1, 1, ?, 0, "
            "?, ?)",
            False,
            False,
            datetime(2026, 1, 1),
            datetime(2026, 1, 1),
        )
        store = Store(db.url)  # migrates to the head, as every command does
        assert store.current_revision() == SCHEMA_HEAD == "0010"
        [row] = store.rows(reference_ids=["ep1"])
        assert (row.superseded_by, row.supersedes) == (None, None)
        assert store.counts("b") == {"completed": 1}
        store.close()
        with engine.begin() as conn:
            command.downgrade(alembic_config(conn), "0009")
        columns = {c["name"] for c in sa.inspect(engine).get_columns("jobs")}
        assert "superseded_by" not in columns and "supersedes" not in columns
        assert db.rows("SELECT reference_id, state FROM jobs") == [("ep1", "completed")]
    finally:
        engine.dispose()
