"""remote_missing and remote_done_at: how many poll rounds the API answered "not found" for a
request we hold an id for, and since when it says a request finished without an output_url; both
bound how long such a job is polled before it ends; and local_mtime_ns, the modification time of
a downloaded file when it was recorded, so that a later fetch re-hashes only files changed since

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.add_column(
            sa.Column("remote_missing", sa.Integer, nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("remote_done_at", sa.Float, nullable=True))
        batch_op.add_column(sa.Column("local_mtime_ns", sa.BigInteger, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_column("local_mtime_ns")
        batch_op.drop_column("remote_done_at")
        batch_op.drop_column("remote_missing")
