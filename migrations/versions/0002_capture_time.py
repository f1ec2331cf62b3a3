"""capture time and folder per job, for grouping bursts

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("session_folder", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("captured_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("capture_source", sa.String(length=8), nullable=True))
        batch_op.create_index("ix_jobs_session", ["session_folder", "captured_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_session")
        batch_op.drop_column("capture_source")
        batch_op.drop_column("captured_at")
        batch_op.drop_column("session_folder")
