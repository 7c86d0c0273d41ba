"""claim indexes: (state, id) and (batch, state, id), so a claim never sorts the pending jobs

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_index("ix_jobs_batch_state")
        batch_op.create_index("ix_jobs_batch_state_id", ["batch", "state", "id"])
        batch_op.create_index("ix_jobs_state_id", ["state", "id"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_index("ix_jobs_state_id")
        batch_op.drop_index("ix_jobs_batch_state_id")
        batch_op.create_index("ix_jobs_batch_state", ["batch", "state"])
