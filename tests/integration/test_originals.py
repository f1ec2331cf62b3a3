"""What happens to the dropped file after its output is written: keep, archive or delete."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from openeyesd.config import Config
from openeyesd.intake import enqueue_file
from openeyesd.ledger import FINAL_STATES, JobState, Ledger, create_ledger_engine, migrate
from openeyesd.pipeline import stages_for
from openeyesd.worker import Worker

pytestmark = pytest.mark.slow


def process_one(config: Config, relative: str) -> tuple[Path, Ledger]:
    source = config.watch[0].path / relative
    source.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(source, quality=90)
    engine = create_ledger_engine(config.ledger_url)
    migrate.upgrade(engine)
    ledger = Ledger(engine, pipeline_version=config.pipeline.version)
    enqueue_file(ledger, source, watch_root=config.watch[0].path,
                 pipeline_version=config.pipeline.version)
    worker = Worker(config=config, ledger=ledger, stages=lambda: stages_for(config))
    deadline = time.monotonic() + 60
    while not all(job.state in FINAL_STATES for job in ledger.list_jobs()):
        assert time.monotonic() < deadline
        worker.run_once() or time.sleep(0.05)
    return source, ledger


def test_keep_leaves_the_original_where_it_was(config: Config) -> None:
    source, ledger = process_one(config, "a/photo.jpg")
    assert source.exists() and (config.output.path / "a" / "photo.jpg").exists()
    assert ledger.list_jobs()[0].state is JobState.DONE


def test_archive_moves_the_original_after_the_output_is_written(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    config = make_config(originals={"action": "archive", "archive_path": str(tmp_path / "arch")})
    source, _ = process_one(config, "a/photo.jpg")
    assert not source.exists()
    assert (tmp_path / "arch" / "a" / "photo.jpg").exists()
    assert (config.output.path / "a" / "photo.jpg").exists()


def test_delete_removes_the_original_only_after_the_output_exists(
    make_config: Callable[..., Config]
) -> None:
    config = make_config(originals={"action": "delete"})
    source, ledger = process_one(config, "photo.jpg")
    assert not source.exists() and (config.output.path / "photo.jpg").exists()
    (job,) = ledger.list_jobs()
    assert job.state is JobState.DONE and job.outcome == "no_faces"


def test_a_resumed_job_sweeps_the_temp_file_its_killed_attempt_left(config: Config) -> None:
    """kill -9 during the output write leaves ``.openeyes-tmp-*`` beside the output; the
    attempt that finishes the job removes it, so the studio's folder holds photos only."""
    from openeyesd.files import _temp_prefix

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    debris_name = _temp_prefix().replace(f".{os.getpid()}.", f".{dead.pid}.") + "x1"
    (config.output.path / "a").mkdir(parents=True)
    (config.output.path / "a" / debris_name).write_bytes(b"half a photo")
    source = config.watch[0].path / "a" / "photo.jpg"
    source.parent.mkdir(parents=True)
    Image.fromarray(np.zeros((60, 80, 3), np.uint8)).save(source)
    engine = create_ledger_engine(config.ledger_url)
    migrate.upgrade(engine)
    ledger = Ledger(engine, pipeline_version=config.pipeline.version)
    enqueue_file(ledger, source, watch_root=config.watch[0].path,
                 pipeline_version=config.pipeline.version)
    assert ledger.claim("ghost:1/0", lease_s=30, work_root=str(config.jobs_dir)) is not None
    ledger.release_leases(["ghost:1/0"])  # the first attempt died
    worker = Worker(config=config, ledger=ledger, stages=lambda: stages_for(config))
    while worker.run_once():
        pass
    (job,) = ledger.list_jobs()
    assert job.state is JobState.DONE and job.attempts == 2
    assert sorted(p.name for p in (config.output.path / "a").iterdir()) == [
        "photo.jpg", "photo.jpg.openeyes.json"]


class _Killed(Exception):
    """Stands in for kill -9 at one exact point of the write stage."""


def test_a_write_cut_off_before_its_sidecar_resumes_into_the_same_output(
    config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed after the photo was written but before its sidecar: the photo's owner cannot be
    read from a sidecar, yet the resumed attempt replaces it instead of writing a second one
    (``photo.job1.jpg``) beside it."""
    from openeyesd.pipeline import run_pipeline
    from openeyesd.stages import write
    from openeyesd.stages.base import JobLedger, StageContext

    source = config.watch[0].path / "photo.jpg"
    Image.fromarray(np.zeros((60, 80, 3), np.uint8)).save(source)
    engine = create_ledger_engine(config.ledger_url)
    migrate.upgrade(engine)
    ledger = Ledger(engine, pipeline_version=config.pipeline.version)
    enqueue_file(ledger, source, watch_root=config.watch[0].path,
                 pipeline_version=config.pipeline.version)
    job = ledger.claim("w", lease_s=30, work_root=str(config.jobs_dir))
    assert job is not None and job.work_dir is not None
    stages = stages_for(config)

    def context() -> StageContext:
        ctx = StageContext(job=job, config=config, work_dir=Path(job.work_dir))
        ctx.ledger = JobLedger(ledger, job, "w")
        return ctx

    def killed(*_args: object, **_kwargs: object) -> None:
        raise _Killed

    monkeypatch.setattr(write, "write_json", killed)
    with pytest.raises(_Killed):
        run_pipeline(stages, context(), ledger, "w")
    assert sorted(p.name for p in config.output.path.iterdir()) == ["photo.jpg"]
    monkeypatch.undo()
    result = run_pipeline(stages, context(), ledger, "w")
    assert result["output_path"] == str(config.output.path / "photo.jpg")
    assert sorted(p.name for p in config.output.path.iterdir()) == [
        "photo.jpg", "photo.jpg.openeyes.json"]
