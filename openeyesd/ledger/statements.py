"""The ledger's hot-path statements, built once per ``Ledger`` and executed with parameters.

SQLAlchemy memoises a statement object's cache key and compiled form, so a statement built
once and executed with a parameter dict costs a dictionary lookup per call; one rebuilt per
call (``update(jobs).where(...).values(...)``) spends most of the operation coercing
arguments and generating its cache key (``bench/README.md`` has the profile).

Bound parameters are named ``b_*``: SQLAlchemy reserves column names for the parameters it
makes itself in an INSERT's VALUES and an UPDATE's SET. Datetime parameters carry the column
type so ``UTCDateTime`` still converts them.

The dialect is chosen here, once, from the engine: the upserts need ``sqlite.insert`` or
``postgresql.insert``, and only PostgreSQL's claim takes ``FOR UPDATE SKIP LOCKED`` (SQLite
has no row locks; ``BEGIN IMMEDIATE`` already serialises its writers).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Executable,
    Text,
    and_,
    bindparam,
    case,
    cast,
    func,
    insert,
    or_,
    select,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from openeyesd.ledger.schema import JobState, StageStatus, jobs, source_files, stage_runs

RUNNABLE_STATES = (JobState.QUEUED, JobState.WAITING)

#: Every requeue for another reason, and every final ending, ends a job's wait for a model
#: (``values(**NOT_PARKED)``; read-only, shared by every statement that sets it).
NOT_PARKED: Mapping[str, None] = MappingProxyType({"next_stage": None, "parked_at": None})

_DIALECT_INSERTS: dict[str, Callable[..., Any]] = {
    "sqlite": sqlite_insert,
    "postgresql": postgresql_insert,
}

_TIME = jobs.c.updated_at.type


def _now() -> Any:
    return bindparam("b_now", type_=_TIME)


def _runnable() -> ColumnElement[bool]:
    # Spelled with OR, not IN: SQLAlchemy renders IN (...) lists at every execution
    # ("post-compile"), which would rebuild the claim's SQL string per call.
    return or_(*(jobs.c.state == state for state in RUNNABLE_STATES))


def _owned() -> ColumnElement[bool]:
    """The job is still leased to the worker acting on it (``b_job_id``, ``b_owner``)."""
    return and_(
        jobs.c.id == bindparam("b_job_id"),
        jobs.c.lease_owner == bindparam("b_owner"),
        jobs.c.state == JobState.RUNNING,
    )


@dataclass(frozen=True)
class Statements:
    known_source: Executable
    known_sources: Executable
    insert_job: Executable
    find_job: Executable
    reset_job: Executable
    upsert_source: Executable
    claim: Executable
    claim_parked: Executable
    heartbeat: Executable
    start_stage_job: Executable
    start_stage_run: Executable
    finish_stage_done: Executable
    finish_stage_failed: Executable
    end: Executable
    retry_later_counted: Executable
    retry_later_refunded: Executable
    park: Executable


def build_statements(dialect: str, *, by_version: bool) -> Statements:
    """``by_version``: whether "known source" means known to one pipeline version."""
    if dialect not in _DIALECT_INSERTS:
        raise ValueError(f"the ledger supports SQLite and PostgreSQL, not {dialect!r}")
    dialect_insert = _DIALECT_INSERTS[dialect]
    return Statements(
        known_source=_known_source(by_version),
        known_sources=_known_sources(by_version),
        insert_job=_insert_job(dialect_insert),
        find_job=select(jobs.c.id, jobs.c.state).where(
            jobs.c.sha256 == bindparam("b_sha256"),
            jobs.c.pipeline_version == bindparam("b_version"),
        ),
        reset_job=_reset_job(),
        upsert_source=_upsert_source(dialect_insert),
        claim=_claim(skip_locked=dialect == "postgresql"),
        claim_parked=_claim(skip_locked=dialect == "postgresql", parked_before_stage=True),
        heartbeat=update(jobs)
        .where(_owned())
        .values(
            heartbeat_at=_now(),
            lease_expires_at=bindparam("b_expires", type_=_TIME),
            updated_at=_now(),
        ),
        # One statement checks the lease, marks the stage and reads the attempt number.
        start_stage_job=update(jobs)
        .where(_owned())
        .values(current_stage=bindparam("b_stage"), updated_at=_now())
        .returning(jobs.c.attempts),
        start_stage_run=insert(stage_runs).returning(stage_runs.c.id),
        finish_stage_done=_finish_stage(failed=False),
        finish_stage_failed=_finish_stage(failed=True),
        end=_end(),
        retry_later_counted=_retry_later(refund_attempt=False),
        retry_later_refunded=_retry_later(refund_attempt=True),
        park=_park(),
    )


def _known_source(by_version: bool) -> Executable:
    query = select(source_files.c.path).where(
        source_files.c.path == bindparam("b_path"),
        source_files.c.size_bytes == bindparam("b_size"),
        source_files.c.mtime_ns == bindparam("b_mtime"),
    )
    return _for_version(query) if by_version else query


def _known_sources(by_version: bool) -> Executable:
    # An expanding IN: compiled once, the list is rendered per call (chunked by the caller).
    query = select(source_files.c.path, source_files.c.size_bytes, source_files.c.mtime_ns).where(
        source_files.c.path.in_(bindparam("b_paths", expanding=True))
    )
    return _for_version(query) if by_version else query


def _for_version(query: Any) -> Any:
    return query.join(jobs, jobs.c.id == source_files.c.job_id).where(
        jobs.c.pipeline_version == bindparam("b_version")
    )


def _insert_job(dialect_insert: Callable[..., Any]) -> Executable:
    # ON CONFLICT DO NOTHING instead of a SAVEPOINT around a plain INSERT: on PostgreSQL a
    # concurrent enqueuer of the same content makes this wait for it and then insert nothing
    # (no row returned, no aborted transaction); on SQLite BEGIN IMMEDIATE excludes it anyway.
    return (
        dialect_insert(jobs)
        .on_conflict_do_nothing(index_elements=[jobs.c.sha256, jobs.c.pipeline_version])
        .returning(jobs.c.id)
    )


def _reset_job() -> Executable:
    """``enqueue(force=True)`` of a finished job: back in the queue with fresh attempts."""
    return (
        update(jobs)
        .where(jobs.c.id == bindparam("b_job_id"))
        .values(
            state=JobState.QUEUED,
            attempts=0,
            next_run_at=_now(),
            error_kind=None,
            error_message=None,
            outcome=None,
            finished_at=None,
            current_stage=None,
            lease_owner=None,
            lease_expires_at=None,
            **NOT_PARKED,
            updated_at=_now(),
            source_path=bindparam("b_source_path"),
            watch_root=bindparam("b_watch_root"),
            session_folder=bindparam("b_session_folder"),
            relative_path=bindparam("b_relative_path"),
        )
    )


def _upsert_source(dialect_insert: Callable[..., Any]) -> Executable:
    """A path seen again (maybe with new content) replaces its previous record."""
    upsert = dialect_insert(source_files)
    replaced = ("size_bytes", "mtime_ns", "sha256", "job_id", "first_seen_at")
    return upsert.on_conflict_do_update(
        index_elements=[source_files.c.path],
        set_={name: upsert.excluded[name] for name in replaced},
    )


def _claim(*, skip_locked: bool, parked_before_stage: bool = False) -> Executable:
    """The oldest runnable job, leased in one statement. The subquery picks it; the outer
    WHERE re-checks the state, so a row another claimer took meanwhile is not taken twice.

    ``parked_before_stage``: the oldest job parked before stage ``b_stage`` instead (GPU stage
    grouping: its model is loaded now). The ledger tries that first and falls back to the
    plain claim, so the plain claim's SQL, plan and order stay exactly as they were."""
    if parked_before_stage:
        next_id = _next_parked(skip_locked=skip_locked)
    elif skip_locked:
        next_id = _next_runnable_locked()
    else:
        next_id = _next_runnable_by_state()
    return (
        update(jobs)
        .where(jobs.c.id == next_id, _runnable())
        .values(
            state=JobState.RUNNING,
            lease_owner=bindparam("b_owner"),
            lease_expires_at=bindparam("b_expires", type_=_TIME),
            heartbeat_at=_now(),
            attempts=jobs.c.attempts + 1,
            # Every claim starts the clock: a reclaimed job's duration is its last run's.
            started_at=_now(),
            work_dir=bindparam("b_work_prefix", type_=Text) + cast(jobs.c.id, Text),
            updated_at=_now(),
        )
        .returning(*jobs.c)
    )


def _next_runnable_locked() -> Any:
    # Concurrent claimers on PostgreSQL each lock a different row instead of queueing.
    return (
        select(jobs.c.id)
        .where(_runnable(), jobs.c.next_run_at <= _now())
        .order_by(jobs.c.next_run_at, jobs.c.id)
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )


def _next_parked(*, skip_locked: bool) -> Any:
    """Parked jobs are queued (never waiting): one equality on ``state`` and ``next_stage``
    and a range on ``next_run_at`` is one seek in ``ix_jobs_parked``, already in claim order
    (``next_stage = ?`` implies the index's ``next_stage IS NOT NULL``, on SQLite and on
    PostgreSQL alike)."""
    query = (
        select(jobs.c.id)
        .where(
            jobs.c.state == JobState.QUEUED,
            jobs.c.next_stage == bindparam("b_stage"),
            jobs.c.next_run_at <= _now(),
        )
        .order_by(jobs.c.next_run_at, jobs.c.id)
        .limit(1)
    )
    if skip_locked:
        query = query.with_for_update(skip_locked=True)
    return query.scalar_subquery()


def _next_runnable_by_state() -> Any:
    """SQLite: the oldest due job of each runnable state, then the older of those. Asked for
    both states at once, SQLite reads every due row of ``ix_jobs_claim`` and sorts them (a
    temp B-tree per claim, so a claim cost grew with the backlog); per state the index is
    already in (next_run_at, id) order and each branch reads one entry."""
    oldest = [
        select(jobs.c.id, jobs.c.next_run_at)
        .where(jobs.c.state == state, jobs.c.next_run_at <= _now())
        .order_by(jobs.c.next_run_at, jobs.c.id)
        .limit(1)
        .subquery()
        for state in RUNNABLE_STATES
    ]
    candidates = union_all(*(select(branch.c.id, branch.c.next_run_at) for branch in oldest))
    found = candidates.subquery()
    return (
        select(found.c.id).order_by(found.c.next_run_at, found.c.id).limit(1).scalar_subquery()
    )


def _finish_stage(*, failed: bool) -> Executable:
    values: dict[str, Any] = dict(
        finished_at=_now(),
        duration_s=bindparam("b_duration_s"),
        artifact_path=bindparam("b_artifact_path"),
        status=bindparam("b_status") if failed else StageStatus.DONE,
    )
    if failed:
        values |= dict(
            error_kind=bindparam("b_error_kind"), error_message=bindparam("b_error_message")
        )
    return update(stage_runs).where(stage_runs.c.id == bindparam("b_run_id")).values(**values)


def _end() -> Executable:
    """done, skipped or failed: the lease is given up with the job."""
    return (
        update(jobs)
        .where(_owned())
        .values(
            finished_at=_now(),
            updated_at=_now(),
            lease_owner=None,
            lease_expires_at=None,
            current_stage=None,
            **NOT_PARKED,
            state=bindparam("b_state", type_=jobs.c.state.type),
            outcome=bindparam("b_outcome"),
            output_path=bindparam("b_output_path"),
            error_kind=bindparam("b_error_kind"),
            error_message=bindparam("b_error_message"),
        )
    )


def _refunded() -> Any:
    """The attempt count less the one the claim took."""
    return case((jobs.c.attempts > 0, jobs.c.attempts - 1), else_=0)


def _retry_later(*, refund_attempt: bool) -> Executable:
    attempts: Any = _refunded() if refund_attempt else jobs.c.attempts
    return (
        update(jobs)
        .where(_owned())
        .values(
            state=bindparam("b_state", type_=jobs.c.state.type),
            next_run_at=bindparam("b_next_run_at", type_=_TIME),
            attempts=attempts,
            lease_owner=None,
            lease_expires_at=None,
            # Back for another reason (an error, a shutdown, its burst): no longer parked.
            **NOT_PARKED,
            error_kind=bindparam("b_error_kind"),
            error_message=bindparam("b_error_message"),
            updated_at=_now(),
        )
    )


def _park() -> Executable:
    """GPU stage grouping: back in the queue, due at once, the attempt the claim took given
    back, marked with the stage it waits for. ``parked_at`` keeps the FIRST wait, so
    ``gpu.group_max_wait_s`` bounds the time grouping holds the job back in all. The error
    columns are left as they are: waiting for a model is not an error."""
    return (
        update(jobs)
        .where(_owned())
        .values(
            state=JobState.QUEUED,
            next_run_at=_now(),
            attempts=_refunded(),
            lease_owner=None,
            lease_expires_at=None,
            next_stage=bindparam("b_next_stage"),
            parked_at=func.coalesce(jobs.c.parked_at, _now()),
            updated_at=_now(),
        )
    )
