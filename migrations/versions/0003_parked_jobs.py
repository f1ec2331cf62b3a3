"""next stage and first wait of jobs parked for GPU stage grouping

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("next_stage", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("parked_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(
            "ix_jobs_parked", ["state", "next_stage", "next_run_at"], unique=False,
            sqlite_where=sa.text("next_stage IS NOT NULL"),
            postgresql_where=sa.text("next_stage IS NOT NULL"),
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_parked")
        batch_op.drop_column("parked_at")
        batch_op.drop_column("next_stage")
