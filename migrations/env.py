"""Alembic environment. dubrunner passes its own open connection (config.attributes['connection']);
the `alembic` command line passes a URL with `-x db=...` or uses DUBRUNNER_DB."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine

from dubrunner.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(
            connection=connection, target_metadata=target_metadata, render_as_batch=True
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    url = context.get_x_argument(as_dictionary=True).get("db") or os.environ.get(
        "DUBRUNNER_DB", "sqlite:///./dubrunner.db"
    )
    engine = create_engine(url)
    with engine.connect() as conn:
        context.configure(connection=conn, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("dubrunner migrations run online only")
run_migrations_online()
