from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy import update

from openeyesd.config import Config
from openeyesd.errors import CorruptImage
from openeyesd.ledger import JobState, Ledger, utcnow
from openeyesd.ledger.schema import jobs
from openeyesd.scheduler import apply_retention, reclaim_stalled


def finished_job(
    ledger: Ledger, config: Config, name: str, *, failed: bool, age_days: float
) -> Path:
    job_id = ledger.enqueue(sha256=name.encode().hex().ljust(64, "0")[:64], size_bytes=1,
                            source_path=f"/in/{name}", watch_root="/in", relative_path=name,
                            mtime_ns=1, pipeline_version="1").job_id
    job = ledger.claim("w", lease_s=30, work_root=str(config.jobs_dir))
    assert job is not None and job.work_dir is not None
    work_dir = Path(job.work_dir)
    (work_dir / "ingest").mkdir(parents=True)
    (work_dir / "ingest" / "original.jpg").write_bytes(b"x")
    if failed:
        ledger.fail(job_id, "w", CorruptImage("bad"))
    else:
        ledger.complete(job_id, "w", state=JobState.DONE, outcome="fixed", output_path="/o")
    with ledger.engine.begin() as conn:
        conn.execute(update(jobs).where(jobs.c.id == job_id)
                     .values(finished_at=utcnow() - timedelta(days=age_days)))
    return work_dir


def test_retention_removes_old_work_dirs_and_keeps_failed_ones_longer(
    config: Config, ledger: Ledger
) -> None:
    old_done = finished_job(ledger, config, "a.jpg", failed=False, age_days=8)
    new_done = finished_job(ledger, config, "b.jpg", failed=False, age_days=1)
    old_failed = finished_job(ledger, config, "c.jpg", failed=True, age_days=8)
    ancient_failed = finished_job(ledger, config, "d.jpg", failed=True, age_days=31)
    assert apply_retention(ledger, config) == 2
    assert not old_done.exists() and not ancient_failed.exists()
    assert new_done.exists() and old_failed.exists()
    assert apply_retention(ledger, config) == 0  # the ledger forgot the removed folders
    assert len(ledger.list_jobs()) == 4  # rows stay: they are the record


def test_retention_never_deletes_outside_the_state_folder(
    config: Config, ledger: Ledger, tmp_path: Path
) -> None:
    outside = tmp_path / "precious"
    outside.mkdir()
    work_dir = finished_job(ledger, config, "a.jpg", failed=False, age_days=30)
    with ledger.engine.begin() as conn:
        conn.execute(update(jobs).values(work_dir=str(outside)))
    apply_retention(ledger, config)
    assert outside.exists() and work_dir.exists()


def test_reclaim_job_hands_back_expired_leases(config: Config, ledger: Ledger) -> None:
    ledger.enqueue(sha256="e" * 64, size_bytes=1, source_path="/in/a", watch_root="/in",
                   relative_path="a", mtime_ns=1, pipeline_version="1")
    job = ledger.claim("dead-worker", lease_s=30, work_root="/w")
    assert job is not None
    with ledger.engine.begin() as conn:
        conn.execute(update(jobs).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    assert reclaim_stalled(ledger, config) == [job.id]
    assert ledger.get_job(job.id).state is JobState.QUEUED  # type: ignore[union-attr]


def test_retention_prunes_cached_analyses_nobody_read_for_a_while(
    config: Config, ledger: Ledger
) -> None:
    import os
    import time

    from openeyesd.eyes.analysis import ANALYSIS_VERSION, AnalysisCache, FrameAnalysis

    cache = AnalysisCache(config.analysis_dir)
    config.analysis_dir.mkdir(parents=True)
    for name in ("old", "read", "new"):
        cache.put(FrameAnalysis(sha256=name * 10, width=4, height=3))
    superseded = config.analysis_dir / f"{'x' * 64}.v0.json"
    superseded.write_text("{}")
    eight_days_ago = time.time() - 8 * 86_400
    for name in ("old", "read"):
        path = config.analysis_dir / f"{name * 10}.v{ANALYSIS_VERSION}.json"
        os.utime(path, (eight_days_ago, eight_days_ago))
    os.utime(superseded, (eight_days_ago, eight_days_ago))
    assert cache.get("read" * 10) is not None  # a burst still uses it: it stays
    apply_retention(ledger, config)
    assert cache.get("old" * 10) is None and not superseded.exists()
    assert cache.get("read" * 10) is not None and cache.get("new" * 10) is not None
