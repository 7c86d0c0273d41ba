"""api_health: how the API looks to the workers, for `status`

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_health",
        sa.Column("base_url", sa.String(300), nullable=False),
        sa.Column("condition", sa.String(20), nullable=False),
        sa.Column("since", sa.Float(), nullable=True),
        sa.Column("last_success", sa.Float(), nullable=True),
        sa.Column("retry_every", sa.Float(), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("worker", sa.String(200), nullable=True),
        sa.PrimaryKeyConstraint("base_url", name=op.f("pk_api_health")),
    )


def downgrade() -> None:
    op.drop_table("api_health")
