"""Periodic housekeeping, on APScheduler: rescan folders, reclaim stalled jobs, retention.

Each job is a plain function of explicit arguments so it can be called directly in tests;
the scheduler only decides when. A job that raises is logged and runs again next time.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import structlog
from apscheduler.schedulers.background import BackgroundScheduler

from openeyesd.config import Config
from openeyesd.eyes.analysis import AnalysisCache
from openeyesd.ledger import Ledger, utcnow

log = structlog.get_logger()


def reclaim_stalled(ledger: Ledger, config: Config) -> list[int]:
    ids = ledger.reclaim_stalled(max_attempts=config.retry.max_attempts)
    if ids:
        log.warning("jobs.reclaimed", job_ids=ids, reason="lease expired (worker died or hung)")
    # A worker row that has not reported for a day belongs to a process long gone.
    ledger.forget_dead_workers(older_than_s=86_400)
    return ids


def apply_retention(ledger: Ledger, config: Config) -> int:
    """Delete work directories (private copies, artifacts) of jobs finished long ago. The
    ledger rows stay: they are the record of what was done."""
    now = utcnow()
    expired = ledger.expired_work_dirs(
        finished_before=now - timedelta(days=config.state.keep_artifacts_days),
        failed_before=now - timedelta(days=config.state.keep_failed_days),
    )
    jobs_root = config.jobs_dir.resolve()
    for job_id, work_dir in expired:
        path = Path(work_dir).resolve()
        if path.is_relative_to(jobs_root):  # never delete outside our own state folder
            shutil.rmtree(path, ignore_errors=True)
        ledger.forget_work_dir(job_id)
    # Cached analyses are shared by a burst's jobs; once nobody has read one for as long as
    # finished jobs keep their artifacts, its burst is long done.
    analyses = AnalysisCache(config.analysis_dir).prune(
        unused_for_s=config.state.keep_artifacts_days * 86_400)
    if expired or analyses:
        log.info("retention.cleaned", work_dirs=len(expired), analyses=analyses)
    return len(expired)


def build_scheduler(
    config: Config, ledger: Ledger, *, rescan: Callable[[], None]
) -> BackgroundScheduler:
    scheduler = BackgroundScheduler(timezone="UTC")
    worker = config.worker
    scheduler.add_job(rescan, "interval", seconds=worker.rescan_interval_s, id="rescan",
                      max_instances=1, coalesce=True)
    scheduler.add_job(reclaim_stalled, "interval", args=(ledger, config),
                      seconds=worker.reclaim_interval_s, id="reclaim", max_instances=1,
                      coalesce=True)
    scheduler.add_job(apply_retention, "interval", args=(ledger, config),
                      seconds=worker.retention_interval_s, id="retention", max_instances=1,
                      coalesce=True)
    return scheduler
