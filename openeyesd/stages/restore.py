"""restore (GPU profile): clean up generated faces with GFPGAN or CodeFormer.

Only faces whose eyes were generated are restored, in one batch; donor transplants keep the
person's real pixels and are left alone. The restored face is pasted back inside the face's
own feathered mask, so nothing outside a restored face changes.
"""

from __future__ import annotations

import json
from typing import Any

from openeyesd.config import Config
from openeyesd.gpu.backends import GpuBackends
from openeyesd.imageio import Patch
from openeyesd.stages.assess import load_analysis
from openeyesd.stages.base import Artifact, StageContext
from openeyesd.stages.fix import patch_artifact
from openeyesd.stages.patches import current_pixels


class RestoreStage:
    name = "restore"
    version = "1"

    def __init__(self, gpu: GpuBackends) -> None:
        self.gpu = gpu

    def settings(self, config: Config) -> dict[str, Any]:
        return {"restoration": config.restoration.model_dump(mode="json"),
                "precision": str(config.gpu.precision)}

    def models_needed(self, ctx: StageContext) -> tuple[str, ...]:
        """The restorer's model when a face of this photo was generated; else none."""
        if not _faces_to_restore(ctx.artifact("generate")["faces"]):
            return ()
        return self.gpu.restoration_models()

    def run(self, ctx: StageContext) -> Artifact:
        faces = json.loads(json.dumps(ctx.artifact("generate")["faces"]))
        targets = _faces_to_restore(faces)
        restorer = self.gpu.restorer() if targets else None
        if restorer is None:
            return {"patches": [], "faces": faces}
        before = current_pixels(ctx)  # read-only; the restorer returns its own copy
        frame = load_analysis(ctx)
        result = restorer.restore(before, [frame.faces[i].face for i in targets])
        changed, kept = [], []
        for index, restored in zip(targets, result.faces, strict=True):
            faces[index]["restoration"] = {
                "model": result.model, "scale": round(restored.scale, 3),
                "timings_s": {k: round(v, 4) for k, v in result.timings.items()},
            }
            changed.append((index, frame.faces[index].face, restored.box))
            # Nothing outside a restored face's box changed: those boxes are the change.
            x0, y0, x1, y1 = restored.box
            kept.append(Patch(restored.box, result.image[y0:y1, x0:x1]))
        return patch_artifact(ctx, self.name, before, kept, changed, faces)


def _faces_to_restore(faces: list[dict[str, Any]]) -> list[int]:
    """Indices of the faces whose eyes were generated: donor transplants are left alone."""
    return [i for i, face in enumerate(faces) if face.get("outcome") == "generated"]
