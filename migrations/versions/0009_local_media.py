"""local media: the size and SHA-256 of a job's uploaded files, and a cache of files' digests
by path, size and mtime

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.add_column(sa.Column("video_size", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("video_sha256", sa.String(64), nullable=True))
        batch_op.add_column(sa.Column("audio_size", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("audio_sha256", sa.String(64), nullable=True))
    op.create_table(
        "file_digests",
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("mtime_ns", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("hashed_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("path", name=op.f("pk_file_digests")),
    )


def downgrade() -> None:
    op.drop_table("file_digests")
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_column("audio_sha256")
        batch_op.drop_column("audio_size")
        batch_op.drop_column("video_sha256")
        batch_op.drop_column("video_size")
