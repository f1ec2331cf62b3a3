"""The stage order and the loop that runs it, skipping stages whose artifact is still valid.

The order is a literal list per profile. A stage is skipped when its summary
``<work_dir>/<name>.json`` exists and records the same input hash the pipeline computes now:
the same stage version, the same relevant settings, and the same previous artifact. Because each
input hash includes the previous artifact's hash, a change upstream re-runs everything below it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path

import structlog

from openeyesd.config import Config, Profile
from openeyesd.errors import InternalError, OpenEyesError
from openeyesd.eyes.analysis import build_toolkit
from openeyesd.eyes.donor_regions import EyeRegionStore
from openeyesd.files import atomic_write_bytes
from openeyesd.gpu.backends import GpuBackends
from openeyesd.ledger import Ledger
from openeyesd.stages.assess import AssessStage
from openeyesd.stages.base import Artifact, Gate, Stage, StageContext
from openeyesd.stages.detect import DetectStage
from openeyesd.stages.fix import FixStage
from openeyesd.stages.generate import GenerateStage
from openeyesd.stages.ingest import IngestStage
from openeyesd.stages.plan import PlanStage
from openeyesd.stages.restore import RestoreStage
from openeyesd.stages.write import WriteStage


def stages_for(
    config: Config, gpu: GpuBackends | None = None, regions: EyeRegionStore | None = None
) -> list[Stage]:
    """The literal stage order per profile. Loads the CPU models: call once per worker, since
    they are not thread-safe. ``gpu`` (the GPU profile) and ``regions`` (donor eye pixels,
    ``eye_region_store``) are shared by all workers; GPU models load on first use."""
    toolkit = build_toolkit(config)
    regions = regions or eye_region_store(config)
    stages: list[Stage] = [
        IngestStage(),
        DetectStage(toolkit),
        AssessStage(toolkit, regions),
        PlanStage(toolkit, regions),
        FixStage(toolkit, regions),
    ]
    if config.pipeline.profile is Profile.GPU:
        gpu = gpu or GpuBackends(config)
        stages += [GenerateStage(toolkit, gpu), RestoreStage(gpu)]
    return [*stages, WriteStage()]


def eye_region_store(config: Config) -> EyeRegionStore:
    """The memory the eye regions of recent photos may hold (``eyes.donor_regions_mb``)."""
    return EyeRegionStore(int(config.eyes.donor_regions_mb * 1024 * 1024))


def backends_in_use(config: Config) -> dict[str, str]:
    """For the workers table and ``openeyesctl status``: role -> backend."""
    backends = {"profile": str(config.pipeline.profile),
                "landmarks": "mediapipe-facemesh+landmarker-v2 (litert)",
                "identity": "dlib-resnet-v1", "blend": str(config.eyes.blend)}
    if config.pipeline.profile is Profile.GPU:
        backends |= {"generation": config.generation.model,
                     "restoration": config.restoration.model, "device": config.gpu.device}
    return backends


def input_hash(stage: Stage, config: Config, previous_hash: str) -> str:
    payload = json.dumps(
        {"stage": stage.name, "version": stage.version, "settings": stage.settings(config),
         "previous": previous_hash},
        sort_keys=True, default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def _summary_path(ctx: StageContext, stage: Stage) -> Path:
    return ctx.work_dir / f"{stage.name}.json"


def _load_valid_summary(path: Path, expected_hash: str) -> tuple[Artifact, str] | None:
    try:
        raw = path.read_bytes()
        record = json.loads(raw)
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if record.get("input_hash") != expected_hash:
        return None
    artifact = record["artifact"]
    # A summary whose files were removed (retention, a hand clean-up) is not valid any more.
    if not all((path.parent / name).exists() for name in artifact.get("files", [])):
        return None
    return artifact, hashlib.sha256(raw).hexdigest()


def _save_summary(path: Path, stage: Stage, hash_in: str, artifact: Artifact) -> str:
    record = {"stage": stage.name, "version": stage.version, "input_hash": hash_in,
              "artifact": artifact}
    raw = json.dumps(record, sort_keys=True, default=str, ensure_ascii=False).encode()
    atomic_write_bytes(path, raw)
    return hashlib.sha256(raw).hexdigest()


def run_pipeline(
    stages: Sequence[Stage], ctx: StageContext, ledger: Ledger, worker_id: str
) -> Artifact:
    """Run ``stages`` for ``ctx.job``; returns the last stage's artifact."""
    log = structlog.get_logger()
    previous = ctx.job.sha256
    artifact: Artifact = {}
    for stage in stages:
        ctx.progress()
        hash_in = input_hash(stage, ctx.config, previous)
        summary = _summary_path(ctx, stage)
        if (valid := _load_valid_summary(summary, hash_in)) is not None:
            artifact, previous = valid
            ctx.artifacts[stage.name] = artifact
            log.info("stage.reused", stage=stage.name)
            continue
        if ctx.gate is not None:
            _ask_gate(ctx.gate, stage, ctx)
        artifact, previous = _run_stage(stage, ctx, ledger, worker_id, hash_in, summary)
    return artifact


def _ask_gate(gate: Gate, stage: Stage, ctx: StageContext) -> None:
    """Before a stage that uses GPU models: the gate may park the job (``Parked``) until they
    are loaded. Asked before the stage run is recorded: a parked job has not started it."""
    models_needed = getattr(stage, "models_needed", None)
    if models_needed is not None:
        gate(stage.name, tuple(models_needed(ctx)))


def _run_stage(
    stage: Stage, ctx: StageContext, ledger: Ledger, worker_id: str, hash_in: str, summary: Path
) -> tuple[Artifact, str]:
    # Bound for the thread, so every line logged inside the stage (backends too) names it.
    structlog.contextvars.bind_contextvars(stage=stage.name)
    log = structlog.get_logger()
    ctx.current_stage = stage.name
    run_id = ledger.start_stage(ctx.job.id, worker_id, stage=stage.name, input_hash=hash_in)
    started = time.monotonic()
    try:
        artifact = stage.run(ctx)
    except BaseException as exc:
        error = exc if isinstance(exc, OpenEyesError) else InternalError(
            f"{type(exc).__name__}: {exc}"
        )
        ledger.finish_stage(run_id, artifact_path=None, duration_s=_since(started), error=error)
        raise
    ctx.artifacts[stage.name] = artifact
    artifact_hash = _save_summary(summary, stage, hash_in, artifact)
    duration = _since(started)
    ctx.timings[stage.name] = duration
    ledger.finish_stage(run_id, artifact_path=str(summary), duration_s=duration)
    log.info("stage.done", duration_s=round(duration, 3))
    return artifact, artifact_hash


def _since(started: float) -> float:
    return time.monotonic() - started
