"""A worker claims one job at a time, runs the pipeline on it and settles the result.

Several workers (``worker.concurrency``) run as threads of the daemon, each with its own lease
identity. Signals never reach into a worker: the daemon sets ``stop`` and the worker finishes or
checkpoints its current stage, then returns the job to the queue (it resumes from its last
artifact on the next start).
"""

from __future__ import annotations

import errno
import gc
import random
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import structlog

from openeyesd.config import Config, Profile
from openeyesd.errors import (
    Cancelled,
    ConfigError,
    Deferred,
    DiskFull,
    InfraError,
    InternalError,
    Interrupted,
    JobSkipped,
    OpenEyesError,
    Parked,
)
from openeyesd.grouping import StageGrouping
from openeyesd.ledger import (
    Ending,
    Job,
    JobState,
    LeaseLost,
    Ledger,
    utcnow,
    worker_identity,
)
from openeyesd.pipeline import run_pipeline
from openeyesd.retry import Action, decide
from openeyesd.stages.base import JobLedger, Stage, StageContext


class Worker:
    def __init__(
        self, *, config: Config, ledger: Ledger,
        stages: Sequence[Stage] | Callable[[], Sequence[Stage]], slot: int = 0,
        stop: threading.Event | None = None, rng: random.Random | None = None,
        grouping: StageGrouping | None = None,
    ) -> None:
        """``grouping``: shared by the daemon's workers in the GPU profile; it parks a job whose
        next stage needs a model that is not loaded (``openeyesd.grouping``)."""
        self.config = config  # replaced by the daemon on reload; read once per job
        self.ledger = ledger
        # A factory builds the stages (and loads models) on first use, in this worker's thread;
        # a backend that cannot load pauses the worker instead of stopping the daemon.
        self._stage_factory = stages if callable(stages) else (lambda: stages)
        self.stages: list[Stage] | None = None
        self.worker_id = worker_identity(slot)
        self.stop = stop or threading.Event()
        self.rng = rng or random.Random()
        self.grouping = grouping
        self.current_job: Job | None = None
        self.current_ctx: StageContext | None = None
        self.paused_until: float | None = None
        self.pause_reason: str | None = None
        #: monotonic time of the last sign of life; the daemon feeds systemd's watchdog from it.
        self.last_progress = time.monotonic()
        self._log = structlog.get_logger().bind(worker=self.worker_id)

    # -- loop --------------------------------------------------------------------------------

    def run(self) -> None:
        """Claim and process jobs until ``stop`` is set. Each job's ending is written together
        with the next claim (``Ledger.finish_and_claim``): one transaction per job boundary.
        When no claim follows (paused, low disk, stopping) the ending is written alone."""
        last_report = 0.0
        pending: Settlement | None = None
        try:
            while not self.stop.is_set():
                self.last_progress = time.monotonic()
                if time.monotonic() - last_report >= self.config.worker.heartbeat_s:
                    self._report_state()
                    last_report = time.monotonic()
                if self._paused() or not self._ready():
                    self._settle(pending)
                    pending = None
                    self.stop.wait(self.config.worker.idle_poll_s)
                    continue
                job = self._claim(pending)
                pending = None
                if job is None:
                    self.stop.wait(self.config.worker.idle_poll_s)
                    continue
                pending = self._work_on(job)
        finally:
            self._settle(pending)

    def run_once(self) -> bool:
        """Claim one job and take it to its next resting state, ending written. False when
        nothing was due."""
        if not self._ready():
            return False
        job = self._claim(None)
        if job is None:
            return False
        self._settle(self._work_on(job))
        return True

    def _ready(self) -> bool:
        return self._enough_disk() and self._build_stages()

    def _claim(self, pending: Settlement | None) -> Job | None:
        """The next job, settling ``pending`` in the same transaction when there is one."""
        lease_s, work_root = self.config.worker.lease_s, str(self.config.jobs_dir)
        prefer = self._preferred_stages()
        if pending is not None:
            try:
                job = self.ledger.finish_and_claim(
                    pending.job.id, self.worker_id, ending=pending.ending,
                    lease_s=lease_s, work_root=work_root, prefer=prefer,
                )
            except LeaseLost:
                pending.lost()  # nothing was written or claimed: claim on its own below
            else:
                pending.announce()
                return job
        return self.ledger.claim(self.worker_id, lease_s=lease_s, work_root=work_root,
                                 prefer=prefer)

    def _grouping_on(self) -> StageGrouping | None:
        """The grouping, when this config asks for it (the config may change on reload)."""
        config = self.config
        if config.pipeline.profile is not Profile.GPU or not config.gpu.group_jobs:
            return None
        return self.grouping

    def _preferred_stages(self) -> tuple[str, ...]:
        grouping = self._grouping_on()
        return () if grouping is None else grouping.preferred_stages()

    def _settle(self, pending: Settlement | None) -> None:
        """Write ``pending`` on its own (no claim follows it)."""
        if pending is None:
            return
        try:
            self.ledger.settle(pending.job.id, self.worker_id, pending.ending)
        except LeaseLost:
            pending.lost()
            return
        pending.announce()

    def _work_on(self, job: Job) -> Settlement | None:
        """Run the pipeline on a claimed job; the ending it decided is not written yet."""
        self.current_job = job
        try:
            return self._process(job)
        finally:
            self.current_job = None
            self.current_ctx = None
            structlog.contextvars.clear_contextvars()

    def _build_stages(self) -> bool:
        if self.stages is None:
            try:
                self.stages = list(self._stage_factory())
                # The models just loaded live for the whole process: keep them out of every
                # later garbage collection pass (about 40 ms a job at 24 MP otherwise).
                gc.freeze()
            except (InfraError, ConfigError) as exc:
                # A backend that cannot load (models missing, licence refused by the config)
                # is the machine's problem, not the photos': pause, say why, try again later.
                self.pause(self.config.worker.infra_pause_s, f"{exc.kind}: {exc}")
                return False
            except Exception as exc:  # noqa: BLE001 - a dead worker thread would go unnoticed
                self._log.exception("worker.stages_unbuildable")
                self.pause(self.config.worker.infra_pause_s,
                           f"internal: building the stages failed: {type(exc).__name__}: {exc}")
                return False
        return True

    def _paused(self) -> bool:
        if self.paused_until is None:
            return False
        if time.monotonic() >= self.paused_until:
            self._log.info("worker.resumed", after=self.pause_reason)
            self.paused_until = self.pause_reason = None
            return False
        return True

    # -- one job -----------------------------------------------------------------------------

    def _process(self, job: Job) -> Settlement | None:
        structlog.contextvars.bind_contextvars(job_id=job.id, file=job.relative_path)
        log = self._log.bind(job_id=job.id, file=job.relative_path)
        log.info("job.claimed", attempt=job.attempts)
        assert job.work_dir is not None  # claim() always sets it
        ctx = StageContext(job=job, config=self.config, work_dir=Path(job.work_dir))
        ctx.work_dir.mkdir(parents=True, exist_ok=True)
        self.current_ctx = ctx
        ctx.ledger = JobLedger(self.ledger, job, self.worker_id)
        if (grouping := self._grouping_on()) is not None:
            gpu = ctx.config.gpu
            ctx.gate = lambda stage, models: grouping.check(job, stage, models, gpu)
        with self._lease_kept(job) as lease_lost:
            ctx.progress = lambda: self._progress(lease_lost)
            try:
                assert self.stages is not None  # built by _ready before claiming
                result = run_pipeline(self.stages, ctx, self.ledger, self.worker_id)
            except Exception as exc:  # noqa: BLE001 - every outcome must reach the ledger
                return self._decide(job, as_openeyes_error(exc), log)
        state = JobState.DONE if result.get("written") else JobState.SKIPPED
        outcome, output_path = result.get("outcome", "unknown"), result.get("output_path")
        ending = Ending.finished(state, outcome=outcome, output_path=output_path)
        return Settlement(job, ending, log, "job.finished",
                          {"state": str(state), "outcome": outcome, "output": output_path})

    def _progress(self, lease_lost: threading.Event) -> None:
        self.last_progress = time.monotonic()
        if self.stop.is_set():
            raise Interrupted("the daemon is stopping; the job resumes on the next start")
        if lease_lost.is_set():
            raise Cancelled("the job was cancelled or handed to another worker")

    @contextmanager
    def _lease_kept(self, job: Job) -> Iterator[threading.Event]:
        """Extend the job's lease every heartbeat_s while it runs, from a side thread, so a
        long stage does not look stalled; sets the yielded event if the lease is lost."""
        lost, done = threading.Event(), threading.Event()

        def keep() -> None:
            while not done.wait(self.config.worker.heartbeat_s):
                try:
                    self.ledger.heartbeat(job.id, self.worker_id,
                                          lease_s=self.config.worker.lease_s)
                    self._report_state()
                except LeaseLost:
                    lost.set()
                    return
                except Exception as exc:  # noqa: BLE001 - a busy ledger must not kill the job
                    self._log.warning("lease.heartbeat_failed", error=str(exc))

        keeper = threading.Thread(target=keep, name=f"lease-{job.id}", daemon=True)
        keeper.start()
        try:
            yield lost
        finally:
            done.set()
            keeper.join()

    # -- settling ----------------------------------------------------------------------------

    def _decide(
        self, job: Job, error: OpenEyesError, log: structlog.BoundLogger
    ) -> Settlement | None:
        """The ending an error calls for; None when there is nothing to write (the job was
        cancelled or handed to another worker: its lease is gone)."""
        if isinstance(error, JobSkipped):
            ending = Ending.finished(JobState.SKIPPED, outcome=error.kind, output_path=None,
                                     note=error.message)
            return Settlement(job, ending, log, "job.finished",
                              {"state": str(JobState.SKIPPED), "outcome": error.kind})
        if isinstance(error, Cancelled):
            log.info("job.cancelled")
            return None
        if isinstance(error, Interrupted):
            return Settlement(job, Ending.retry(error, delay_s=0, count_attempt=False), log,
                              "job.interrupted", {})
        if isinstance(error, Parked):
            return Settlement(job, Ending.parked(error.stage), log, "job.parked",
                              {"stage": error.stage, "models": list(error.models)})
        if isinstance(error, Deferred):
            ending = Ending.retry(error, delay_s=error.delay_s, count_attempt=False,
                                  state=JobState.WAITING)
            return Settlement(job, ending, log, "job.waiting",
                              {"reason": error.message, "delay_s": error.delay_s})
        return self._by_retry_policy(job, error, log)

    def _by_retry_policy(
        self, job: Job, error: OpenEyesError, log: structlog.BoundLogger
    ) -> Settlement:
        decision = decide(error, job.attempts, self.config.retry,
                          infra_pause_s=self.config.worker.infra_pause_s, rng=self.rng)
        about = {"error_kind": error.kind, "error": error.message}
        if decision.action is Action.FAIL:
            return Settlement(job, Ending.failed(error), log, "job.failed", about, warn=True)
        if decision.action is Action.RETRY:
            return Settlement(job, Ending.retry(error, delay_s=decision.delay_s), log,
                              "job.retry_later",
                              about | {"delay_s": round(decision.delay_s, 1),
                                       "attempt": job.attempts}, warn=True)
        # Infrastructure: the photo is not at fault. Pausing now also keeps the loop from
        # claiming with this ending: it is written alone, and nothing new is taken.
        self.pause(decision.delay_s, f"{error.kind}: {error.message}")
        return Settlement(job, Ending.retry(error, delay_s=0, count_attempt=False), log,
                          "job.requeued", about)

    @property
    def current_stage(self) -> str | None:
        return self.current_ctx.current_stage if self.current_ctx else None

    def pause(self, seconds: float, reason: str) -> None:
        self.paused_until = time.monotonic() + seconds
        self.pause_reason = reason
        self._log.error("worker.paused", reason=reason, seconds=seconds)
        self._report_state()

    # -- health ------------------------------------------------------------------------------

    def _enough_disk(self) -> bool:
        minimum = self.config.state.min_free_mb * 1024 * 1024
        for folder in (self.config.state.dir, self.config.output.path):
            probe = folder if folder.exists() else folder.parent
            try:
                free = shutil.disk_usage(probe).free
            except OSError:
                continue
            if free < minimum:
                self.pause(self.config.worker.infra_pause_s,
                           f"disk_full: {free // 2**20} MiB free in {folder}, "
                           f"state.min_free_mb is {self.config.state.min_free_mb}")
                return False
        return True

    def _report_state(self) -> None:
        if self.paused_until is not None:
            state = "paused"
        else:
            state = "busy" if self.current_job else "idle"
        until = None
        if self.paused_until is not None:
            until = utcnow() + timedelta(seconds=max(self.paused_until - time.monotonic(), 0))
        try:
            self.ledger.worker_heartbeat(
                self.worker_id, state=state,
                current_job_id=self.current_job.id if self.current_job else None,
                paused_until=until, pause_reason=self.pause_reason,
            )
        except Exception as exc:  # noqa: BLE001 - status reporting must never stop work
            self._log.warning("worker.report_failed", error=str(exc))


@dataclass(frozen=True)
class Settlement:
    """A job's ending as the worker decided it, and what to log once the ledger has it."""

    job: Job
    ending: Ending
    log: structlog.BoundLogger
    event: str
    fields: dict[str, Any]
    warn: bool = False

    def announce(self) -> None:
        (self.log.warning if self.warn else self.log.info)(self.event, **self.fields)

    def lost(self) -> None:
        """The ending could not be written: another worker or ``cancel`` owns the job now."""
        self.log.warning("job.lease_lost", ending=str(self.ending.state), intended=self.event)


def as_openeyes_error(exc: BaseException) -> OpenEyesError:
    """Give every exception a kind and an operator-readable message."""
    if isinstance(exc, LeaseLost):
        return Cancelled(str(exc))
    if isinstance(exc, OpenEyesError):
        return exc
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return DiskFull(f"no space left on device: {exc}")
    if isinstance(exc, MemoryError):
        return InternalError("ran out of memory processing this photo; will retry")
    structlog.get_logger().exception("job.unexpected_error")
    return InternalError(
        f"unexpected {type(exc).__name__}: {exc} (a bug; please report it with the daemon log)"
    )

