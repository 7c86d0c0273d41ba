"""The schema built by the migrations is the schema the models declare."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from dubrunner.db import SCHEMA_HEAD, alembic_config, migration_head
from dubrunner.models import Base
from dubrunner.store import Store


def test_exactly_one_head_and_the_code_knows_it() -> None:
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    assert heads == [SCHEMA_HEAD]


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
