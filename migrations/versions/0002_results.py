"""results: remote status, output URL and the download of each job

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

COLUMNS = [
    ("remote_status", sa.String(length=40)),
    ("remote_error", sa.Text()),
    ("output_url", sa.Text()),
    ("remote_started_at", sa.String(length=40)),
    ("remote_finished_at", sa.String(length=40)),
    ("polled_at", sa.DateTime()),
    ("download_state", sa.String(length=20)),
    ("download_error", sa.Text()),
    ("local_path", sa.Text()),
    ("size_bytes", sa.BigInteger()),
    ("sha256", sa.String(length=64)),
]


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        for name, type_ in COLUMNS:
            batch_op.add_column(sa.Column(name, type_, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        for name, _ in reversed(COLUMNS):
            batch_op.drop_column(name)
