"""supersede: a sent job replaced by a new one (`dubrunner supersede`, `submit --supersede`)
keeps its row for audit, linked both ways by reference_id; a job superseded is out of its
batch's counts, exports and selections; the claims' and the summary's index takes the column
in, so that counting current jobs still reads the index alone

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.add_column(sa.Column("superseded_by", sa.String(200), nullable=True))
        batch_op.add_column(sa.Column("supersedes", sa.String(200), nullable=True))
        batch_op.drop_index("ix_jobs_batch_state_id")
        batch_op.create_index(
            "ix_jobs_batch_state_superseded_by_id", ["batch", "state", "superseded_by", "id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_index("ix_jobs_batch_state_superseded_by_id")
        batch_op.create_index("ix_jobs_batch_state_id", ["batch", "state", "id"])
        batch_op.drop_column("supersedes")
        batch_op.drop_column("superseded_by")
