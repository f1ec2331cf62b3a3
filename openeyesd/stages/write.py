"""write: put the photo and its JSON sidecar in the output folder, then handle the original.

The output goes to the same relative path below the output folder as the original had below
its watched folder, named by ``output.naming``. An output path is owned by one job: its sidecar
records the job id, so a re-run of the same job (after a crash) replaces its own output
atomically, while a different job whose name collides gets ``<stem>.job<ID><suffix>`` instead of
overwriting someone else's photo.

Earlier stages that change pixels leave ``"patches"`` in their artifact: PNG crops (upright
coordinates) of the final pixels. This stage hands them to ``write_output`` as they are, which
compares and pastes inside their boxes only (no fixed frame is composed); with no patches, or
none that changes a pixel, the output is a byte-for-byte copy of the original.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path, PurePath
from typing import Any

import structlog

from openeyesd import __version__
from openeyesd.config import Config, OriginalsAction
from openeyesd.files import (
    atomic_write_bytes,
    remove_orphaned_temp_files,
    sha256_file,
    sidecar_path,
)
from openeyesd.imageio import write_json, write_output
from openeyesd.stages.base import Artifact, StageContext
from openeyesd.stages.ingest import load_ingested
from openeyesd.stages.patches import collect_patches, load_patches

log = structlog.get_logger()


class WriteStage:
    name = "write"
    version = "1"

    def settings(self, config: Config) -> dict[str, Any]:
        return {
            "output": config.output.model_dump(mode="json"),
            "originals": config.originals.model_dump(mode="json"),
        }

    def run(self, ctx: StageContext) -> Artifact:
        patches = collect_patches(ctx)
        faces, eye_stages = _face_report(ctx)
        outcome = _outcome(faces, patches, eye_stages)
        if not patches and not ctx.config.output.copy_unchanged:
            return {"outcome": outcome, "output_path": None, "written": False}
        output = _claimed_output_path(ctx)
        output.parent.mkdir(parents=True, exist_ok=True)
        if ctx.job.attempts > 1:
            # An earlier attempt may have died mid-write (kill -9, power cut) and left its
            # temp file beside the output; the studio should not find it in their folder.
            for debris in remove_orphaned_temp_files(output.parent):
                log.info("write.removed_orphaned_temp_file", path=str(debris))
        loaded = load_ingested(ctx)
        original_copy = ctx.path(ctx.artifact("ingest")["original"])
        # The private copy carries the original's timestamps; write_output copies them on.
        write_output(original_copy, loaded, output,
                     patches=load_patches(ctx) if patches else None)
        sidecar = _sidecar(ctx, output, outcome, faces, eye_stages)
        if ctx.config.output.sidecar:
            write_json(sidecar_path(output), sidecar)
        _dispose_original(ctx)
        return {"outcome": outcome, "output_path": str(output), "written": True,
                "output_sha256": sidecar["output"]["sha256"]}


def _claimed_output_path(ctx: StageContext) -> Path:
    """Where this job's photo goes, chosen once and recorded in its work directory before
    anything is written. A kill between the photo and its sidecar leaves a photo whose owner
    the sidecar cannot tell; the resumed attempt must replace that file, not take a second
    name beside it (and without sidecars there is no other record of ownership)."""
    record = ctx.stage_dir("write") / "output_path.json"
    preferred = _preferred_output_path(ctx.config, ctx.job.relative_path)
    try:
        claimed = json.loads(record.read_text(encoding="utf-8"))
        if claimed["preferred"] == str(preferred):  # the output settings did not change since
            return Path(claimed["path"])
    except (FileNotFoundError, KeyError, TypeError, ValueError):
        pass
    output = choose_output_path(ctx.config, ctx.job.id, ctx.job.relative_path)
    atomic_write_bytes(record, json.dumps({"preferred": str(preferred),
                                           "path": str(output)}).encode())
    return output


def _preferred_output_path(config: Config, relative_path: str) -> Path:
    relative = PurePath(relative_path)
    name = config.output.naming.format(stem=relative.stem, suffix=relative.suffix)
    return config.output.path / relative.parent / name


def choose_output_path(config: Config, job_id: int, relative_path: str) -> Path:
    preferred = _preferred_output_path(config, relative_path)
    owner = _output_owner(preferred)
    if owner is None or owner == job_id:
        return preferred
    return preferred.with_name(f"{preferred.stem}.job{job_id}{PurePath(relative_path).suffix}")


def _output_owner(output: Path) -> int | None:
    """The job that wrote ``output``, per its sidecar; -1 for a file we did not write."""
    if not output.exists():
        return None
    try:
        return int(json.loads(sidecar_path(output).read_text(encoding="utf-8"))["job_id"])
    except (FileNotFoundError, KeyError, ValueError, json.JSONDecodeError):
        return -1


def _face_report(ctx: StageContext) -> tuple[list[dict[str, Any]], list[str]]:
    """Per-face records from the latest stage that reports faces, and which eye stages ran."""
    eye_stages = [name for name in ctx.artifacts if name not in ("ingest", "write")]
    for name in reversed(eye_stages):
        if "faces" in ctx.artifacts[name]:
            return list(ctx.artifacts[name]["faces"]), eye_stages
    return [], eye_stages


def _outcome(faces: list[dict[str, Any]], patches: list[Any], eye_stages: list[str]) -> str:
    """The job's one-word summary; the face an operator must look at wins over the rest."""
    outcomes = {face.get("outcome") for face in faces}
    if "needs_review" in outcomes:
        return "needs_review"
    if patches:
        return "fixed"
    if "no_donor" in outcomes:
        return "no_donor"
    if not eye_stages:
        return "passthrough"
    return "no_faces" if not faces else "unchanged"


def _sidecar(
    ctx: StageContext, output: Path, outcome: str, faces: list[dict[str, Any]],
    eye_stages: list[str],
) -> dict[str, Any]:
    ingest = ctx.artifact("ingest")
    eye_processing: dict[str, Any] = {"ran": bool(eye_stages), "stages": eye_stages}
    if not eye_stages:
        eye_processing["reason"] = (
            f"this build's '{ctx.config.pipeline.profile}' pipeline has no eye stages; "
            "the photo was copied unchanged"
        )
    return {
        "openeyes_version": __version__,
        "pipeline": {"profile": str(ctx.config.pipeline.profile),
                     "version": ctx.config.pipeline.version},
        "job_id": ctx.job.id,
        "source": {"path": ctx.job.source_path, "relative_path": ctx.job.relative_path,
                   "sha256": ingest["sha256"], "size_bytes": ingest["size_bytes"]},
        "image": {**ingest["image"], "notes": ingest["notes"]},
        "outcome": outcome,
        "eye_processing": eye_processing,
        "faces": faces,
        "stage_durations_s": {name: round(value, 4) for name, value in ctx.timings.items()},
        "output": {"path": str(output), "sha256": sha256_file(output),
                   "written_at": datetime.now(UTC).isoformat()},
    }


def _dispose_original(ctx: StageContext) -> None:
    """Archive or delete the original only now that the output is safely written, and only if
    the file at that path is still the content we processed."""
    action = ctx.config.originals.action
    source = Path(ctx.job.source_path)
    if action is OriginalsAction.KEEP or not source.exists():
        return
    if sha256_file(source) != ctx.artifact("ingest")["sha256"]:
        return  # replaced by a new version since; that one is its own job
    if action is OriginalsAction.DELETE:
        source.unlink()
        return
    archive_root = ctx.config.originals.archive_path
    assert archive_root is not None  # config validation guarantees it for ARCHIVE
    target = archive_root / ctx.job.relative_path
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        target = target.with_name(f"{target.stem}.job{ctx.job.id}{target.suffix}")
    shutil.move(source, target)
