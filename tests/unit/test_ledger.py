"""The ledger's contract, run against SQLite and (when reachable) PostgreSQL."""

from __future__ import annotations

import dataclasses
import os
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import bindparam, text, update
from sqlalchemy.exc import IntegrityError

from openeyesd.config import Config
from openeyesd.errors import CorruptImage, OutOfMemory, SourceBusy
from openeyesd.ledger import (
    Ending,
    EnqueueItem,
    EnqueueResult,
    JobState,
    LeaseLost,
    Ledger,
    ParkedCounts,
    create_ledger_engine,
    migrate,
    utcnow,
)
from openeyesd.ledger.schema import jobs

_TIME = jobs.c.updated_at.type

POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def _postgres_ledger() -> Iterator[Ledger]:
    """A schema of its own per test, so concurrent runs on one server (two checkouts, CI and
    a developer) never drop each other's tables."""
    pytest.importorskip("psycopg")
    schema = f"openeyes_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = create_ledger_engine(POSTGRES_URL)
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:  # noqa: BLE001 - any connection failure means "not available"
        admin.dispose()
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_URL}: {exc}")
    engine = create_ledger_engine(f"{POSTGRES_URL}?options=-csearch_path%3D{schema}")
    try:
        migrate.upgrade(engine)
        yield Ledger(engine)
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "sqlite-sqlalchemy", "postgresql"])
def any_ledger(request: pytest.FixtureRequest, config: Config) -> Iterator[Ledger]:
    """SQLite runs its hot path on the driver by default (``hotpath.py``); the contract is
    also run with it through SQLAlchemy, the path PostgreSQL takes."""
    if request.param == "sqlite":
        yield request.getfixturevalue("ledger")
    elif request.param == "sqlite-sqlalchemy":
        engine = create_ledger_engine(config.ledger_url)
        migrate.upgrade(engine)
        yield Ledger(engine, hot_path_on_driver=False)
        engine.dispose()
    else:
        yield from _postgres_ledger()


def add(ledger: Ledger, name: str, content: str | None = None, **kwargs: object) -> int:
    sha = (content or name).encode().hex().ljust(64, "0")[:64]
    result = ledger.enqueue(sha256=sha, size_bytes=10, source_path=f"/in/{name}",
                            watch_root="/in", relative_path=name, mtime_ns=1,
                            pipeline_version="1", **kwargs)  # type: ignore[arg-type]
    return result.job_id


def test_same_content_at_two_paths_is_one_job(any_ledger: Ledger) -> None:
    first = add(any_ledger, "a.jpg", "same")
    second = any_ledger.enqueue(sha256=b"same".hex().ljust(64, "0"), size_bytes=10,
                                source_path="/in/renamed.jpg", watch_root="/in",
                                relative_path="renamed.jpg", mtime_ns=2, pipeline_version="1")
    assert second.job_id == first and not second.created
    assert any_ledger.source_paths(first) == ["/in/a.jpg", "/in/renamed.jpg"]
    assert any_ledger.is_known_source("/in/renamed.jpg", 10, 2)
    assert not any_ledger.is_known_source("/in/renamed.jpg", 10, 3)


def test_claim_takes_each_job_once_across_concurrent_workers(any_ledger: Ledger) -> None:
    ids = {add(any_ledger, f"{n}.jpg") for n in range(30)}
    claimed: list[int] = []
    lock = threading.Lock()

    def work(slot: int) -> None:
        while (job := any_ledger.claim(f"h:1/{slot}", lease_s=30, work_root="/w")) is not None:
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=work, args=(slot,)) for slot in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == sorted(ids)


def test_claim_sets_lease_attempt_and_work_dir(any_ledger: Ledger) -> None:
    job_id = add(any_ledger, "a.jpg")
    job = any_ledger.claim("h:1/0", lease_s=30, work_root="/w")
    assert job is not None and job.id == job_id
    assert job.state is JobState.RUNNING and job.attempts == 1
    assert job.lease_owner == "h:1/0" and job.work_dir == f"/w/{job_id}"
    assert job.lease_expires_at is not None and job.lease_expires_at > utcnow()
    assert any_ledger.claim("h:1/1", lease_s=30, work_root="/w") is None


def test_future_jobs_are_not_claimed_before_their_time(any_ledger: Ledger) -> None:
    job_id = add(any_ledger, "a.jpg")
    job = any_ledger.claim("w", lease_s=30, work_root="/w")
    assert job is not None
    any_ledger.retry_later(job_id, "w", delay_s=3600, error=SourceBusy("busy"))
    assert any_ledger.claim("w", lease_s=30, work_root="/w") is None
    assert any_ledger.get_job(job_id).error_kind == "source_busy"  # type: ignore[union-attr]


def test_infrastructure_requeue_gives_the_attempt_back(any_ledger: Ledger) -> None:
    job_id = add(any_ledger, "a.jpg")
    any_ledger.claim("w", lease_s=30, work_root="/w")
    any_ledger.retry_later(job_id, "w", delay_s=0, error=OutOfMemory("gpu"), count_attempt=False)
    job = any_ledger.get_job(job_id)
    assert job is not None and job.attempts == 0 and job.state is JobState.QUEUED


def test_lost_lease_blocks_every_later_write(any_ledger: Ledger) -> None:
    job_id = add(any_ledger, "a.jpg")
    any_ledger.claim("w1", lease_s=30, work_root="/w")
    assert any_ledger.cancel(job_id)
    with pytest.raises(LeaseLost):
        any_ledger.heartbeat(job_id, "w1", lease_s=30)
    with pytest.raises(LeaseLost):
        any_ledger.complete(job_id, "w1", state=JobState.DONE, outcome="x", output_path=None)
    assert any_ledger.get_job(job_id).state is JobState.CANCELLED  # type: ignore[union-attr]


def test_reclaim_requeues_expired_leases_and_fails_repeat_offenders(any_ledger: Ledger) -> None:
    alive, dead, poison = add(any_ledger, "a.jpg"), add(any_ledger, "b.jpg"), add(any_ledger, "c")
    for owner in ("w1", "w2", "w3"):
        any_ledger.claim(owner, lease_s=30, work_root="/w")
    past = utcnow() - timedelta(seconds=1)
    with any_ledger.engine.begin() as conn:
        conn.execute(update(jobs).where(jobs.c.id.in_([dead, poison]))
                     .values(lease_expires_at=past))
        conn.execute(update(jobs).where(jobs.c.id == poison).values(attempts=3))
    assert sorted(any_ledger.reclaim_stalled(max_attempts=3)) == sorted([dead, poison])
    states = {j.id: j for j in any_ledger.list_jobs()}
    assert states[alive].state is JobState.RUNNING
    assert states[dead].state is JobState.QUEUED and states[dead].lease_owner is None
    assert states[poison].state is JobState.FAILED and states[poison].error_kind == "stalled"


def test_release_leases_of_dead_owners(any_ledger: Ledger) -> None:
    job_id = add(any_ledger, "a.jpg")
    any_ledger.claim("host:123/0", lease_s=30, work_root="/w")
    assert any_ledger.release_leases(["host:123/0"]) == [job_id]
    assert any_ledger.claim("host:456/0", lease_s=30, work_root="/w") is not None


def test_stage_runs_record_input_hash_before_and_outcome_after(any_ledger: Ledger) -> None:
    job_id = add(any_ledger, "a.jpg")
    any_ledger.claim("w", lease_s=30, work_root="/w")
    run = any_ledger.start_stage(job_id, "w", stage="ingest", input_hash="abc")
    (started,) = any_ledger.stage_runs(job_id)
    assert started.status == "running" and started.input_hash == "abc"
    any_ledger.finish_stage(run, artifact_path="/w/1/ingest.json", duration_s=0.5,
                            error=CorruptImage("truncated"))
    (finished,) = any_ledger.stage_runs(job_id)
    assert finished.status == "failed" and finished.error_kind == "corrupt_image"
    assert any_ledger.get_job(job_id).current_stage == "ingest"  # type: ignore[union-attr]


def test_retry_failed_and_force_requeue(any_ledger: Ledger) -> None:
    job_id = add(any_ledger, "a.jpg")
    any_ledger.claim("w", lease_s=30, work_root="/w")
    any_ledger.fail(job_id, "w", CorruptImage("bad"))
    assert any_ledger.retry() == [job_id]
    job = any_ledger.claim("w", lease_s=30, work_root="/w")
    assert job is not None and job.attempts == 1
    any_ledger.complete(job_id, "w", state=JobState.DONE, outcome="fixed", output_path="/o")
    assert not add_result(any_ledger, force=False).requeued
    assert add_result(any_ledger, force=True).requeued
    assert any_ledger.get_job(job_id).state is JobState.QUEUED  # type: ignore[union-attr]


def add_result(ledger: Ledger, *, force: bool) -> EnqueueResult:
    return ledger.enqueue(sha256=b"a.jpg".hex().ljust(64, "0")[:64], size_bytes=10,
                          source_path="/in/a.jpg", watch_root="/in", relative_path="a.jpg",
                          mtime_ns=1, pipeline_version="1", force=force)


def test_adopting_a_real_hash_detects_duplicates(any_ledger: Ledger) -> None:
    original = add(any_ledger, "a.jpg", "content")
    placeholder = add(any_ledger, "b.jpg", "placeholder")
    any_ledger.claim("w", lease_s=30, work_root="/w")  # claims `original` (older)
    any_ledger.claim("w2", lease_s=30, work_root="/w")
    twin = any_ledger.adopt_content_hash(placeholder, "w2",
                                         b"content".hex().ljust(64, "0")[:64])
    assert twin == original


def test_stats_counts_and_running_jobs(any_ledger: Ledger) -> None:
    for n in range(3):
        add(any_ledger, f"{n}.jpg")
    job = any_ledger.claim("w", lease_s=30, work_root="/w")
    assert job is not None
    any_ledger.start_stage(job.id, "w", stage="detect", input_hash="h")
    any_ledger.register_worker("w", hostname="h", pid=1, backends="{}")
    stats = any_ledger.stats()
    assert stats.counts == {"queued": 2, "running": 1}
    assert stats.queue_depth == 2 and stats.oldest_queued_at is not None
    assert [(r.id, r.stage) for r in stats.running] == [(job.id, "detect")]
    assert [w.id for w in stats.workers] == ["w"]


def test_sqlite_tolerates_a_second_process_writing(config: Config, ledger: Ledger) -> None:
    """openeyesctl opens its own engine while the daemon writes: no 'database is locked'."""
    other = Ledger(create_ledger_engine(config.ledger_url))
    errors: list[BaseException] = []

    def hammer(target: Ledger, prefix: str) -> None:
        try:
            for n in range(40):
                add(target, f"{prefix}{n}.jpg")
                target.claim(prefix, lease_s=30, work_root="/w")
                target.stats()
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(lg, p)) for lg, p in ((ledger, "a"),
                                                                         (other, "b"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sum(ledger.stats().counts.values()) == 80
    with ledger.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_postgres_url_is_used_as_given(tmp_path: Path) -> None:
    engine = create_ledger_engine("sqlite:///" + str(tmp_path / "sub" / "l.db"))
    assert (tmp_path / "sub").is_dir() and engine.dialect.name == "sqlite"


def test_a_new_pipeline_version_does_not_count_old_sightings_as_known(config: Config) -> None:
    engine = create_ledger_engine(config.ledger_url)
    migrate.upgrade(engine)
    old, new = Ledger(engine, pipeline_version="1"), Ledger(engine, pipeline_version="2")
    add(old, "a.jpg")
    assert old.is_known_source("/in/a.jpg", 10, 1)
    assert not new.is_known_source("/in/a.jpg", 10, 1)


# -- batch intake: enqueue_many and known_sources ------------------------------------------------


def item(name: str, content: str | None = None, **kwargs: object) -> EnqueueItem:
    values: dict[str, object] = dict(
        sha256=(content or name).encode().hex().ljust(64, "0")[:64], size_bytes=10,
        source_path=f"/in/{name}", watch_root="/in", relative_path=name, mtime_ns=1,
        pipeline_version="1",
    )
    return EnqueueItem(**(values | kwargs))  # type: ignore[arg-type]


def test_enqueue_many_creates_jobs_and_dedupes_within_the_batch(any_ledger: Ledger) -> None:
    existing = add(any_ledger, "old.jpg", "old")
    results = any_ledger.enqueue_many([
        item("a.jpg"), item("shoot/b.jpg"), item("copy.jpg", "a.jpg"), item("again.jpg", "old"),
    ])
    a, b, copy, again = results
    assert a.created and b.created and a.job_id != b.job_id
    assert copy == EnqueueResult(a.job_id, created=False)
    assert again == EnqueueResult(existing, created=False)
    assert any_ledger.source_paths(a.job_id) == ["/in/a.jpg", "/in/copy.jpg"]
    assert any_ledger.source_paths(existing) == ["/in/again.jpg", "/in/old.jpg"]
    job_b = any_ledger.get_job(b.job_id)
    assert job_b is not None and job_b.state is JobState.QUEUED
    assert job_b.session_folder == "/in/shoot" and job_b.relative_path == "shoot/b.jpg"
    assert any_ledger.enqueue_many([]) == []


def test_enqueue_many_is_one_transaction(any_ledger: Ledger) -> None:
    broken = item("b.jpg", sha256=None)  # NOT NULL: the database refuses the second item
    with pytest.raises(IntegrityError):
        any_ledger.enqueue_many([item("a.jpg"), broken, item("c.jpg")])
    assert any_ledger.list_jobs() == []
    assert not any_ledger.is_known_source("/in/a.jpg", 10, 1)


def test_enqueue_many_force_requeues_only_finished_jobs(any_ledger: Ledger) -> None:
    done, running = add(any_ledger, "done.jpg"), add(any_ledger, "run.jpg")
    for owner in ("w1", "w2"):
        any_ledger.claim(owner, lease_s=30, work_root="/w")
    any_ledger.complete(done, "w1", state=JobState.DONE, outcome="fixed", output_path="/o")
    moved = item("moved/done.jpg", "done.jpg", force=True)
    results = any_ledger.enqueue_many([moved, item("run.jpg", force=True)])
    assert results == [EnqueueResult(done, created=False, requeued=True),
                       EnqueueResult(running, created=False, requeued=False)]
    job = any_ledger.get_job(done)
    assert job is not None and job.state is JobState.QUEUED and job.attempts == 0
    assert job.relative_path == "moved/done.jpg" and job.session_folder == "/in/moved"
    assert job.finished_at is None and job.outcome is None
    assert any_ledger.get_job(running).state is JobState.RUNNING  # type: ignore[union-attr]


def test_a_path_seen_again_replaces_its_record(any_ledger: Ledger) -> None:
    first = any_ledger.enqueue_many([item("a.jpg", "v1")])[0].job_id
    second = any_ledger.enqueue_many([item("a.jpg", "v2", mtime_ns=2, size_bytes=11)])[0]
    assert second.created and second.job_id != first
    assert any_ledger.known_sources(["/in/a.jpg"]) == {"/in/a.jpg": (11, 2)}
    assert any_ledger.source_paths(first) == []


def test_concurrent_enqueuers_of_the_same_content_make_one_job(any_ledger: Ledger) -> None:
    results: list[EnqueueResult] = []
    barrier = threading.Barrier(4)

    def enqueue(slot: int) -> None:
        barrier.wait()
        outcome = any_ledger.enqueue_many([item(f"{slot}.jpg", "same")])
        results.extend(outcome)

    threads = [threading.Thread(target=enqueue, args=(slot,)) for slot in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({r.job_id for r in results}) == 1 and sum(r.created for r in results) == 1
    assert len(any_ledger.source_paths(results[0].job_id)) == 4


def test_known_sources_answers_many_paths_at_once(any_ledger: Ledger) -> None:
    any_ledger.enqueue_many([item(f"{n}.jpg", mtime_ns=n) for n in range(0, 1200, 100)])
    asked = [f"/in/{n}.jpg" for n in range(1200)] + ["/in/0.jpg"]  # > one chunk, a repeat
    known = any_ledger.known_sources(asked)
    assert known == {f"/in/{n}.jpg": (10, n) for n in range(0, 1200, 100)}
    assert any_ledger.known_sources([]) == {}


def test_known_sources_counts_only_this_pipeline_version(config: Config) -> None:
    engine = create_ledger_engine(config.ledger_url)
    migrate.upgrade(engine)
    old, new = Ledger(engine, pipeline_version="1"), Ledger(engine, pipeline_version="2")
    old.enqueue_many([item("a.jpg")])
    assert old.known_sources(["/in/a.jpg"]) == {"/in/a.jpg": (10, 1)}
    assert new.known_sources(["/in/a.jpg"]) == {}
    assert Ledger(engine).known_sources(["/in/a.jpg"]) == {"/in/a.jpg": (10, 1)}


def test_every_claim_restarts_the_clock(any_ledger: Ledger) -> None:
    job_id = add(any_ledger, "a.jpg")
    first = any_ledger.claim("w", lease_s=30, work_root="/w")
    assert first is not None and first.started_at is not None
    any_ledger.retry_later(job_id, "w", delay_s=0, error=SourceBusy("busy"))
    second = any_ledger.claim("w2", lease_s=30, work_root="/w2")
    assert second is not None and second.id == job_id and second.attempts == 2
    assert second.started_at is not None and second.started_at > first.started_at
    assert second.work_dir == f"/w2/{job_id}" and second.lease_owner == "w2"


def test_parked_jobs_are_claimed_when_due_and_stages_need_the_lease(any_ledger: Ledger) -> None:
    job_id = add(any_ledger, "a.jpg")
    any_ledger.claim("w", lease_s=30, work_root="/w")
    any_ledger.retry_later(job_id, "w", delay_s=0, error=SourceBusy("burst"),
                           state=JobState.WAITING)
    assert any_ledger.get_job(job_id).state is JobState.WAITING  # type: ignore[union-attr]
    job = any_ledger.claim("w", lease_s=30, work_root="/w")
    assert job is not None and job.id == job_id
    with pytest.raises(LeaseLost):
        any_ledger.start_stage(job_id, "someone-else", stage="detect", input_hash="h")
    run = any_ledger.start_stage(job_id, "w", stage="detect", input_hash="h")
    any_ledger.finish_stage(run, artifact_path="/w/x.json", duration_s=0.1)
    (stage,) = any_ledger.stage_runs(job_id)
    assert stage.status == "done" and stage.attempt == 2 and stage.error_kind is None


# -- finish_and_claim: one transaction per job boundary ---------------------------------------

DONE = Ending.finished(JobState.DONE, outcome="fixed", output_path="/o/a.jpg")


def test_finish_and_claim_ends_the_job_and_leases_the_next(any_ledger: Ledger) -> None:
    first_id, second_id = add(any_ledger, "a.jpg"), add(any_ledger, "b.jpg")
    first = any_ledger.claim("w", lease_s=30, work_root="/w")
    assert first is not None and first.id == first_id
    second = any_ledger.finish_and_claim(first_id, "w", ending=DONE, lease_s=30, work_root="/w")
    assert second is not None and second.id == second_id
    assert second.state is JobState.RUNNING and second.lease_owner == "w"
    assert second.attempts == 1 and second.work_dir == f"/w/{second_id}"
    ended = any_ledger.get_job(first_id)
    assert ended is not None and ended.state is JobState.DONE
    assert (ended.outcome, ended.output_path) == ("fixed", "/o/a.jpg")
    assert ended.lease_owner is None and ended.finished_at is not None
    last = any_ledger.finish_and_claim(second_id, "w", ending=DONE, lease_s=30, work_root="/w")
    assert last is None
    assert any_ledger.get_job(second_id).state is JobState.DONE  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("ending", "state", "attempts"),
    [
        (Ending.failed(CorruptImage("truncated")), JobState.FAILED, 1),
        (Ending.finished(JobState.SKIPPED, outcome="no_faces", output_path=None, note="none"),
         JobState.SKIPPED, 1),
        (Ending.retry(SourceBusy("locked"), delay_s=3600), JobState.QUEUED, 1),
        (Ending.retry(OutOfMemory("gpu"), delay_s=3600, count_attempt=False), JobState.QUEUED, 0),
        (Ending.retry(SourceBusy("burst"), delay_s=3600, count_attempt=False,
                      state=JobState.WAITING), JobState.WAITING, 0),
    ],
)
def test_finish_and_claim_applies_every_kind_of_ending(
    any_ledger: Ledger, ending: Ending, state: JobState, attempts: int
) -> None:
    job_id, other = add(any_ledger, "a.jpg"), add(any_ledger, "b.jpg")
    any_ledger.claim("w", lease_s=30, work_root="/w")
    following = any_ledger.finish_and_claim(job_id, "w", ending=ending, lease_s=30,
                                            work_root="/w")
    assert following is not None and following.id == other  # a delayed job is not due
    ended = any_ledger.get_job(job_id)
    assert ended is not None and (ended.state, ended.attempts) == (state, attempts)
    assert ended.error_kind == ending.error_kind and ended.lease_owner is None


def test_finish_and_claim_may_take_back_a_job_retried_at_once(any_ledger: Ledger) -> None:
    job_id = add(any_ledger, "a.jpg")
    any_ledger.claim("w", lease_s=30, work_root="/w")
    again = any_ledger.finish_and_claim(job_id, "w", ending=Ending.retry(
        SourceBusy("busy"), delay_s=0), lease_s=30, work_root="/w")
    assert again is not None and again.id == job_id and again.attempts == 2
    assert again.error_kind == "source_busy"


def test_finish_and_claim_with_a_lost_lease_claims_nothing(any_ledger: Ledger) -> None:
    job_id, waiting = add(any_ledger, "a.jpg"), add(any_ledger, "b.jpg")
    any_ledger.claim("w", lease_s=30, work_root="/w")
    assert any_ledger.cancel(job_id)
    with pytest.raises(LeaseLost):
        any_ledger.finish_and_claim(job_id, "w", ending=DONE, lease_s=30, work_root="/w")
    assert any_ledger.get_job(job_id).state is JobState.CANCELLED  # type: ignore[union-attr]
    assert any_ledger.get_job(waiting).state is JobState.QUEUED  # type: ignore[union-attr]
    taken = any_ledger.claim("w", lease_s=30, work_root="/w")
    assert taken is not None and taken.id == waiting


def test_finish_and_claim_is_one_transaction(any_ledger: Ledger) -> None:
    """A failure after the ending was written takes the ending back: the job is still running
    under its lease, so it is reclaimed if the worker dies now (at-least-once)."""
    job_id = add(any_ledger, "a.jpg")
    add(any_ledger, "b.jpg")
    any_ledger.claim("w", lease_s=30, work_root="/w")
    # A claim the database refuses (NOT NULL), run after the ending in the same transaction.
    refused = update(jobs).values(sha256=None, updated_at=bindparam("b_now", type_=_TIME))
    any_ledger._sql = dataclasses.replace(any_ledger._sql, claim=refused.returning(jobs.c.id))
    with pytest.raises(IntegrityError):
        any_ledger.finish_and_claim(job_id, "w", ending=DONE, lease_s=30, work_root="/w")
    job = any_ledger.get_job(job_id)
    assert job is not None and job.state is JobState.RUNNING and job.lease_owner == "w"


def test_claim_takes_the_oldest_due_job_of_either_runnable_state(any_ledger: Ledger) -> None:
    ids = [add(any_ledger, f"{n}.jpg") for n in range(4)]
    due = {ids[0]: (JobState.QUEUED, 1), ids[1]: (JobState.WAITING, 3),
           ids[2]: (JobState.QUEUED, 2), ids[3]: (JobState.WAITING, -5)}  # minutes ago
    with any_ledger.engine.begin() as conn:
        for job_id, (state, minutes) in due.items():
            conn.execute(update(jobs).where(jobs.c.id == job_id).values(
                state=state, next_run_at=utcnow() - timedelta(minutes=minutes)))
    order = [any_ledger.claim("w", lease_s=30, work_root="/w") for _ in range(4)]
    assert [job.id if job else None for job in order] == [ids[1], ids[2], ids[0], None]


def test_endings_refuse_states_they_cannot_lead_to() -> None:
    with pytest.raises(ValueError):
        Ending(JobState.RUNNING)
    with pytest.raises(ValueError):
        Ending.finished(JobState.FAILED, outcome="x", output_path=None)
    with pytest.raises(ValueError):
        Ending.retry(SourceBusy("x"), delay_s=0, state=JobState.DONE)


# -- GPU stage grouping: jobs parked until their stage's model is loaded ------------------------


def park(ledger: Ledger, stage: str, owner: str = "w", prefer: tuple[str, ...] = ()) -> int:
    """Claim the next job and park it before ``stage``; returns its id."""
    job = ledger.claim(owner, lease_s=30, work_root="/w", prefer=prefer)
    assert job is not None
    ledger.settle(job.id, owner, Ending.parked(stage))
    return job.id


def test_parking_requeues_at_once_refunds_the_attempt_and_keeps_the_first_wait(
    any_ledger: Ledger,
) -> None:
    job_id = add(any_ledger, "a.jpg")
    park(any_ledger, "generate")
    parked = any_ledger.get_job(job_id)
    assert parked is not None and parked.state is JobState.QUEUED and parked.attempts == 0
    assert parked.next_stage == "generate" and parked.lease_owner is None
    assert parked.parked_at is not None and parked.next_run_at <= utcnow()
    assert parked.error_kind is None  # waiting for a model is not an error
    park(any_ledger, "restore", prefer=("generate",))  # ran generate, now waits again
    again = any_ledger.get_job(job_id)
    assert again is not None and again.next_stage == "restore"
    assert again.parked_at == parked.parked_at and again.attempts == 0
    claimed = any_ledger.claim("w", lease_s=30, work_root="/w")
    assert claimed is not None and claimed.attempts == 1 and claimed.parked_at == parked.parked_at
    any_ledger.settle(job_id, "w", DONE)
    done = any_ledger.get_job(job_id)
    assert done is not None and (done.next_stage, done.parked_at) == (None, None)


def test_claim_prefers_jobs_parked_before_the_given_stages_in_their_order(
    any_ledger: Ledger,
) -> None:
    ids = [add(any_ledger, f"{n}.jpg") for n in range(4)]
    assert park(any_ledger, "restore") == ids[0]
    assert park(any_ledger, "generate") == ids[1]

    def claim(*prefer: str) -> int | None:
        job = any_ledger.claim("w", lease_s=30, work_root="/w", prefer=prefer)
        return None if job is None else job.id

    assert claim("generate", "restore") == ids[1]
    assert claim("detect", "restore") == ids[0]
    assert claim("restore") == ids[2]  # none parked there any more: the oldest due job
    assert claim() == ids[3]
    assert claim("generate") is None


def test_without_a_preference_parked_jobs_take_their_turn_oldest_first(
    any_ledger: Ledger,
) -> None:
    ids = [add(any_ledger, f"{n}.jpg") for n in range(3)]
    park(any_ledger, "generate")  # ids[0]: due again now, behind the two older jobs
    order = [any_ledger.claim("w", lease_s=30, work_root="/w") for _ in range(4)]
    assert [job.id if job else None for job in order] == [ids[1], ids[2], ids[0], None]


def test_finish_and_claim_parks_and_prefers_in_one_transaction(any_ledger: Ledger) -> None:
    first, second = add(any_ledger, "a.jpg"), add(any_ledger, "b.jpg")
    park(any_ledger, "generate")
    assert any_ledger.claim("w", lease_s=30, work_root="/w").id == second  # type: ignore[union-attr]
    following = any_ledger.finish_and_claim(second, "w", ending=Ending.parked("restore"),
                                            lease_s=30, work_root="/w", prefer=("generate",))
    assert following is not None and following.id == first
    assert any_ledger.get_job(second).next_stage == "restore"  # type: ignore[union-attr]


def test_parked_counts_count_queued_parked_jobs_per_stage_and_unparked_due_work(
    any_ledger: Ledger,
) -> None:
    assert any_ledger.parked_counts() == ParkedCounts(per_stage={}, unparked_due=False)
    for n in range(3):
        add(any_ledger, f"{n}.jpg")
    assert any_ledger.parked_counts() == ParkedCounts(per_stage={}, unparked_due=True)
    park(any_ledger, "generate")
    park(any_ledger, "generate")
    park(any_ledger, "restore")
    assert any_ledger.parked_counts() == ParkedCounts(
        per_stage={"generate": 2, "restore": 1}, unparked_due=False)
    any_ledger.claim("w", lease_s=30, work_root="/w", prefer=("restore",))  # running: not counted
    later = add(any_ledger, "later.jpg")
    any_ledger.claim("w", lease_s=30, work_root="/w")  # the 2 parked are older: one is taken
    counts = any_ledger.parked_counts()
    assert counts.per_stage == {"generate": 1} and counts.unparked_due
    assert any_ledger.get_job(later).state is JobState.QUEUED  # type: ignore[union-attr]


def test_every_other_way_back_to_the_queue_ends_the_wait(any_ledger: Ledger) -> None:
    ids = [add(any_ledger, f"{n}.jpg") for n in range(4)]
    for _ in ids:
        park(any_ledger, "generate")
    assert any_ledger.parked_counts().per_stage == {"generate": 4}
    errors = (Ending.retry(SourceBusy("locked"), delay_s=3600),
              Ending.retry(OutOfMemory("gpu"), delay_s=0, count_attempt=False))
    for ending in errors:
        job = any_ledger.claim("w", lease_s=30, work_root="/w", prefer=("generate",))
        assert job is not None
        any_ledger.settle(job.id, "w", ending)
    dead = any_ledger.claim("dead:1/0", lease_s=30, work_root="/w", prefer=("generate",))
    assert dead is not None and any_ledger.release_leases(["dead:1/0"]) == [dead.id]
    (cancelled,) = [i for i in ids if any_ledger.get_job(i).next_stage]  # type: ignore[union-attr]
    assert any_ledger.cancel(cancelled)
    for job_id in ids:
        job = any_ledger.get_job(job_id)
        assert job is not None and (job.next_stage, job.parked_at) == (None, None), job
    assert any_ledger.parked_counts().per_stage == {}


def test_only_a_queued_ending_names_a_next_stage() -> None:
    with pytest.raises(ValueError, match="waits for a stage"):
        Ending(JobState.WAITING, next_stage="generate")
    assert Ending.parked("generate").requeues and not Ending.parked("generate").count_attempt
