"""The SQLite driver path gives exactly what SQLAlchemy's path gives, statement by statement."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine
from sqlalchemy.exc import IntegrityError

from openeyesd.ledger import JobState, StageStatus, create_ledger_engine, migrate
from openeyesd.ledger.hotpath import (
    DriverHotPath,
    EngineHotPath,
    HotPath,
    HotTransaction,
    hot_path_for,
    precompile,
)
from openeyesd.ledger.statements import Statements, build_statements

T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
SQL = build_statements("sqlite", by_version=False)
TABLES = ("jobs", "source_files", "stage_runs")


def _engine(path: Path) -> Iterator[Engine]:
    engine = create_ledger_engine(f"sqlite:///{path}")
    migrate.upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def twins(tmp_path: Path) -> Iterator[tuple[Engine, Engine]]:
    """Two empty ledgers: one for each path."""
    for first in _engine(tmp_path / "through_sqlalchemy.db"):
        for second in _engine(tmp_path / "on_driver.db"):
            yield first, second


def _job(name: str, at: datetime) -> dict[str, Any]:
    return {"sha256": name.encode().hex().ljust(64, "0"), "pipeline_version": "1",
            "size_bytes": 10, "source_path": f"/in/{name}", "watch_root": "/in",
            "relative_path": name, "session_folder": "/in", "state": JobState.QUEUED,
            "attempts": 0, "next_run_at": at, "created_at": at, "updated_at": at}


def _owned(job_id: int, at: datetime, **more: Any) -> dict[str, Any]:
    return {"b_job_id": job_id, "b_owner": "w", "b_now": at, **more}


def _claim(at: datetime) -> dict[str, Any]:
    return {"b_now": at, "b_owner": "w", "b_expires": at + timedelta(seconds=30),
            "b_work_prefix": "/w/"}


def _errors(kind: str) -> dict[str, Any]:
    return {"b_error_kind": kind, "b_error_message": f"{kind}!"}


def _intake(tx: HotTransaction, sql: Statements) -> list[Any]:
    a, b = _job("a.jpg", T0), _job("b.jpg", T0 + timedelta(seconds=1))
    sources = [{"path": f"/in/{n}", "size_bytes": 10, "mtime_ns": 5, "sha256": a["sha256"],
                "job_id": 1, "first_seen_at": T0} for n in ("a.jpg", "copy.jpg")]
    returned = [tx.first(sql.insert_job, a), tx.first(sql.insert_job, b)]
    tx.many(sql.upsert_source, sources[:1])
    return returned + [
        tx.first(sql.insert_job, a),  # the same content again: nothing inserted
        tx.first(sql.find_job, {"b_sha256": a["sha256"], "b_version": "1"}),
        tx.many(sql.upsert_source, sources),  # one new path, one replaced
    ]


def _work(tx: HotTransaction, sql: Statements) -> list[Any]:
    t1, t2, t3 = (T0 + timedelta(minutes=n) for n in (1, 2, 3))
    run = {"job_id": 1, "stage": "ingest", "attempt": 1, "status": StageStatus.RUNNING,
           "input_hash": "h", "started_at": t1}
    done = {"b_run_id": 1, "b_now": t2, "b_duration_s": 0.5, "b_artifact_path": "/w/1/x"}
    ending = {"b_state": JobState.DONE, "b_outcome": "fixed", "b_output_path": "/o/a.jpg",
              **_errors("none")}
    return [
        tx.first(sql.claim, _claim(t1)),
        tx.rowcount(sql.heartbeat, _owned(1, t2, b_expires=t3)),
        tx.first(sql.start_stage_job, _owned(1, t2, b_stage="ingest")),
        tx.first(sql.start_stage_run, run),
        tx.rowcount(sql.finish_stage_done, done),
        tx.first(sql.start_stage_run, run | {"stage": "detect"}),
        tx.rowcount(sql.finish_stage_failed, done | {"b_run_id": 2, "b_status": "failed",
                                                     **_errors("corrupt_image")}),
        tx.rowcount(sql.end, _owned(1, t2, **ending)),
        tx.rowcount(sql.end, _owned(1, t2, **ending)),  # lease gone: 0 rows
    ]


def _requeue(tx: HotTransaction, sql: Statements) -> list[Any]:
    t4, t5 = T0 + timedelta(minutes=4), T0 + timedelta(minutes=5)
    back = {"b_state": JobState.WAITING, "b_next_run_at": t5, **_errors("source_busy")}
    reset = {"b_job_id": 1, "b_now": t5, "b_source_path": "/in/moved.jpg",
             "b_watch_root": "/in", "b_session_folder": "/in/m", "b_relative_path": "m.jpg"}
    return [
        tx.first(sql.claim, _claim(t4)),
        tx.rowcount(sql.retry_later_counted, _owned(2, t4, **back)),
        tx.first(sql.claim, _claim(t5)),
        tx.rowcount(sql.retry_later_refunded, _owned(2, t5, **back)),
        tx.first(sql.claim, _claim(T0)),  # nothing due yet
        tx.rowcount(sql.reset_job, reset),
    ]


def _parking(tx: HotTransaction, sql: Statements) -> list[Any]:
    t6, t7 = T0 + timedelta(minutes=6), T0 + timedelta(minutes=7)
    return [
        tx.first(sql.claim, _claim(t6)),  # job 1, requeued by the reset above
        tx.rowcount(sql.park, _owned(1, t6, b_next_stage="generate")),
        tx.first(sql.claim_parked, _claim(t7) | {"b_stage": "restore"}),  # none parked there
        tx.first(sql.claim_parked, _claim(t7) | {"b_stage": "generate"}),
        tx.rowcount(sql.park, _owned(1, t7, b_next_stage="restore")),  # keeps its first wait
    ]


def _play(path: HotPath) -> list[Any]:
    """Every hot-path statement, in the transactions a ledger would group them in."""
    returned: list[Any] = []
    for step in (_intake, _work, _requeue, _parking):
        with path.write() as tx:
            returned += step(tx, SQL)
    return [dict(r) if isinstance(r, Mapping) else r for r in returned]


def _stored(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Rows as SQLite stores them (datetimes as text): bind processing must match too."""
    raw = engine.raw_connection()
    try:
        return {t: raw.driver_connection.execute(  # type: ignore[union-attr]
            f"SELECT * FROM {t} ORDER BY 1").fetchall() for t in TABLES}
    finally:
        raw.close()


def test_both_paths_return_and_store_identical_rows(twins: tuple[Engine, Engine]) -> None:
    through, on_driver = twins
    expected = _play(EngineHotPath(through))
    got = _play(DriverHotPath(on_driver))
    assert got == expected
    claimed = expected[5]
    assert claimed["id"] == 1 and claimed["state"] == JobState.RUNNING
    assert claimed["heartbeat_at"] == T0 + timedelta(minutes=1)  # aware UTC, as given
    assert expected[2] is None and expected[18] is None and expected[13] == 0
    parked = expected[23]
    assert parked["id"] == 1 and parked["next_stage"] == "generate" and parked["attempts"] == 1
    assert parked["parked_at"] == T0 + timedelta(minutes=6) and expected[22] is None
    assert expected[21] == expected[24] == 1
    stored = _stored(on_driver)
    assert stored == _stored(through)
    assert len(stored["jobs"]) == 2 and len(stored["source_files"]) == 2


def test_driver_errors_are_sqlalchemy_errors(twins: tuple[Engine, Engine]) -> None:
    _, engine = twins
    with pytest.raises(IntegrityError), DriverHotPath(engine).write() as tx:
        tx.first(SQL.insert_job, _job("a.jpg", T0) | {"sha256": None})


def test_a_failed_transaction_leaves_nothing(twins: tuple[Engine, Engine]) -> None:
    _, engine = twins
    path = DriverHotPath(engine)
    with pytest.raises(IntegrityError), path.write() as tx:
        tx.first(SQL.insert_job, _job("a.jpg", T0))
        tx.first(SQL.insert_job, _job("b.jpg", T0) | {"sha256": None})
    assert _stored(engine)["jobs"] == []


def test_precompile_refuses_what_it_cannot_run_as_compiled(twins: tuple[Engine, Engine]) -> None:
    _, engine = twins
    with pytest.raises(ValueError, match="per-execution"):
        precompile(SQL.known_sources, engine.dialect)  # an expanding IN list
    compiled = precompile(SQL.insert_job, engine.dialect, column_keys=list(_job("a", T0)))
    with pytest.raises(ValueError, match="compiled for"):
        compiled.values(_job("a", T0) | {"outcome": "x"})


def test_only_sqlite_runs_on_the_driver() -> None:
    engine = create_engine("postgresql+psycopg://u@localhost/none")
    assert isinstance(hot_path_for(engine, engine, on_driver=None), EngineHotPath)
    with pytest.raises(ValueError):
        hot_path_for(engine, engine, on_driver=True)
