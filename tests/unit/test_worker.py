from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import event

from openeyesd.config import Config
from openeyesd.errors import (
    CorruptImage,
    Deferred,
    DuplicateImage,
    OpenEyesError,
    OutOfMemory,
    SourceBusy,
)
from openeyesd.ledger import Job, JobState, Ledger, create_ledger_engine, migrate
from openeyesd.stages.base import StageContext
from openeyesd.worker import Worker
from tests.unit.fake_stages import RecordingStage


def enqueue(ledger: Ledger, name: str = "a.jpg") -> int:
    return ledger.enqueue(sha256=name.encode().hex().ljust(64, "0")[:64], size_bytes=1,
                          source_path=f"/in/{name}", watch_root="/in", relative_path=name,
                          mtime_ns=1, pipeline_version="1").job_id


def run_with(config: Config, ledger: Ledger, error: BaseException | None) -> tuple[Worker, Job]:
    def behaviour(_ctx: StageContext) -> None:
        if error is not None:
            raise error

    job_id = enqueue(ledger)
    worker = Worker(config=config, ledger=ledger, stages=[RecordingStage("x", behaviour=behaviour)])
    assert worker.run_once()
    job = ledger.get_job(job_id)
    assert job is not None
    return worker, job


def test_success_ends_done(config: Config, ledger: Ledger) -> None:
    _, job = run_with(config, ledger, None)
    assert job.state is JobState.DONE and job.outcome == "passthrough" and job.attempts == 1


def test_permanent_error_fails_with_kind_and_message(config: Config, ledger: Ledger) -> None:
    _, job = run_with(config, ledger, CorruptImage("the JPEG is truncated"))
    assert (job.state, job.error_kind, job.error_message) == (
        JobState.FAILED, "corrupt_image", "the JPEG is truncated")


def test_transient_error_is_retried_later_until_attempts_run_out(
    make_config: type, ledger: Ledger
) -> None:
    config = make_config(retry={"max_attempts": 2, "base_delay_s": 0.01, "max_delay_s": 0.01})
    _, job = run_with(config, ledger, SourceBusy("locked by SMB"))
    assert job.state is JobState.QUEUED and job.attempts == 1 and job.error_kind == "source_busy"
    time.sleep(0.05)
    worker = Worker(config=config, ledger=ledger,
                    stages=[RecordingStage("x", behaviour=lambda _c: (_ for _ in ()).throw(
                        SourceBusy("still locked")))])
    assert worker.run_once()
    assert ledger.get_job(job.id).state is JobState.FAILED  # type: ignore[union-attr]


def test_infrastructure_error_pauses_worker_and_keeps_attempts(
    config: Config, ledger: Ledger
) -> None:
    worker, job = run_with(config, ledger, OutOfMemory("CUDA out of memory"))
    assert job.state is JobState.QUEUED and job.attempts == 0
    assert worker.paused_until is not None and "out_of_memory" in (worker.pause_reason or "")


def test_typed_skip_and_deferral(config: Config, ledger: Ledger) -> None:
    _, job = run_with(config, ledger, DuplicateImage(7))
    assert (job.state, job.outcome) == (JobState.SKIPPED, "duplicate")
    assert "job 7" in (job.error_message or "")


def test_deferred_job_waits_without_spending_an_attempt(config: Config, ledger: Ledger) -> None:
    _, job = run_with(config, ledger, Deferred("burst still growing", delay_s=60))
    assert job.state is JobState.WAITING and job.attempts == 0


def test_unexpected_exception_is_recorded_as_internal(config: Config, ledger: Ledger) -> None:
    _, job = run_with(config, ledger, ZeroDivisionError("oops"))
    assert job.state is JobState.QUEUED and job.error_kind == "internal"
    assert "ZeroDivisionError" in (job.error_message or "")


def test_stop_interrupts_at_next_progress_and_requeues(config: Config, ledger: Ledger) -> None:
    stop = threading.Event()

    def long_stage(ctx: StageContext) -> None:
        stop.set()  # SIGTERM arrives while the stage runs
        ctx.progress()

    job_id = enqueue(ledger)
    worker = Worker(config=config, ledger=ledger, stop=stop,
                    stages=[RecordingStage("x", behaviour=long_stage)])
    assert worker.run_once()
    job = ledger.get_job(job_id)
    assert job is not None and job.state is JobState.QUEUED and job.attempts == 0


def test_cancel_during_a_stage_stops_the_job(config: Config, ledger: Ledger) -> None:
    def cancelled_meanwhile(ctx: StageContext) -> None:
        ledger.cancel(ctx.job.id)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # heartbeat (every 0.2 s) notices the lost lease
            ctx.progress()
            time.sleep(0.02)
        pytest.fail("progress() never raised after the job was cancelled")

    job_id = enqueue(ledger)
    worker = Worker(config=config, ledger=ledger,
                    stages=[RecordingStage("x", behaviour=cancelled_meanwhile)])
    assert worker.run_once()
    assert ledger.get_job(job_id).state is JobState.CANCELLED  # type: ignore[union-attr]


def test_a_busy_worker_uses_one_transaction_per_job_boundary(
    make_config: Callable[..., Config],
) -> None:
    """Each job's ending is committed with the next claim: N jobs cost N + 1 transactions
    at their boundaries (first claim, N - 1 hand-overs, the last ending) instead of 2N."""
    config = make_config(worker={"heartbeat_s": 60, "lease_s": 120})  # no heartbeats
    engine = create_ledger_engine(config.ledger_url)
    migrate.upgrade(engine)
    engine.dispose()  # every connection from here on is traced
    transactions: list[list[str]] = []

    def record(sql: str) -> None:
        if sql.startswith("BEGIN"):
            transactions.append([])
        elif sql != "COMMIT" and transactions:
            transactions[-1].append(sql)

    @event.listens_for(engine, "connect")
    def trace(dbapi_connection: Any, _record: Any) -> None:
        # The driver reports every statement it runs, whichever path sent it.
        dbapi_connection.set_trace_callback(record)

    ledger = Ledger(engine)
    ids = [enqueue(ledger, f"{n}.jpg") for n in range(4)]
    stop = threading.Event()

    def stop_after_the_last(ctx: StageContext) -> None:
        if ctx.job.id == ids[-1]:
            stop.set()

    worker = Worker(config=config, ledger=ledger, stop=stop,
                    stages=[RecordingStage("x", behaviour=stop_after_the_last)])
    transactions.clear()
    worker.run()
    boundaries = [t for t in transactions
                  if not any("stage_runs" in sql or "workers" in sql for sql in t)]
    assert {ledger.get_job(i).state for i in ids} == {JobState.DONE}  # type: ignore[union-attr]
    assert [len(statements) for statements in boundaries] == [1, 2, 2, 2, 1]
    assert all(sql.startswith("UPDATE jobs") for t in boundaries for sql in t)
    engine.dispose()


def test_error_types_all_have_distinct_kinds() -> None:
    kinds = [cls.kind for cls in _subclasses(OpenEyesError)]
    assert len(kinds) == len(set(kinds))


def _subclasses(cls: type) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found.append(sub)
        found.extend(_subclasses(sub))
    return found


def test_stages_that_cannot_be_built_pause_the_worker_with_the_reason(
    config: Config, ledger: Ledger
) -> None:
    def broken() -> list:
        raise RuntimeError("model file unreadable")

    job_id = enqueue(ledger)
    worker = Worker(config=config, ledger=ledger, stages=broken)
    assert not worker.run_once()
    assert worker.paused_until is not None
    assert "model file unreadable" in (worker.pause_reason or "")
    assert ledger.get_job(job_id).state is JobState.QUEUED  # type: ignore[union-attr]
