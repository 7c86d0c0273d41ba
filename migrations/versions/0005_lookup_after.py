"""lookup_after (a look-up's grace after an ambiguous answer), tries kept across claims, request
ids of any shape up to 200 characters

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.add_column(sa.Column("lookup_after", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("tries", sa.Integer(), nullable=False, server_default="0"))
        batch_op.alter_column(
            "request_id", existing_type=sa.String(64), type_=sa.String(200), existing_nullable=True
        )
    with op.batch_alter_table("attempts") as batch_op:
        batch_op.alter_column(
            "request_id", existing_type=sa.String(64), type_=sa.String(200), existing_nullable=True
        )


def downgrade() -> None:
    with op.batch_alter_table("attempts") as batch_op:
        batch_op.alter_column("request_id", existing_type=sa.String(200), type_=sa.String(64))
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.alter_column("request_id", existing_type=sa.String(200), type_=sa.String(64))
        batch_op.drop_column("tries")
        batch_op.drop_column("lookup_after")
