"""All SQL of the product, behind named operations.

Stages, the worker and the watcher call these methods and never touch a connection. Every
method is one short transaction. A job is claimed by moving it to ``running`` with a lease
(owner + expiry), never by deleting it, so a worker that dies leaves a row that
``reclaim_stalled`` hands to someone else: at-least-once delivery. Every update made on
behalf of a worker names that worker's lease, so a worker that lost its lease (reclaimed,
cancelled) cannot overwrite the job's new fate; it gets ``LeaseLost`` instead.

A busy worker ends its job and claims the next in one transaction (``finish_and_claim``, with
the ``Ending`` it decided), so each job boundary costs one commit; ``settle`` (and ``complete``,
``fail``, ``retry_later``) end a job alone.

The hot paths (enqueue, claim, heartbeat, stages, endings) run statements built once per
``Ledger`` in ``statements.py``, executed by ``hotpath.py`` (on SQLite straight on the driver,
compiled once by SQLAlchemy); the rarer operations build theirs per call. The claim is one
portable ``UPDATE ... WHERE id = (SELECT ... LIMIT 1) AND state IN (runnable) RETURNING *``,
with ``FOR UPDATE SKIP LOCKED`` in the subquery on PostgreSQL (on SQLite ``BEGIN IMMEDIATE``
already serialises writers). In the GPU profile a claim may first ask for the oldest job parked
before a stage whose model is loaded (``prefer``, ``openeyesd.grouping``), one statement of the
same shape per stage, in the same transaction.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import PurePosixPath
from typing import Any

from sqlalchemy import Connection, Engine, and_, delete, func, insert, or_, select, update

from openeyesd.errors import Cancelled, Deferred, Interrupted, OpenEyesError
from openeyesd.ledger.endings import Ending
from openeyesd.ledger.engine import WRITE_OPTION
from openeyesd.ledger.hotpath import HotTransaction, hot_path_for
from openeyesd.ledger.schema import (
    FINAL_STATES,
    JobState,
    StageStatus,
    jobs,
    source_files,
    stage_runs,
    workers,
)
from openeyesd.ledger.statements import NOT_PARKED, build_statements
from openeyesd.ledger.statements import RUNNABLE_STATES as RUNNABLE_STATES

#: Paths per IN (...) of ``known_sources``: far below SQLite's and PostgreSQL's parameter
#: limits, and a statement that stays short to parse.
KNOWN_SOURCES_CHUNK = 500


class LeaseLost(OpenEyesError):
    """This worker no longer owns the job (reclaimed after a stall, or cancelled)."""

    kind = "lease_lost"


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Job:
    id: int
    sha256: str
    pipeline_version: str
    size_bytes: int
    source_path: str
    watch_root: str
    relative_path: str
    state: JobState
    attempts: int
    next_run_at: datetime
    lease_owner: str | None
    lease_expires_at: datetime | None
    heartbeat_at: datetime | None
    current_stage: str | None
    error_kind: str | None
    error_message: str | None
    outcome: str | None
    output_path: str | None
    work_dir: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    session_folder: str | None = None
    captured_at: datetime | None = None
    capture_source: str | None = None
    #: Parked (GPU stage grouping): the stage it waits to run and when it first waited.
    next_stage: str | None = None
    parked_at: datetime | None = None

    @classmethod
    def from_row(cls, row: Any) -> Job:
        return cls.from_mapping(row._mapping)

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> Job:
        values = dict(mapping)
        values["state"] = JobState(values["state"])
        return cls(**values)


@dataclass(frozen=True)
class StageRun:
    id: int
    job_id: int
    stage: str
    attempt: int
    status: StageStatus
    input_hash: str
    artifact_path: str | None
    started_at: datetime
    finished_at: datetime | None
    duration_s: float | None
    error_kind: str | None
    error_message: str | None

    @classmethod
    def from_row(cls, row: Any) -> StageRun:
        values = dict(row._mapping)
        values["status"] = StageStatus(values["status"])
        return cls(**values)


@dataclass(frozen=True)
class SessionFrame:
    """Another photo of the same folder, as the burst planner sees it."""

    id: int
    sha256: str
    state: JobState
    relative_path: str
    source_path: str
    work_dir: str | None
    created_at: datetime
    captured_at: datetime | None
    capture_source: str | None


def session_folder_of(watch_root: str, relative_path: str) -> str:
    """Photos in the same folder form bursts; this names the folder across watch roots."""
    parent = PurePosixPath(relative_path).parent
    return watch_root if str(parent) == "." else f"{watch_root}/{parent}"


@dataclass(frozen=True)
class EnqueueItem:
    """One file for ``Ledger.enqueue_many``: the keyword arguments of ``Ledger.enqueue``."""

    sha256: str
    size_bytes: int
    source_path: str
    watch_root: str
    relative_path: str
    mtime_ns: int
    pipeline_version: str
    force: bool = False


@dataclass(frozen=True)
class EnqueueResult:
    job_id: int
    #: True when this call created the job; False for a duplicate of an existing one.
    created: bool
    #: True when --force put an existing job back in the queue.
    requeued: bool = False


@dataclass(frozen=True)
class WorkerRecord:
    id: str
    hostname: str
    pid: int
    state: str
    started_at: datetime
    heartbeat_at: datetime
    current_job_id: int | None
    paused_until: datetime | None
    pause_reason: str | None
    backends: str | None


@dataclass(frozen=True)
class RunningJob:
    id: int
    relative_path: str
    stage: str | None
    started_at: datetime | None
    lease_owner: str | None


@dataclass(frozen=True)
class ParkedCounts:
    """What GPU stage grouping asks the queue before it parks a job."""

    #: Queued jobs parked before each stage (stages with none are absent).
    per_stage: dict[str, int]
    #: Whether some runnable job is due now and not parked: work that needs no swap.
    unparked_due: bool


@dataclass(frozen=True)
class LedgerStats:
    now: datetime
    counts: dict[str, int]
    finished_last_hour: int
    finished_last_day: int
    oldest_queued_at: datetime | None
    running: list[RunningJob]
    workers: list[WorkerRecord]
    #: Queued jobs parked before each stage until its model is loaded (GPU profile).
    parked: dict[str, int] = field(default_factory=dict)

    @property
    def queue_depth(self) -> int:
        return self.counts.get(JobState.QUEUED, 0) + self.counts.get(JobState.WAITING, 0)


def worker_identity(slot: int = 0) -> str:
    """``host:pid/slot``: unique per worker thread, and tells which process held a lease."""
    return f"{socket.gethostname()}:{os.getpid()}/{slot}"


def lease_owner_process(owner: str) -> tuple[str, int] | None:
    """(hostname, pid) of a lease owner written by ``worker_identity``."""
    hostname, _, rest = owner.rpartition(":")
    pid = rest.partition("/")[0]
    return (hostname, int(pid)) if hostname and pid.isdigit() else None


class Ledger:
    def __init__(
        self,
        engine: Engine,
        *,
        pipeline_version: str | None = None,
        hot_path_on_driver: bool | None = None,
    ) -> None:
        """``pipeline_version``: the version this process processes photos with. A file seen
        under an older version is not "known" to it, so bumping the version reprocesses.
        ``hot_path_on_driver``: run the hot-path statements on SQLite's driver (``hotpath.py``);
        None = wherever the dialect allows it (SQLite). False forces SQLAlchemy's path."""
        self.engine = engine
        self.pipeline_version = pipeline_version
        # Same pool, with the write option preset: each write transaction skips setting it.
        self._write_engine = engine.execution_options(**{WRITE_OPTION: True})
        # Hot-path statements are built once here (dialect chosen here too), then executed
        # with parameter dicts: SQLAlchemy reuses their cache keys and compiled SQL.
        self._sql = build_statements(engine.dialect.name, by_version=pipeline_version is not None)
        # Enqueue, claim, endings, heartbeats and stage records: the per-job transactions.
        self._hot = hot_path_for(engine, self._write_engine, on_driver=hot_path_on_driver)

    # -- transactions ------------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self._write_engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn, conn.begin():
            yield conn

    # -- intake ------------------------------------------------------------------------------

    def is_known_source(self, path: str, size_bytes: int, mtime_ns: int) -> bool:
        """True when this exact file (path, size, mtime) was already recorded for this
        pipeline version: the watcher skips hashing it again."""
        params: dict[str, Any] = {
            "b_path": path,
            "b_size": size_bytes,
            "b_mtime": mtime_ns,
            "b_version": self.pipeline_version,  # unused when not bound to a version
        }
        with self._read() as conn:
            return conn.execute(self._sql.known_source, params).first() is not None

    def known_sources(self, paths: Sequence[str]) -> dict[str, tuple[int, int]]:
        """(size, mtime_ns) recorded for each of ``paths`` that this pipeline version has
        seen; paths it has not seen are absent. One read transaction for a whole rescan
        batch instead of ``is_known_source`` per file."""
        unique = list(dict.fromkeys(paths))
        found: dict[str, tuple[int, int]] = {}
        with self._read() as conn:
            for start in range(0, len(unique), KNOWN_SOURCES_CHUNK):
                params = {
                    "b_paths": unique[start : start + KNOWN_SOURCES_CHUNK],
                    "b_version": self.pipeline_version,
                }
                for row in conn.execute(self._sql.known_sources, params):
                    found[row.path] = (row.size_bytes, row.mtime_ns)
        return found

    def enqueue(
        self,
        *,
        sha256: str,
        size_bytes: int,
        source_path: str,
        watch_root: str,
        relative_path: str,
        mtime_ns: int,
        pipeline_version: str,
        force: bool = False,
    ) -> EnqueueResult:
        """One job per (content, pipeline version); a second path to the same content is
        recorded against the existing job. ``force`` re-queues a finished job."""
        item = EnqueueItem(
            sha256=sha256,
            size_bytes=size_bytes,
            source_path=source_path,
            watch_root=watch_root,
            relative_path=relative_path,
            mtime_ns=mtime_ns,
            pipeline_version=pipeline_version,
            force=force,
        )
        return self.enqueue_many([item])[0]

    def enqueue_many(self, items: Sequence[EnqueueItem]) -> list[EnqueueResult]:
        """``enqueue`` for each item, in order, in one transaction: all are recorded or none.
        The same content twice in a batch makes one job (the second is a duplicate)."""
        if not items:
            return []
        now = utcnow()
        with self._hot.write() as tx:
            results = [self._enqueue_one(tx, item, now) for item in items]
            # A path listed twice keeps its last sighting, as with one enqueue after another
            # (and one upsert per path: PostgreSQL refuses to update a row twice in one).
            sources = {
                item.source_path: self._source_params(item, result.job_id, now)
                for item, result in zip(items, results, strict=True)
            }
            tx.many(self._sql.upsert_source, list(sources.values()))
        return results

    def _enqueue_one(self, tx: HotTransaction, item: EnqueueItem, now: datetime) -> EnqueueResult:
        # Insert first: a new photo, the common case, costs one statement. On a conflict the
        # job exists (committed: PostgreSQL waited for its enqueuer), so the SELECT finds it.
        inserted = tx.first(self._sql.insert_job, self._job_params(item, now))
        if inserted is not None:
            return EnqueueResult(int(inserted["id"]), created=True)
        key = {"b_sha256": item.sha256, "b_version": item.pipeline_version}
        existing = tx.one(self._sql.find_job, key)  # the row the INSERT conflicted with
        job_id = int(existing["id"])
        requeued = item.force and JobState(existing["state"]) in FINAL_STATES
        if requeued:
            tx.rowcount(self._sql.reset_job, self._reset_params(item, job_id, now))
        return EnqueueResult(job_id, created=False, requeued=requeued)

    @staticmethod
    def _job_params(item: EnqueueItem, now: datetime) -> dict[str, Any]:
        return {
            "sha256": item.sha256,
            "pipeline_version": item.pipeline_version,
            "size_bytes": item.size_bytes,
            "source_path": item.source_path,
            "watch_root": item.watch_root,
            "relative_path": item.relative_path,
            "session_folder": session_folder_of(item.watch_root, item.relative_path),
            "state": JobState.QUEUED,
            "attempts": 0,
            "next_run_at": now,
            "created_at": now,
            "updated_at": now,
        }

    @staticmethod
    def _reset_params(item: EnqueueItem, job_id: int, now: datetime) -> dict[str, Any]:
        return {
            "b_job_id": job_id,
            "b_now": now,
            "b_source_path": item.source_path,
            "b_watch_root": item.watch_root,
            "b_session_folder": session_folder_of(item.watch_root, item.relative_path),
            "b_relative_path": item.relative_path,
        }

    @staticmethod
    def _source_params(item: EnqueueItem, job_id: int, now: datetime) -> dict[str, Any]:
        return {
            "path": item.source_path,
            "size_bytes": item.size_bytes,
            "mtime_ns": item.mtime_ns,
            "sha256": item.sha256,
            "job_id": job_id,
            "first_seen_at": now,
        }

    # -- claiming and leases -----------------------------------------------------------------

    def claim(
        self, worker_id: str, *, lease_s: float, work_root: str, prefer: Sequence[str] = ()
    ) -> Job | None:
        """Take the next runnable job: state -> running, lease to ``worker_id``, attempts + 1.
        ``prefer``: stages (in order) whose parked jobs are taken before any other job (GPU
        stage grouping: their models are loaded); empty, the order is plain oldest-first."""
        params = self._claim_params(worker_id, lease_s, work_root, utcnow())
        with self._hot.write() as tx:
            return self._claim_in(tx, params, prefer)

    def _claim_in(
        self, tx: HotTransaction, params: dict[str, Any], prefer: Sequence[str]
    ) -> Job | None:
        # One statement per preferred stage, each a seek in ix_jobs_parked, rather than one
        # with an IN list: the hot path runs statements compiled once (no per-call SQL).
        for stage in prefer:
            row = tx.first(self._sql.claim_parked, params | {"b_stage": stage})
            if row is not None:
                return Job.from_mapping(row)
        row = tx.first(self._sql.claim, params)
        return None if row is None else Job.from_mapping(row)

    @staticmethod
    def _claim_params(
        worker_id: str, lease_s: float, work_root: str, now: datetime
    ) -> dict[str, Any]:
        return {
            "b_now": now,
            "b_owner": worker_id,
            "b_expires": now + timedelta(seconds=lease_s),
            "b_work_prefix": f"{work_root}/",
        }

    def _owned(self, job_id: int, worker_id: str) -> Any:
        return and_(
            jobs.c.id == job_id, jobs.c.lease_owner == worker_id, jobs.c.state == JobState.RUNNING
        )

    def _leased_write(self, statement: Any, params: dict[str, Any]) -> None:
        """Run a lease-checked UPDATE; LeaseLost when the job is no longer this worker's."""
        with self._hot.write() as tx:
            changed = tx.rowcount(statement, params)
        if not changed:
            raise LeaseLost(f"job {params['b_job_id']} is no longer leased to {params['b_owner']}")

    def heartbeat(self, job_id: int, worker_id: str, *, lease_s: float) -> None:
        """Extend the lease. Raises LeaseLost when the job was reclaimed or cancelled."""
        now = utcnow()
        params = {
            "b_job_id": job_id,
            "b_owner": worker_id,
            "b_now": now,
            "b_expires": now + timedelta(seconds=lease_s),
        }
        self._leased_write(self._sql.heartbeat, params)

    def reclaim_stalled(self, *, max_attempts: int) -> list[int]:
        """Requeue running jobs whose lease expired (their worker died). A job that has
        already used all its attempts this way fails instead: it may be what kills workers."""
        now = utcnow()
        expired = and_(jobs.c.state == JobState.RUNNING, jobs.c.lease_expires_at < now)
        with self._write() as conn:
            rows = conn.execute(select(jobs.c.id, jobs.c.attempts).where(expired)).all()
            for row in rows:
                values: dict[str, Any] = dict(
                    lease_owner=None, lease_expires_at=None, updated_at=now, **NOT_PARKED
                )
                if row.attempts >= max_attempts:
                    values |= dict(
                        state=JobState.FAILED,
                        finished_at=now,
                        error_kind="stalled",
                        error_message=(
                            f"the worker processing this photo stopped {row.attempts} times "
                            "without finishing; check the daemon log for crashes or memory kills"
                        ),
                    )
                else:
                    values |= dict(state=JobState.QUEUED, next_run_at=now)
                conn.execute(update(jobs).where(jobs.c.id == row.id, expired).values(**values))
        return [row.id for row in rows]

    def release_leases(self, owners: Sequence[str]) -> list[int]:
        """Requeue the running jobs of workers known to be dead (their process is gone), at
        once rather than after the lease runs out. The attempt they used still counts."""
        if not owners:
            return []
        now = utcnow()
        condition = and_(jobs.c.state == JobState.RUNNING, jobs.c.lease_owner.in_(list(owners)))
        with self._write() as conn:
            ids = [row.id for row in conn.execute(select(jobs.c.id).where(condition))]
            conn.execute(
                update(jobs)
                .where(condition)
                .values(
                    state=JobState.QUEUED,
                    next_run_at=now,
                    lease_owner=None,
                    lease_expires_at=None,
                    **NOT_PARKED,
                    updated_at=now,
                )
            )
        return ids

    def adopt_content_hash(self, job_id: int, worker_id: str, sha256: str) -> int | None:
        """Replace a placeholder identity with the real content hash once the file could be
        read. Returns the id of an existing job with that content (a duplicate), else None."""
        now = utcnow()
        with self._write() as conn:
            version = conn.execute(
                select(jobs.c.pipeline_version).where(self._owned(job_id, worker_id))
            ).scalar_one_or_none()
            if version is None:
                raise LeaseLost(f"job {job_id} is no longer leased to {worker_id}")
            twin = conn.execute(
                select(jobs.c.id).where(
                    jobs.c.sha256 == sha256,
                    jobs.c.pipeline_version == version,
                    jobs.c.id != job_id,
                )
            ).scalar_one_or_none()
            if twin is not None:
                return int(twin)
            conn.execute(
                update(jobs).where(jobs.c.id == job_id).values(sha256=sha256, updated_at=now)
            )
            conn.execute(
                update(source_files).where(source_files.c.job_id == job_id).values(sha256=sha256)
            )
        return None

    # -- bursts -----------------------------------------------------------------------------

    def record_capture_time(
        self, job_id: int, worker_id: str, captured_at: datetime, source: str
    ) -> None:
        with self._write() as conn:
            changed = conn.execute(
                update(jobs)
                .where(self._owned(job_id, worker_id))
                .values(captured_at=captured_at, capture_source=source)
            ).rowcount
        if not changed:
            raise LeaseLost(f"job {job_id} is no longer leased to {worker_id}")

    def session_frames(
        self, session_folder: str, *, exclude_states: Sequence[JobState] = (JobState.CANCELLED,)
    ) -> list[SessionFrame]:
        """Every job of a folder: the planner groups them by capture time. Jobs whose capture
        time is not known yet (not ingested) come with ``captured_at`` None."""
        query = (
            select(
                jobs.c.id,
                jobs.c.sha256,
                jobs.c.state,
                jobs.c.relative_path,
                jobs.c.source_path,
                jobs.c.work_dir,
                jobs.c.created_at,
                jobs.c.captured_at,
                jobs.c.capture_source,
            )
            .where(
                jobs.c.session_folder == session_folder, jobs.c.state.not_in(list(exclude_states))
            )
            .order_by(jobs.c.id)
        )
        with self._read() as conn:
            return [
                SessionFrame(**{**dict(row._mapping), "state": JobState(row.state)})
                for row in conn.execute(query)
            ]

    # -- stages ------------------------------------------------------------------------------

    def start_stage(self, job_id: int, worker_id: str, *, stage: str, input_hash: str) -> int:
        """Record that ``stage`` starts with ``input_hash``, before it runs."""
        now = utcnow()
        owned = {"b_job_id": job_id, "b_owner": worker_id, "b_stage": stage, "b_now": now}
        with self._hot.write() as tx:
            job = tx.first(self._sql.start_stage_job, owned)
            if job is None:
                raise LeaseLost(f"job {job_id} is no longer leased to {worker_id}")
            run = {
                "job_id": job_id,
                "stage": stage,
                "attempt": job["attempts"],
                "status": StageStatus.RUNNING,
                "input_hash": input_hash,
                "started_at": now,
            }
            return int(tx.one(self._sql.start_stage_run, run)["id"])

    def finish_stage(
        self,
        run_id: int,
        *,
        artifact_path: str | None,
        duration_s: float,
        error: OpenEyesError | None = None,
    ) -> None:
        params: dict[str, Any] = {
            "b_run_id": run_id,
            "b_now": utcnow(),
            "b_duration_s": duration_s,
            "b_artifact_path": artifact_path,
        }
        statement = self._sql.finish_stage_done
        if error is not None:
            statement = self._sql.finish_stage_failed
            params |= {"b_error_kind": error.kind, "b_error_message": error.message,
                       "b_status": _stage_status_for(error)}
        with self._hot.write() as tx:
            tx.rowcount(statement, params)

    # -- endings -----------------------------------------------------------------------------

    def settle(self, job_id: int, worker_id: str, ending: Ending) -> None:
        """Apply the worker's ``ending`` to the job it holds, in a transaction of its own.
        Raises LeaseLost when the job is no longer this worker's (cancelled, reclaimed)."""
        statement, params = self._ending_write(job_id, worker_id, ending, utcnow())
        self._leased_write(statement, params)

    def finish_and_claim(
        self, job_id: int, worker_id: str, *, ending: Ending, lease_s: float, work_root: str,
        prefer: Sequence[str] = (),
    ) -> Job | None:
        """``settle`` the job held and ``claim`` the next one, in ONE transaction: a busy
        worker pays one commit per job boundary instead of two. At-least-once holds either
        way a crash falls: before the commit the old job is still leased (and reclaimable),
        after it the new one is.

        Raises LeaseLost, with nothing claimed and nothing written, when the held job is no
        longer this worker's; the worker logs that and claims with ``claim``. ``prefer``: as
        for ``claim``."""
        now = utcnow()
        statement, params = self._ending_write(job_id, worker_id, ending, now)
        claim = self._claim_params(worker_id, lease_s, work_root, now)
        with self._hot.write() as tx:
            if not tx.rowcount(statement, params):
                # Raising inside the block rolls back: the claim must not outlive the ending.
                raise LeaseLost(f"job {job_id} is no longer leased to {worker_id}")
            return self._claim_in(tx, claim, prefer)

    def _ending_write(
        self, job_id: int, worker_id: str, ending: Ending, now: datetime
    ) -> tuple[Any, dict[str, Any]]:
        """The prebuilt lease-checked UPDATE for ``ending`` and its parameters."""
        owned = {"b_job_id": job_id, "b_owner": worker_id, "b_now": now}
        if ending.next_stage is not None:
            return self._sql.park, owned | {"b_next_stage": ending.next_stage}
        params: dict[str, Any] = owned | {
            "b_state": ending.state,
            "b_error_kind": ending.error_kind,
            "b_error_message": ending.error_message,
        }
        if ending.requeues:
            params["b_next_run_at"] = now + timedelta(seconds=ending.delay_s)
            if ending.count_attempt:
                return self._sql.retry_later_counted, params
            return self._sql.retry_later_refunded, params
        params |= {"b_outcome": ending.outcome, "b_output_path": ending.output_path}
        return self._sql.end, params

    def complete(
        self,
        job_id: int,
        worker_id: str,
        *,
        state: JobState,
        outcome: str,
        output_path: str | None,
        note: str | None = None,
    ) -> None:
        """End a job as done or skipped; ``note`` (why it was skipped) goes to error_message."""
        if state not in (JobState.DONE, JobState.SKIPPED):
            raise ValueError(f"complete() ends a job as done or skipped, not {state}")
        ending = Ending.finished(state, outcome=outcome, output_path=output_path, note=note)
        self.settle(job_id, worker_id, ending)

    def fail(self, job_id: int, worker_id: str, error: OpenEyesError) -> None:
        self.settle(job_id, worker_id, Ending.failed(error))

    def retry_later(
        self,
        job_id: int,
        worker_id: str,
        *,
        delay_s: float,
        error: OpenEyesError,
        count_attempt: bool = True,
        state: JobState = JobState.QUEUED,
    ) -> None:
        """Put the job back to run after ``delay_s``. ``count_attempt=False`` (infrastructure
        errors) gives back the attempt the claim took. ``state=WAITING`` parks it instead."""
        ending = Ending.retry(error, delay_s=delay_s, count_attempt=count_attempt, state=state)
        self.settle(job_id, worker_id, ending)

    # -- operator actions --------------------------------------------------------------------

    def retry(self, job_ids: Sequence[int] | None = None) -> list[int]:
        """Requeue failed (or cancelled) jobs with fresh attempts; all failed ones if no ids."""
        now = utcnow()
        if job_ids is None:
            condition = jobs.c.state == JobState.FAILED
        else:
            retryable = jobs.c.state.in_((JobState.FAILED, JobState.CANCELLED))
            condition = and_(retryable, jobs.c.id.in_(list(job_ids)))
        with self._write() as conn:
            ids = [row.id for row in conn.execute(select(jobs.c.id).where(condition))]
            if ids:
                conn.execute(
                    update(jobs)
                    .where(jobs.c.id.in_(ids))
                    .values(
                        state=JobState.QUEUED,
                        attempts=0,
                        next_run_at=now,
                        finished_at=None,
                        error_kind=None,
                        error_message=None,
                        outcome=None,
                        current_stage=None,
                        **NOT_PARKED,
                        updated_at=now,
                    )
                )
        return ids

    def cancel(self, job_id: int) -> bool:
        """Cancel a job that has not finished. A running job stops at its next heartbeat."""
        now = utcnow()
        with self._write() as conn:
            return bool(
                conn.execute(
                    update(jobs)
                    .where(jobs.c.id == job_id, jobs.c.state.not_in(FINAL_STATES))
                    .values(
                        state=JobState.CANCELLED,
                        finished_at=now,
                        updated_at=now,
                        outcome="cancelled",
                        current_stage=None,
                        lease_owner=None,
                        lease_expires_at=None,
                        **NOT_PARKED,
                    )
                ).rowcount
            )

    # -- reading -----------------------------------------------------------------------------

    def get_job(self, job_id: int) -> Job | None:
        with self._read() as conn:
            row = conn.execute(select(jobs).where(jobs.c.id == job_id)).first()
        return None if row is None else Job.from_row(row)

    def stage_runs(self, job_id: int) -> list[StageRun]:
        query = select(stage_runs).where(stage_runs.c.job_id == job_id).order_by(stage_runs.c.id)
        with self._read() as conn:
            return [StageRun.from_row(row) for row in conn.execute(query)]

    def source_paths(self, job_id: int) -> list[str]:
        query = select(source_files.c.path).where(source_files.c.job_id == job_id)
        with self._read() as conn:
            return sorted(row.path for row in conn.execute(query))

    def list_jobs(self, *, states: Sequence[JobState] | None = None, limit: int = 50) -> list[Job]:
        query = select(jobs).order_by(jobs.c.id.desc()).limit(limit)
        if states:
            query = query.where(jobs.c.state.in_(list(states)))
        with self._read() as conn:
            return [Job.from_row(row) for row in conn.execute(query)]

    def stats(self) -> LedgerStats:
        now = utcnow()
        with self._read() as conn:
            counts = {
                row.state: row.n
                for row in conn.execute(
                    select(jobs.c.state, func.count().label("n")).group_by(jobs.c.state)
                )
            }
            finished = select(func.count()).where(
                jobs.c.state.in_((JobState.DONE, JobState.SKIPPED, JobState.FAILED))
            )
            last_hour = conn.execute(
                finished.where(jobs.c.finished_at >= now - timedelta(hours=1))
            ).scalar_one()
            last_day = conn.execute(
                finished.where(jobs.c.finished_at >= now - timedelta(days=1))
            ).scalar_one()
            oldest = conn.execute(
                select(func.min(jobs.c.created_at)).where(jobs.c.state == JobState.QUEUED)
            ).scalar_one()
            running = [
                RunningJob(r.id, r.relative_path, r.current_stage, r.started_at, r.lease_owner)
                for r in conn.execute(
                    select(jobs).where(jobs.c.state == JobState.RUNNING).order_by(jobs.c.id)
                )
            ]
            worker_rows = conn.execute(select(workers).order_by(workers.c.started_at)).all()
            parked = {row.next_stage: row.n for row in conn.execute(_parked_per_stage())}
        if oldest is not None and oldest.tzinfo is None:
            oldest = oldest.replace(tzinfo=UTC)
        return LedgerStats(
            now=now,
            counts=counts,
            finished_last_hour=last_hour,
            finished_last_day=last_day,
            oldest_queued_at=oldest,
            running=running,
            workers=[WorkerRecord(**dict(row._mapping)) for row in worker_rows],
            parked=parked,
        )

    def parked_counts(self) -> ParkedCounts:
        """Queued jobs parked per stage, and whether any due job is not parked: what GPU stage
        grouping weighs before it parks one more. Both reads use an index (``ix_jobs_parked``
        for the counts; the second stops at the first due job found)."""
        now = utcnow()
        unparked = (
            select(jobs.c.id)
            .where(
                or_(*(jobs.c.state == state for state in RUNNABLE_STATES)),
                jobs.c.next_run_at <= now,
                jobs.c.next_stage.is_(None),
            )
            .limit(1)
        )
        with self._read() as conn:
            per_stage = {row.next_stage: row.n for row in conn.execute(_parked_per_stage())}
            unparked_due = conn.execute(unparked).first() is not None
        return ParkedCounts(per_stage=per_stage, unparked_due=unparked_due)

    # -- workers -----------------------------------------------------------------------------

    def register_worker(self, worker_id: str, *, hostname: str, pid: int, backends: str) -> None:
        now = utcnow()
        with self._write() as conn:
            conn.execute(delete(workers).where(workers.c.id == worker_id))
            conn.execute(
                insert(workers).values(
                    id=worker_id,
                    hostname=hostname,
                    pid=pid,
                    state="starting",
                    started_at=now,
                    heartbeat_at=now,
                    backends=backends,
                )
            )

    def worker_heartbeat(
        self,
        worker_id: str,
        *,
        state: str,
        current_job_id: int | None,
        paused_until: datetime | None = None,
        pause_reason: str | None = None,
    ) -> None:
        with self._write() as conn:
            conn.execute(
                update(workers)
                .where(workers.c.id == worker_id)
                .values(
                    state=state,
                    heartbeat_at=utcnow(),
                    current_job_id=current_job_id,
                    paused_until=paused_until,
                    pause_reason=pause_reason,
                )
            )

    def unregister_worker(self, worker_id: str) -> None:
        with self._write() as conn:
            conn.execute(delete(workers).where(workers.c.id == worker_id))

    def forget_dead_workers(self, *, older_than_s: float) -> int:
        cutoff = utcnow() - timedelta(seconds=older_than_s)
        with self._write() as conn:
            return conn.execute(delete(workers).where(workers.c.heartbeat_at < cutoff)).rowcount

    # -- retention ---------------------------------------------------------------------------

    def expired_work_dirs(
        self, *, finished_before: datetime, failed_before: datetime
    ) -> list[tuple[int, str]]:
        """Work directories of jobs finished long enough ago to delete."""
        query = select(jobs.c.id, jobs.c.work_dir).where(
            jobs.c.work_dir.is_not(None),
            or_(
                and_(
                    jobs.c.state.in_((JobState.DONE, JobState.SKIPPED, JobState.CANCELLED)),
                    jobs.c.finished_at < finished_before,
                ),
                and_(jobs.c.state == JobState.FAILED, jobs.c.finished_at < failed_before),
            ),
        )
        with self._read() as conn:
            return [(row.id, row.work_dir) for row in conn.execute(query)]

    def forget_work_dir(self, job_id: int) -> None:
        with self._write() as conn:
            conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id, jobs.c.state.in_(FINAL_STATES))
                .values(work_dir=None)
            )


def _parked_per_stage() -> Any:
    return (
        select(jobs.c.next_stage, func.count().label("n"))
        .where(jobs.c.state == JobState.QUEUED, jobs.c.next_stage.is_not(None))
        .group_by(jobs.c.next_stage)
    )


def _stage_status_for(error: OpenEyesError) -> StageStatus:
    """A deferral or a shutdown ends a stage run without it having failed."""
    if isinstance(error, Deferred):
        return StageStatus.DEFERRED
    if isinstance(error, Interrupted | Cancelled):
        return StageStatus.INTERRUPTED
    return StageStatus.FAILED
