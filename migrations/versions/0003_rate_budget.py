"""rate budget: one request rate shared by all workers on the database

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rate_budget",
        sa.Column("name", sa.String(length=300), nullable=False),
        sa.Column("tat", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_rate_budget")),
    )


def downgrade() -> None:
    op.drop_table("rate_budget")
