"""generate (GPU profile): open the eyes of faces that have no donor, by SDXL inpainting.

Runs after ``fix``: faces that got a donor keep the person's real eyes; only faces the plan
marked ``no_donor`` are generated. The variations are tried best score first, and the first
that passes the same check as a donor transplant (the changed eyes read open against the
person's burst baselines, the seam is not visible) and still reads as the same person (the
identity descriptor, as donors are matched) is kept. None passing: the face keeps its
pixels and is marked ``needs_review``. Seeds, scores and phase timings go to the sidecar.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from openeyesd.config import Config
from openeyesd.eyes.analysis import EyeToolkit
from openeyesd.eyes.donors import SAME_PERSON_DISTANCE
from openeyesd.eyes.types import SIDES, Face
from openeyesd.gpu.backends import GpuBackends
from openeyesd.imageio import Patch
from openeyesd.stages.assess import load_analysis
from openeyesd.stages.base import Artifact, StageContext
from openeyesd.stages.fix import Check, face_region, patch_artifact, verify_fixed_face
from openeyesd.stages.patches import compose_frame, current_pixels


class GenerateStage:
    name = "generate"
    version = "1"

    def __init__(self, toolkit: EyeToolkit, gpu: GpuBackends) -> None:
        self.toolkit = toolkit
        self.gpu = gpu

    def settings(self, config: Config) -> dict[str, Any]:
        return {"generation": config.generation.model_dump(mode="json"),
                "precision": str(config.gpu.precision), "blend": str(config.eyes.blend)}

    def models_needed(self, ctx: StageContext) -> tuple[str, ...]:
        """The inpainter's models when a face of this photo has no donor; else none."""
        if not _faces_to_generate(ctx.artifact("fix")["faces"]):
            return ()
        return self.gpu.generation_models()

    def run(self, ctx: StageContext) -> Artifact:
        faces = json.loads(json.dumps(ctx.artifact("fix")["faces"]))
        targets = _faces_to_generate(faces)
        if not targets:
            return {"patches": [], "faces": faces}
        inpainter = self.gpu.inpainter()
        before = current_pixels(ctx)  # read-only; changes are kept as crops (Patch)
        frame = load_analysis(ctx)
        kept: list[Patch] = []
        changed = []
        for index in targets:
            ctx.progress()
            summary, face = faces[index], frame.faces[index].face
            sides = [s for s in SIDES if summary["eyes"][s]["state"] == "closed"]
            # The inpainter reads the photo as it stands; a whole composed copy only when an
            # earlier face here was generated (the crop it reads is the inpainter's business).
            image = compose_frame(before, kept) if kept else before
            result = inpainter.inpaint(image, face, sides=sides,
                                       seed=ctx.config.generation.seed or None)
            kept_patch, check = self._first_passing(result, before, kept, face, sides, summary)
            summary["generation"] = _describe(result, kept_patch is not None)
            summary["check"] = check.to_json()
            if kept_patch is None:
                summary["outcome"] = "needs_review"
                continue
            kept.append(kept_patch)
            summary["outcome"] = "generated"
            changed.append((index, face, result.box))
        return patch_artifact(ctx, self.name, before, kept, changed, faces)

    def _first_passing(
        self, result: Any, before: np.ndarray, kept: list[Patch], face: Face, sides: list[str],
        summary: dict[str, Any],
    ) -> tuple[Patch | None, Check]:
        """The best-scoring variation that passes the check, as a patch of its box; each is
        checked on the face's crop of the photo with it pasted, not on a copy of the frame."""
        order = sorted(result.variations, key=lambda v: v.score.score, reverse=True)
        check = Check(False, "no variation was generated", {})
        unchanged, _ = face_region(before, kept, face)
        for variation in order:
            candidate = Patch(result.box, result.candidates[variation.index])
            crop, origin = face_region(before, [*kept, candidate], face)
            seam = variation.score.seam if variation.score.seam is not None else 0.0
            check = verify_fixed_face(self.toolkit, crop, face, sides,
                                      {side: seam for side in sides},
                                      baselines=summary.get("burst_baselines"), origin=origin,
                                      before=unchanged, identity_limit=SAME_PERSON_DISTANCE)
            if check.ok:
                check.details["variation"] = variation.index
                return candidate, check
        return None, check


def _faces_to_generate(faces: list[dict[str, Any]]) -> list[int]:
    """Indices of the faces the plan found no donor for: only those are generated."""
    return [i for i, face in enumerate(faces) if face.get("outcome") == "no_donor"]


def _describe(result: Any, kept: bool) -> dict[str, Any]:
    return {
        "model": result.model, "refiner": result.refiner, "batch_size": result.batch_size,
        "seeds": list(result.seeds), "kept": kept,
        "scores": [{"index": v.index, "seed": v.seed, "score": round(v.score.score, 4),
                    "seam": v.score.seam} for v in result.variations],
        "timings_s": {k: round(v, 4) for k, v in result.timings.items()},
        "reference_used": result.reference_used, "notes": list(result.notes),
    }
