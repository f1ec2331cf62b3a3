"""detect: find every face, its dense eye landmarks and its identity descriptor.

Faces are searched on a downscaled copy and their landmarks refined on full-resolution crops
(see ``openeyesd.eyes.landmarks``). The artifact is the list of faces as JSON.
"""

from __future__ import annotations

import json
from typing import Any

from openeyesd.config import Config
from openeyesd.eyes.analysis import EyeToolkit, detect_faces, face_from_json, face_to_json
from openeyesd.eyes.types import Face
from openeyesd.files import atomic_write_bytes
from openeyesd.stages.base import Artifact, StageContext
from openeyesd.stages.ingest import load_ingested


class DetectStage:
    name = "detect"
    version = "1"

    def __init__(self, toolkit: EyeToolkit) -> None:
        self.toolkit = toolkit

    def settings(self, config: Config) -> dict[str, Any]:
        return {"landmarks": self.toolkit.landmarks.name, "identity": self.toolkit.identity.name,
                "detect_max_side": config.eyes.detect_max_side}

    def run(self, ctx: StageContext) -> Artifact:
        faces = detect_faces(load_ingested(ctx).pixels, self.toolkit)
        path = ctx.stage_dir(self.name) / "faces.json"
        atomic_write_bytes(path, json.dumps([face_to_json(f) for f in faces]).encode())
        return {"face_count": len(faces), "faces_file": ctx.relative(path),
                "files": [ctx.relative(path)]}


def load_faces(ctx: StageContext) -> list[Face]:
    path = ctx.path(ctx.artifact("detect")["faces_file"])
    return [face_from_json(data) for data in json.loads(path.read_text(encoding="utf-8"))]
