from __future__ import annotations

from pathlib import Path

import pytest

from openeyesd.config import Config
from openeyesd.errors import Interrupted, Parked
from openeyesd.ledger import Ledger
from openeyesd.pipeline import run_pipeline
from openeyesd.stages.base import StageContext
from tests.unit.fake_stages import RecordingStage


def claimed_context(ledger: Ledger, config: Config) -> StageContext:
    ledger.enqueue(sha256="f" * 64, size_bytes=1, source_path="/in/a.jpg", watch_root="/in",
                   relative_path="a.jpg", mtime_ns=1, pipeline_version="1")
    job = ledger.claim("w", lease_s=30, work_root=str(config.jobs_dir))
    assert job is not None and job.work_dir is not None
    return StageContext(job=job, config=config, work_dir=Path(job.work_dir))


def test_second_run_reuses_every_valid_artifact(config: Config, ledger: Ledger) -> None:
    stages = [RecordingStage("one"), RecordingStage("two")]
    ctx = claimed_context(ledger, config)
    run_pipeline(stages, ctx, ledger, "w")
    run_pipeline(stages, StageContext(ctx.job, config, ctx.work_dir), ledger, "w")
    assert [len(stage.calls) for stage in stages] == [1, 1]
    assert [run.stage for run in ledger.stage_runs(ctx.job.id)] == ["one", "two"]


def test_a_changed_setting_reruns_that_stage_and_everything_after(
    config: Config, ledger: Ledger
) -> None:
    first, second, third = RecordingStage("one"), RecordingStage("two"), RecordingStage("three")
    ctx = claimed_context(ledger, config)
    run_pipeline([first, second, third], ctx, ledger, "w")
    second.setting = "b"
    run_pipeline([first, second, third], StageContext(ctx.job, config, ctx.work_dir), ledger, "w")
    assert [len(stage.calls) for stage in (first, second, third)] == [1, 2, 2]


def test_resume_starts_at_the_stage_that_did_not_finish(config: Config, ledger: Ledger) -> None:
    def crash(_ctx: StageContext) -> None:
        raise Interrupted("stopping")

    first, second = RecordingStage("one"), RecordingStage("two", behaviour=crash)
    ctx = claimed_context(ledger, config)
    with pytest.raises(Interrupted):
        run_pipeline([first, second], ctx, ledger, "w")
    second.behaviour = None
    run_pipeline([first, second], StageContext(ctx.job, config, ctx.work_dir), ledger, "w")
    assert (len(first.calls), len(second.calls)) == (1, 2)
    statuses = [(run.stage, run.status) for run in ledger.stage_runs(ctx.job.id)]
    assert statuses == [("one", "done"), ("two", "interrupted"), ("two", "done")]


def test_an_artifact_whose_files_vanished_is_not_trusted(config: Config, ledger: Ledger) -> None:
    stage = RecordingStage("one")
    ctx = claimed_context(ledger, config)
    run_pipeline([stage], ctx, ledger, "w")
    (ctx.work_dir / "one" / "out.bin").unlink()
    run_pipeline([stage], StageContext(ctx.job, config, ctx.work_dir), ledger, "w")
    assert len(stage.calls) == 2


def test_a_torn_summary_file_means_the_stage_runs_again(config: Config, ledger: Ledger) -> None:
    stage = RecordingStage("one")
    ctx = claimed_context(ledger, config)
    run_pipeline([stage], ctx, ledger, "w")
    (ctx.work_dir / "one.json").write_text('{"input_hash": ')
    run_pipeline([stage], StageContext(ctx.job, config, ctx.work_dir), ledger, "w")
    assert len(stage.calls) == 2


class GpuStage(RecordingStage):
    """Declares a model (rule 7 of the stage contract)."""

    def models_needed(self, ctx: StageContext) -> tuple[str, ...]:
        return ("inpaint:m",)


def test_the_gate_is_asked_before_a_model_stage_runs_and_may_park_the_job(
    config: Config, ledger: Ledger
) -> None:
    asked: list[tuple[str, tuple[str, ...]]] = []

    def park(stage: str, models: tuple[str, ...]) -> None:
        asked.append((stage, models))
        raise Parked(stage, models)

    cpu, gpu = RecordingStage("one"), GpuStage("gen")
    ctx = claimed_context(ledger, config)
    ctx.gate = park
    with pytest.raises(Parked):
        run_pipeline([cpu, gpu], ctx, ledger, "w")
    assert asked == [("gen", ("inpaint:m",))] and gpu.calls == []
    # A parked job has not started the stage: no stage run is recorded for it.
    assert [run.stage for run in ledger.stage_runs(ctx.job.id)] == ["one"]
    resumed = StageContext(ctx.job, config, ctx.work_dir, gate=lambda s, m: asked.append((s, m)))
    run_pipeline([cpu, gpu], resumed, ledger, "w")
    assert len(gpu.calls) == 1 and len(asked) == 2
    again = StageContext(ctx.job, config, ctx.work_dir, gate=park)
    run_pipeline([cpu, gpu], again, ledger, "w")  # every artifact reused: the gate is not asked
    assert len(asked) == 2
