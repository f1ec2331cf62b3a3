"""The ledger's tables. Alembic migrations in ``migrations/`` must produce exactly this schema
(``tests/unit/test_migrations.py`` compares them)."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out, on every backend.

    SQLite has no time zones and hands back naive values; storing UTC and re-attaching the
    zone on the way out keeps comparisons in SQL and in Python consistent.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the ledger; use datetime.now(UTC)")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_name)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    #: Parked until a condition clears (e.g. its burst is still growing); not yet runnable.
    WAITING = "waiting"
    DONE = "done"
    SKIPPED = "skipped"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL_STATES = (JobState.DONE, JobState.SKIPPED, JobState.FAILED, JobState.CANCELLED)


class StageStatus(StrEnum):
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    #: Stopped on purpose, not a failure: waiting for its burst, or the daemon was stopping.
    DEFERRED = "deferred"
    INTERRUPTED = "interrupted"


jobs = Table(
    "jobs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("sha256", String(64), nullable=False),
    Column("pipeline_version", String(32), nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    # Where the photo was found: the watched folder and the path below it (kept in the output).
    Column("source_path", Text, nullable=False),
    Column("watch_root", Text, nullable=False),
    Column("relative_path", Text, nullable=False),
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_run_at", UTCDateTime(), nullable=False),
    Column("lease_owner", String(128)),
    Column("lease_expires_at", UTCDateTime()),
    Column("heartbeat_at", UTCDateTime()),
    Column("current_stage", String(32)),
    Column("error_kind", String(64)),
    Column("error_message", Text),
    # Summary of what was done: fixed, unchanged, needs_review, no_donor, ...
    Column("outcome", String(32)),
    Column("output_path", Text),
    Column("work_dir", Text),
    # Burst grouping: the folder the photo sits in and when it was taken (EXIF, else file
    # time). Recorded by ingest; NULL until then.
    Column("session_folder", Text),
    Column("captured_at", UTCDateTime()),
    # "exif" or "file": times from different clocks are never chained into one burst.
    Column("capture_source", String(8)),
    # GPU stage grouping (``gpu.group_jobs``): a queued job whose next stage waits for its
    # model to be loaded names that stage, and keeps the time it first waited (grouping never
    # holds it back longer than ``gpu.group_max_wait_s`` in all). NULL for every other job.
    Column("next_stage", String(32)),
    Column("parked_at", UTCDateTime()),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("started_at", UTCDateTime()),
    Column("finished_at", UTCDateTime()),
    UniqueConstraint("sha256", "pipeline_version", name="uq_jobs_content"),
    Index("ix_jobs_claim", "state", "next_run_at"),
    Index("ix_jobs_finished_at", "finished_at"),
    Index("ix_jobs_session", "session_folder", "captured_at"),
    # The claim that prefers jobs parked before a given stage, and the count of parked jobs.
    # Partial: only parked jobs are in it, so jobs that never wait (the whole CPU profile)
    # cost it nothing on their claims and endings.
    Index(
        "ix_jobs_parked", "state", "next_stage", "next_run_at",
        sqlite_where=text("next_stage IS NOT NULL"),
        postgresql_where=text("next_stage IS NOT NULL"),
    ),
)

#: Every path a photo was seen at. Lets the watcher skip unchanged files on a rescan without
#: hashing them again, and lets ``jobs show`` list the duplicates of a job.
source_files = Table(
    "source_files",
    metadata,
    Column("path", Text, primary_key=True),
    Column("size_bytes", BigInteger, nullable=False),
    Column("mtime_ns", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("job_id", Integer, ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("first_seen_at", UTCDateTime(), nullable=False),
    Index("ix_source_files_job_id", "job_id"),
)

stage_runs = Table(
    "stage_runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", Integer, ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("stage", String(32), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("input_hash", String(64), nullable=False),
    Column("artifact_path", Text),
    Column("started_at", UTCDateTime(), nullable=False),
    Column("finished_at", UTCDateTime()),
    Column("duration_s", Float),
    Column("error_kind", String(64)),
    Column("error_message", Text),
    Index("ix_stage_runs_job_id", "job_id"),
)

workers = Table(
    "workers",
    metadata,
    Column("id", String(128), primary_key=True),
    Column("hostname", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("started_at", UTCDateTime(), nullable=False),
    Column("heartbeat_at", UTCDateTime(), nullable=False),
    Column("current_job_id", Integer),
    Column("paused_until", UTCDateTime()),
    Column("pause_reason", Text),
    Column("backends", Text),
)
