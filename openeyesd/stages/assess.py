"""assess: judge each eye of each face: open, closed or unknown.

The result is also stored in the analysis cache under the photo's content hash, so the other
frames of its burst can use this photo as a donor without analysing it again; and the pixels
around each face's eyes are left in memory (``donor_regions``), so a fix that takes this
photo's eyes need not decode it again.
"""

from __future__ import annotations

import json
from typing import Any

from openeyesd.config import Config
from openeyesd.eyes.analysis import (
    ANALYSIS_VERSION,
    AnalysisCache,
    EyeToolkit,
    FaceAnalysis,
    FrameAnalysis,
    assess_faces,
    frame_from_json,
    frame_to_json,
)
from openeyesd.eyes.donor_regions import EyeRegionStore, donor_regions
from openeyesd.eyes.types import SIDES, EyeState
from openeyesd.files import atomic_write_bytes
from openeyesd.stages.base import Artifact, StageContext
from openeyesd.stages.detect import load_faces
from openeyesd.stages.ingest import load_ingested


class AssessStage:
    name = "assess"
    version = "1"

    def __init__(self, toolkit: EyeToolkit, regions: EyeRegionStore) -> None:
        self.toolkit = toolkit
        self.regions = regions

    def settings(self, config: Config) -> dict[str, Any]:
        return {"analysis": ANALYSIS_VERSION, "min_face_px": config.eyes.min_face_px}

    def run(self, ctx: StageContext) -> Artifact:
        sha256 = ctx.artifact("ingest")["sha256"]
        pixels = load_ingested(ctx).pixels
        frame = assess_faces(pixels, load_faces(ctx), sha256, self.toolkit)
        AnalysisCache(ctx.config.analysis_dir).put(frame)
        self.regions.put(sha256, donor_regions(pixels, frame))
        path = ctx.stage_dir(self.name) / "analysis.json"
        atomic_write_bytes(path, json.dumps(frame_to_json(frame)).encode())
        return {"analysis_file": ctx.relative(path), "needs_fix": frame.needs_fix(),
                "faces": [face_summary(index, face) for index, face in enumerate(frame.faces)],
                "files": [ctx.relative(path)]}


def load_analysis(ctx: StageContext) -> FrameAnalysis:
    path = ctx.path(ctx.artifact("assess")["analysis_file"])
    return frame_from_json(json.loads(path.read_text(encoding="utf-8")))


def face_summary(index: int, face: FaceAnalysis) -> dict[str, Any]:
    """What the sidecar says about a face before any fix: where it is, each eye's state."""
    eyes = {}
    for side in SIDES:
        verdict = face.assessment.verdicts[side]
        reason = "face too small to judge" if face.too_small else verdict.reason
        eyes[side] = {"state": str(face.state(side)), "score": round(verdict.score, 4),
                      "reason": reason,
                      "measurements": face.assessment.measurements[side].to_dict()}
    states = {face.state(side) for side in SIDES}
    outcome = ("closed" if EyeState.CLOSED in states
               else "unknown" if EyeState.UNKNOWN in states else "open")
    pose = face.face.pose
    return {"index": index, "box": [round(v, 1) for v in face.face.box],
            "pose": {"yaw": round(pose.yaw, 1), "pitch": round(pose.pitch, 1),
                     "roll": round(pose.roll, 1)},
            "eyes": eyes, "outcome": outcome}
