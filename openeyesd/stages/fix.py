"""fix: transplant the donor's open eyes onto each planned face, blend them in, and check.

On the CPU profile warping, colour matching and the seamless blend are one step
(``openeyesd.eyes.transfer``): Poisson blending needs the warped donor and its mask together,
so there is no separate "blend" artifact to resume from. The check comes before anything is
kept: the landmarks and the closed-eye test run again on the patched face, the fixed eyes must
read open, and the seam score must pass. When the check refuses particular eyes (one still
reads shut: often a donor eye that was a wink the assessment missed; or its seam shows), those
eyes are transferred once more from the plan's fallback donors and the face is checked again.
A face that still fails keeps its original pixels and is marked ``needs_review`` with the
reason: a bad fix is never shipped silently.

The artifact lists ``patches``: PNG crops (upright coordinates) of the final pixels around
each fixed face, which ``write`` pastes onto the photo; and before/after previews. All of it
is done on face-sized crops over the shared, read-only decoded frame: the frame is never
copied (24 MP is 72 MB a copy).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from openeyesd.config import Config, LimitsConfig
from openeyesd.errors import TransientError
from openeyesd.eyes.analysis import AnalysisCache, EyeToolkit, FaceAnalysis, judge
from openeyesd.eyes.assess import assess_face
from openeyesd.eyes.donor_regions import EyeRegionStore, eye_region_box
from openeyesd.eyes.landmarks import LandmarkBackend, RefiningBackend
from openeyesd.eyes.quality import SEAM_THRESHOLD, texture_ratio
from openeyesd.eyes.transfer import (
    PREVIEW_MARGIN,
    EyeTransferResult,
    preview,
    transfer_face,
    transform,
)
from openeyesd.eyes.types import EyeState, Face
from openeyesd.files import sha256_file
from openeyesd.imageio import Box, Patch, load_rgb, load_rgb_regions
from openeyesd.stages.assess import load_analysis
from openeyesd.stages.base import Artifact, StageContext
from openeyesd.stages.patches import (
    compose,
    compose_frame,
    current_pixels,
    overlaps,
    save_preview,
    union,
    write_patch,
)

#: A transplanted eye should open about as wide as it was in the donor (openings are relative
#: to the eye's width, so the warp's scale does not change them). Below this share the blend
#: has washed the donor's lid out, or the landmarks still see the old one: a half-open eye is
#: no fix. On the eval set's same-person fixes the ratio measured 0.80-1.14.
MIN_OPENING_VS_DONOR = 0.7
#: Fine detail of the changed pixels after / before (``quality.texture_ratio``). Real donor eyes
#: on the eval set measured 0.89-1.54; the same regions replaced by pixel noise 7.9-16, by
#: smooth random colour (what an untrained or broken generator gives) 2.2-7.6, by a flat
#: colour 0.30-0.51, and a light blur of the real eye 0.52-1.00. Outside this range the new
#: eye is not a photographed eye, whatever its lid opening reads.
TEXTURE_RANGE = (0.65, 1.9)


@dataclass(frozen=True)
class Check:
    ok: bool
    reason: str
    details: dict[str, Any]
    #: The eyes a refusal is about, when it is about particular eyes (a seam, an eye that does
    #: not read open); empty when it concerns the face as a whole.
    sides: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "reason": self.reason, **self.details}


class FixStage:
    name = "fix"
    # 2: the check re-fits the known face (refine), no detector. 3: a face's eyes may come
    # from two donors and are checked together; each eye must open near its donor's opening.
    # 4: eyes the check refuses are tried once more from the plan's fallback donors.
    version = "4"

    def __init__(self, toolkit: EyeToolkit, regions: EyeRegionStore) -> None:
        self.toolkit = toolkit
        #: Eye regions the assess stages left (see ``donor_regions``): a donor found there is
        #: not decoded again.
        self.regions = regions

    def settings(self, config: Config) -> dict[str, Any]:
        return {"blend": str(config.eyes.blend)}

    def run(self, ctx: StageContext) -> Artifact:
        plan = ctx.artifact("plan")
        faces = json.loads(json.dumps(plan["faces"]))  # our own copy to annotate
        if not plan["plans"]:
            return {"patches": [], "faces": faces}
        # Read-only and, as fix is the first stage to change pixels, the decoded frame itself:
        # every change below lives in face-sized crops (Patch), never in a copy of the frame.
        before = current_pixels(ctx)
        frame = load_analysis(ctx)
        kept: list[Patch] = []
        fixed: list[tuple[int, Face, Box]] = []
        try:
            for index, items in _by_face(plan["plans"]):
                target, summary = frame.faces[index].face, faces[index]
                changes, check = self._fix_face(ctx, before, kept, target, items)
                fallback = _fallback_items(items, plan.get("fallbacks", []), index, check)
                if fallback is not None:
                    summary["fallback"] = {
                        "refused_sides": list(check.sides), "first_check": check.to_json(),
                        "donors": [_donor_words(item) for item in fallback]}
                    changes, check = self._fix_face(ctx, before, kept, target, fallback)
                summary["check"] = check.to_json()
                if check.ok:
                    kept += changes
                    summary["outcome"] = "fixed"
                    fixed.append((index, target, union(c.box for c in changes)))
                else:
                    summary["outcome"] = "needs_review"
        finally:
            # The donors are only needed here; the write stage should not carry them.
            for key in [k for k in ctx.memo if k.startswith("donor:")]:
                del ctx.memo[key]
        return patch_artifact(ctx, self.name, before, kept, fixed, faces)

    def _fix_face(
        self, ctx: StageContext, before: np.ndarray, kept: list[Patch], target: Face,
        items: list[dict[str, Any]],
    ) -> tuple[list[Patch], Check]:
        """One face's transfers (one plan item per donor) as patches over ``kept``, and the
        check of the face they give."""
        changes: list[Patch] = []
        seams: dict[str, float] = {}
        donor_openings: dict[str, float] = {}
        for item in items:
            ctx.progress()
            more, more_seams, openings = self._transfer(ctx, before, kept + changes, target, item)
            changes, seams, donor_openings = (changes + more, seams | more_seams,
                                              donor_openings | openings)
        crop, origin = face_region(before, kept + changes, target)
        unchanged, _ = face_region(before, kept, target)
        check = verify_fixed_face(self.toolkit, crop, target, list(seams), seams,
                                  baselines=items[0].get("baselines"), origin=origin,
                                  donor_openings=donor_openings, before=unchanged)
        return changes, check

    def _transfer(
        self, ctx: StageContext, before: np.ndarray, kept: list[Patch], target: Face,
        item: dict[str, Any],
    ) -> tuple[list[Patch], dict[str, float], dict[str, float]]:
        """The eye transfers of one plan item as patches (in ``apply`` order), their seam
        scores, and the donor eyes' own openings (what the fixed eyes should come close to)."""
        donor_rgb, donor = self._donor(ctx, item)
        donor_face = donor.face
        method = str(ctx.config.eyes.blend)
        results = transfer_face(before, target, donor_rgb, donor_face, sides=item["sides"],
                                method=method)
        if not _sampled_inside(results, ctx.memo[f"donor:{item['donor_sha256']}"][1]):
            # Unusual geometry (a donor face far smaller than the target's): the warp reached
            # past the regions at hand, so decode the donor whole and transfer again.
            donor_rgb = _decode_donor(ctx, item, boxes=None)[0]
            results = transfer_face(before, target, donor_rgb, donor_face,
                                    sides=item["sides"], method=method)
        if any(overlaps(r.box, p.box) for r in results for p in kept):
            # An earlier fix lies where this transfer reads (faces touching): rare, so only
            # then is the composed frame built. The boxes depend on landmarks, not pixels.
            results = transfer_face(compose_frame(before, kept), target, donor_rgb, donor_face,
                                    sides=item["sides"], method=method)
        changes: list[Patch] = []
        for result in results:
            # What ``transfer.apply`` does to the frame, done to the result's box only.
            pixels = compose(before, result.box, kept + changes)
            paste = result.mask > 0
            pixels[paste] = result.pixels[paste]
            changes.append(Patch(result.box, pixels))
        openings = {side: donor.assessment.measurements[side].opening  # type: ignore[index]
                    for side in item["sides"]}
        return changes, {r.side: float(r.seam) for r in results}, openings

    def _donor(self, ctx: StageContext, item: dict[str, Any]) -> tuple[np.ndarray, FaceAnalysis]:
        """The donor's pixels and face. The pixels around the faces a donor frame lends (often
        several) come from the eye regions its own assessment left in memory, else from one
        decode of the file, of which only the regions around those faces are kept."""
        sha256, path = item["donor_sha256"], Path(item["donor_image"])
        analysis = AnalysisCache(ctx.config.analysis_dir).get(sha256)
        if analysis is None:
            ctx.invalidate("plan")
            raise TransientError(f"the analysis of donor {path} is gone; will plan again")
        key = f"donor:{sha256}"
        if key not in ctx.memo:
            wanted = {p["donor_face_index"] for p in _every_plan_item(ctx.artifact("plan"))
                      if p["donor_sha256"] == sha256}
            kept = self.regions.get(sha256)
            from_memory = kept.sparse_frame(wanted) if kept is not None else None
            if from_memory is not None:
                ctx.memo[key] = from_memory
            else:
                _decode_donor(ctx, item, [
                    eye_region_box(analysis.faces[i].face, analysis.width, analysis.height)
                    for i in sorted(wanted)])
        return ctx.memo[key][0], analysis.faces[item["donor_face_index"]]


def _decode_donor(
    ctx: StageContext, item: dict[str, Any], boxes: list[Box] | None
) -> tuple[np.ndarray, list[Box]]:
    """The donor decoded from its file, whole or (``boxes``) only there, remembered for this
    run; the file must still be the content the plan analysed."""
    sha256, path = item["donor_sha256"], Path(item["donor_image"])
    if not path.exists() or sha256_file(path) != sha256:
        ctx.invalidate("plan")
        raise TransientError(f"the donor photo {path} changed or went away; will plan again")
    if boxes is None:
        pixels = load_rgb(path, ctx.config.limits).pixels
        decoded = pixels, [(0, 0, pixels.shape[1], pixels.shape[0])]
    else:
        decoded = sparse_frame(path, ctx.config.limits, boxes)
    ctx.memo[f"donor:{sha256}"] = decoded
    return decoded


def _fallback_items(
    items: list[dict[str, Any]], fallbacks: list[dict[str, Any]], face_index: int, check: Check,
) -> list[dict[str, Any]] | None:
    """The face's plan items with the eyes ``check`` refused taken from the plan's fallback
    donors instead (the other eyes keep theirs), or None when there is nothing to try: the
    check passed, refused the face as a whole, or the plan has no other donor for those eyes."""
    if check.ok or not check.sides:
        return None
    refused = sorted(check.sides)
    entry = next((f for f in fallbacks
                  if f["face_index"] == face_index and sorted(f["refused"]) == refused), None)
    if entry is None:
        return None
    kept = [{**item, "sides": [s for s in item["sides"] if s not in refused]} for item in items]
    return [item for item in kept if item["sides"]] + entry["plans"]


def _every_plan_item(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return plan["plans"] + [item for f in plan.get("fallbacks", []) for item in f["plans"]]


def _donor_words(item: dict[str, Any]) -> str:
    return f"{item['donor_kind']} {item['donor_key']} ({'+'.join(item['sides'])})"


def _by_face(plans: list[dict[str, Any]]) -> list[tuple[int, list[dict[str, Any]]]]:
    """Plan items grouped by face, in plan order: a face may have two donors, one per eye."""
    grouped: dict[int, list[dict[str, Any]]] = {}
    for item in plans:
        grouped.setdefault(item["face_index"], []).append(item)
    return list(grouped.items())


def sparse_frame(
    path: Path, limits: LimitsConfig, boxes: list[Box]
) -> tuple[np.ndarray, list[Box]]:
    """The upright frame with only ``boxes`` filled in (and the boxes, clamped), in
    full-frame coordinates, so faces and transforms stay as analysed, bit for bit. The rest
    is zero pages from ``np.zeros`` (calloc): never written, so never resident. The transfer
    samples a donor around its eyes (``donor_regions.eye_region_box``); ``_sampled_inside``
    makes sure of it, and the donor is decoded whole when it did not."""
    info, regions = load_rgb_regions(path, limits, boxes)
    frame = np.zeros((info.upright_height, info.upright_width, 3), np.uint8)
    for (x0, y0, x1, y1), pixels in regions:
        frame[y0:y1, x0:x1] = pixels
    frame.flags.writeable = False
    return frame, [box for box, _ in regions]


def _sampled_inside(results: list[EyeTransferResult], filled: list[Box]) -> bool:
    """Whether every donor pixel the transfers may have read lies in a filled box. The warp
    reads inside the hull of the donor's eye and brow points (inside its face box) and of the
    crop's corners mapped back by the donor -> target similarity; 2 px for interpolation."""
    for result in results:
        x0, y0, x1, y1 = result.box
        corners = np.array([(x0, y0), (x1 - 1, y0), (x0, y1 - 1), (x1 - 1, y1 - 1)], np.float64)
        back = transform(cv2.invertAffineTransform(result.affine), corners)
        (left, top), (right, bottom) = back.min(axis=0) - 2, back.max(axis=0) + 2
        if not any(b[0] <= left and b[1] <= top and right < b[2] and bottom < b[3]
                   for b in filled):
            return False
    return True


def patch_artifact(
    ctx: StageContext, stage: str, before: np.ndarray, kept: Sequence[Patch],
    changed: list[tuple[int, Face, Box]], faces: list[dict[str, Any]],
) -> Artifact:
    """Patches and before/after previews for each changed face: ``before`` is the photo the
    stage started from, ``kept`` every change it made, in order; ``changed`` lists (face
    index, face, box that holds its change)."""
    patches, files = [], []
    for index, face, region in changed:
        patch = write_patch(ctx, stage, index, before, kept, region)
        box = preview_box(face, before.shape)
        x0, y0, x1, y1 = box
        shifted = replace(face, box=(face.box[0] - x0, face.box[1] - y0,
                                     face.box[2] - x0, face.box[3] - y0))
        shown = ctx.stage_dir(stage) / f"face{index}-before-after.jpg"
        save_preview(shown, preview(before[y0:y1, x0:x1], compose(before, box, kept), shifted))
        patches.append(patch)
        faces[index]["preview"] = str(shown)
        files += [patch["file"], ctx.relative(shown)]
    return {"patches": patches, "faces": faces, "files": files}


def verify_fixed_face(
    toolkit: EyeToolkit, after: np.ndarray, target: Face, sides: list[str],
    seams: dict[str, float], *, baselines: dict[str, float | None] | None = None,
    origin: tuple[int, int] = (0, 0), donor_openings: dict[str, float] | None = None,
    before: np.ndarray | None = None, identity_limit: float | None = None,
) -> Check:
    """Landmarks and the closed-eye test on the changed face, and the seam scores: the eyes
    we changed must read open (against the person's burst baselines, the rule that found
    them closed) and no seam may be visible. ``after`` is the changed photo, or a crop of it
    holding ``face_box(target, ...)`` whose top-left pixel lies at ``origin`` in the photo
    (see ``face_region``): only the face box is looked at either way. ``before`` is the same
    area before the change; with it, the new pixels' fine detail is compared with the old.
    With ``identity_limit`` the changed face's identity descriptor must stay that close to
    the target's own: eyes that were not photographed (generated) must not make the person
    look like someone else. A donor transplant needs no such test: its donor was chosen as
    this person by the same descriptor."""
    details: dict[str, Any] = {"seam": {side: round(value, 3) for side, value in seams.items()}}
    if seen := tuple(side for side, value in seams.items() if value > SEAM_THRESHOLD):
        return Check(False, "the seam around the new eye would be visible", details, seen)
    crop, offset = _face_crop(after, target, origin)
    if before is not None and (texture := _texture_problem(before, crop, target, origin,
                                                           details)):
        return Check(False, texture, details)
    found = _same_face(_fit_again(toolkit.landmarks, crop, target, offset), target, offset)
    if found is None:
        return Check(False, "the face is no longer found after the fix", details)
    measured = assess_face(crop, found).measurements
    verdicts = judge(measured, toolkit.blink_scores(found), baselines)  # type: ignore[arg-type]
    details["eyes_after"] = {side: str(verdicts[side].state) for side in verdicts}
    details["opening_after"] = {s: round(measured[s].opening, 4) for s in sides}  # type: ignore[index]
    if donor_openings:
        details["opening_vs_donor"] = {
            s: round(measured[s].opening / max(donor_openings[s], 1e-6), 3)  # type: ignore[index]
            for s in sides if s in donor_openings}
    still_closed = [s for s in sides if verdicts[s].state is not EyeState.OPEN]  # type: ignore[index]
    if still_closed:
        return Check(False, f"the {' and '.join(still_closed)} eye does not read open "
                     "after the fix", details, tuple(still_closed))
    half_open = {side: ratio for side, ratio in details.get("opening_vs_donor", {}).items()
                 if ratio < MIN_OPENING_VS_DONOR}
    if half_open:
        side, ratio = min(half_open.items(), key=lambda kv: kv[1])
        return Check(False, f"the {side} eye opened only {ratio:.0%} as wide as the donor's "
                     f"(at least {MIN_OPENING_VS_DONOR:.0%} expected)", details,
                     tuple(half_open))
    if identity_limit is not None and (problem := _identity_problem(
            toolkit, crop, found, target, identity_limit, details)):
        return Check(False, problem, details)
    return Check(True, "eyes read open after the fix; seam not visible", details)


def _identity_problem(
    toolkit: EyeToolkit, crop: np.ndarray, found: Face, target: Face, limit: float,
    details: dict[str, Any],
) -> str | None:
    """Why the changed face no longer reads as the same person, or None; records the
    distance. Without the target's own descriptor there is nothing to compare with."""
    if target.descriptor is None:
        return None
    distance = toolkit.identity.distance(toolkit.identity.describe(crop, found),
                                         target.descriptor)
    details["identity_distance"] = round(distance, 3)
    if distance < limit:
        return None
    return (f"the face no longer reads as the same person after the change (identity "
            f"distance {distance:.2f}; below {limit:.2f} expected)")


def _texture_problem(
    before: np.ndarray, after_crop: np.ndarray, target: Face, origin: tuple[int, int],
    details: dict[str, Any],
) -> str | None:
    """Why the changed pixels do not look photographed, or None; records the ratio."""
    before_crop, _ = _face_crop(before, target, origin)
    ratio = texture_ratio(before_crop, after_crop)
    if ratio is None:
        return None
    details["texture_ratio"] = round(ratio, 3)
    low, high = TEXTURE_RANGE
    if ratio > high:
        return (f"the new eyes carry {ratio:.1f}x the fine detail the photo had there "
                "(noise or artefacts, not a photographed eye)")
    if ratio < low:
        return (f"the new eyes carry only {ratio:.2f}x the fine detail the photo had there "
                "(smeared or flat)")
    return None


def face_box(face: Face, shape: tuple[int, ...], origin: tuple[int, int] = (0, 0)) -> Box:
    """The face with a margin of its own size, so the detector sees it whole; clamped to an
    image of ``shape`` whose top-left pixel lies at ``origin`` (photo coordinates)."""
    x0, y0, x1, y1 = face.box
    w, h = x1 - x0, y1 - y0
    left, top = origin
    height, width = shape[:2]
    return (max(int(x0 - w), left), max(int(y0 - h), top),
            min(int(x1 + w), left + width), min(int(y1 + h), top + height))


def _face_crop(
    image: np.ndarray, face: Face, origin: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    x0, y0, x1, y1 = face_box(face, image.shape, origin)
    crop = image[y0 - origin[1]:y1 - origin[1], x0 - origin[0]:x1 - origin[0]]
    return crop, np.array([x0, y0], np.float32)


def face_region(
    before: np.ndarray, changes: Sequence[Patch], face: Face
) -> tuple[np.ndarray, tuple[int, int]]:
    """The changed photo over ``face_box``: what ``verify_fixed_face`` checks, as a crop."""
    box = face_box(face, before.shape)
    return compose(before, box, changes), (box[0], box[1])


def preview_box(face: Face, shape: tuple[int, ...]) -> Box:
    """The part of the photo ``transfer.preview`` shows (its own arithmetic), so it can be
    given crops: shifted by a box's integer corner, its crop of the crop is the same."""
    margin = PREVIEW_MARGIN * face.width
    height, width = shape[:2]
    return (max(0, int(face.box[0] - margin)), max(0, int(face.box[1] - margin)),
            min(width, int(np.ceil(face.box[2] + margin))),
            min(height, int(np.ceil(face.box[3] + margin))))


def _fit_again(
    backend: LandmarkBackend, crop: np.ndarray, target: Face, offset: np.ndarray
) -> list[Face]:
    """The faces to look for ``target`` among, in crop coordinates. Where the backend can
    refine a known face, only that: the face is where it was (the fix changed its eyes), so
    searching the crop with the detector (downscaled copy, tiles) would be wasted work."""
    if not isinstance(backend, RefiningBackend):
        return backend.detect(crop)
    found = backend.refine(crop, shifted(target, -offset))
    return [] if found is None else [found]


def shifted(face: Face, by: np.ndarray) -> Face:
    """``face`` with its box and eyes moved by ``by`` (x, y); what ``refine`` reads of it."""
    dx, dy = float(by[0]), float(by[1])
    move = np.array([dx, dy], np.float32)
    eyes = {side: replace(eye, contour=eye.contour + move, brow=eye.brow + move,
                          iris=None if eye.iris is None else eye.iris + move)
            for side, eye in face.eyes.items()}
    x0, y0, x1, y1 = face.box
    return replace(face, box=(x0 + dx, y0 + dy, x1 + dx, y1 + dy), eyes=eyes,
                   landmarks=face.landmarks + move)


def _same_face(faces: list[Face], target: Face, offset: np.ndarray) -> Face | None:
    """The detected face whose eyes are where the target's were (crop coordinates)."""
    want = np.stack([target.eyes[s].centre for s in ("left", "right")]) - offset
    best, best_distance = None, target.interocular * 0.5
    for face in faces:
        have = np.stack([face.eyes[s].centre for s in ("left", "right")])
        distance = float(np.linalg.norm(have - want, axis=1).max())
        if distance < best_distance:
            best, best_distance = face, distance
    return best


