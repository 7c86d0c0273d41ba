"""media_key: a digest of a job's video, audio and settings, indexed, so that loading can tell
when the same media were already loaded under another reference_id

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import hashlib

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def _media_key(video: str, audio: str, asd: bool) -> str:
    # The same digest as dubrunner.records.media_key, written out: a migration must not change
    # when the code does.
    text = f"{video}\0{audio}\0{1 if asd else 0}"
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.add_column(sa.Column("media_key", sa.String(32), nullable=True))
        batch_op.create_index("ix_jobs_media_key", ["media_key"])
    conn = op.get_bind()
    jobs = sa.table(
        "jobs",
        sa.column("id", sa.Integer),
        sa.column("video_url", sa.Text),
        sa.column("audio_url", sa.Text),
        sa.column("disable_asd", sa.Boolean),
        sa.column("media_key", sa.String),
    )
    after = 0
    while True:
        rows = conn.execute(
            sa.select(jobs.c.id, jobs.c.video_url, jobs.c.audio_url, jobs.c.disable_asd)
            .where(jobs.c.id > after)
            .order_by(jobs.c.id)
            .limit(5000)
        ).all()
        if not rows:
            break
        after = rows[-1][0]
        conn.execute(
            jobs.update().where(jobs.c.id == sa.bindparam("job_id")),
            [{"job_id": r[0], "media_key": _media_key(r[1], r[2], bool(r[3]))} for r in rows],
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_index("ix_jobs_media_key")
        batch_op.drop_column("media_key")
