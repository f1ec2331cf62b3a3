"""Eye transfer on synthetic faces drawn here: known landmarks, known iris, no photos."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import pytest

from openeyesd.eyes.quality import SEAM_THRESHOLD
from openeyesd.eyes.transfer import (
    EyeTransferResult,
    apply,
    fit_similarity,
    preview,
    transfer_eye,
    transfer_face,
    transform,
)
from openeyesd.eyes.types import Eye, Face, HeadPose, Side

EYE_W = 60.0
SCLERA = (236, 234, 228)
IRIS = (70, 110, 160)
LID = (70, 45, 40)
BROW = (85, 60, 45)
SKIN = (205, 160, 135)


@dataclass(frozen=True)
class Synthetic:
    image: np.ndarray
    face: Face
    #: Iris centre of each eye (only meaningful when the eyes are open).
    iris: dict[Side, np.ndarray]


def _eye_contour(
    centre: np.ndarray, side: Side, upper: float, lower: float, sag: float
) -> np.ndarray:
    """16 points, types.py order: outer corner, upper lid to inner corner, lower lid back.

    ``upper``/``lower`` are lid heights above/below the corner line; ``sag`` lowers the whole
    middle of the eye (a closed lid line bows downwards).
    """
    # The subject's left eye is on the right of the picture, so its outer corner is at +x.
    outward = 1.0 if side == "left" else -1.0
    t_up = np.linspace(0.0, np.pi, 9)
    t_low = np.linspace(np.pi, 2 * np.pi, 9)[1:-1]
    half = EYE_W / 2
    up = np.column_stack([outward * half * np.cos(t_up), -upper * np.sin(t_up)])
    low = np.column_stack([outward * half * np.cos(t_low), -lower * np.sin(t_low)])
    pts = np.vstack([up, low])
    pts[:, 1] += sag * (1.0 - (pts[:, 0] / half) ** 2)
    return pts + centre


def _brow(centre: np.ndarray, side: Side) -> np.ndarray:
    outward = 1.0 if side == "left" else -1.0
    xs = np.linspace(0.62, -0.5, 5) * EYE_W * outward
    ys = -0.62 * EYE_W - 0.12 * EYE_W * (1 - (xs / (0.6 * EYE_W)) ** 2)
    return np.column_stack([xs, ys]) + centre


def _skin(shape: tuple[int, int], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    h, w = shape
    # Large blotches plus pore-scale noise: enough texture for seams to be judged against.
    blotch = cv2.resize(rng.normal(0, 6, (h // 16 + 1, w // 16 + 1)), (w, h), cv2.INTER_CUBIC)
    fine = rng.normal(0, 3, (h, w))
    return np.array(SKIN, np.float64) + (blotch + fine)[..., None]


def _draw_eye(img: np.ndarray, contour: np.ndarray, iris: np.ndarray | None) -> None:
    pts = np.round(contour * 16).astype(np.int32)
    lw = max(2, round(EYE_W * 0.05))
    if iris is not None:
        inside = np.zeros(img.shape[:2], np.uint8)
        cv2.fillPoly(inside, [pts], 1, cv2.LINE_AA, 4)
        eye = np.zeros_like(img)
        eye[:] = SCLERA
        c = tuple(np.round(iris * 16).astype(int))
        cv2.circle(eye, c, round(EYE_W * 0.2 * 16), IRIS, -1, cv2.LINE_AA, 4)
        cv2.circle(eye, c, round(EYE_W * 0.09 * 16), (0, 0, 0), -1, cv2.LINE_AA, 4)
        img[inside > 0] = eye[inside > 0]
        crease = contour[0:9] + (0, -0.16 * EYE_W)
        cv2.polylines(img, [np.round(crease * 16).astype(np.int32)], False, (150, 105, 90), 2,
                      cv2.LINE_AA, 4)
    cv2.polylines(img, [pts[0:9]], False, LID, lw, cv2.LINE_AA, 4)
    cv2.polylines(img, [pts[np.r_[8:16, 0]]], False, (150, 110, 95), 1, cv2.LINE_AA, 4)
    # Lashes: up from an open upper lid, down from a closed one.
    direction = -1.0 if iris is not None else 1.0
    for p in contour[2:7]:
        q = p + (0, direction * 0.12 * EYE_W)
        cv2.line(img, tuple(np.round(p).astype(int)), tuple(np.round(q).astype(int)), LID, 1)


def make_face(
    *,
    open_eyes: bool,
    shape: tuple[int, int] = (360, 480),
    similarity: np.ndarray | None = None,
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0),
    light: float = 0.0,
    seed: int = 0,
) -> Synthetic:
    """A face drawn in a canonical frame, then moved by ``similarity`` (2×3) with its landmarks.

    ``tint`` scales R, G, B (exposure and white balance); ``light`` is a left-to-right brightness
    ramp, the relative change across one eye width (light from one side).
    """
    h, w = shape
    canon = np.eye(2, 3) if similarity is None else similarity
    img = _skin(shape, seed)
    centres = {"right": np.array([w / 2 - EYE_W, h / 2]), "left": np.array([w / 2 + EYE_W, h / 2])}
    eyes: dict[Side, Eye] = {}
    irises: dict[Side, np.ndarray] = {}
    for side, c in centres.items():
        if open_eyes:
            contour = _eye_contour(c, side, 0.34 * EYE_W, 0.2 * EYE_W, 0.0)
            irises[side] = c + (0.0, 0.02 * EYE_W)
        else:
            contour = _eye_contour(c, side, -0.1 * EYE_W, 0.16 * EYE_W, 0.0)
        _draw_eye(img, contour, irises.get(side))
        brow = _brow(c, side)
        cv2.polylines(img, [np.round(brow * 16).astype(np.int32)], False, BROW,
                      round(EYE_W * 0.12), cv2.LINE_AA, 4)
        eyes[side] = Eye(side=side, contour=contour, brow=brow)
    # Exposure and white balance act on the whole frame, eyes included.
    ramp = 1.0 + light * (np.arange(w) - w / 2) / EYE_W
    img = np.clip(img * np.array(tint) * ramp[None, :, None], 0, 255).astype(np.uint8)
    img = cv2.warpAffine(img, canon, (w, h),
                         flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    moved = {
        s: Eye(side=s, contour=transform(canon, e.contour).astype(np.float32),
               brow=transform(canon, e.brow).astype(np.float32))
        for s, e in eyes.items()
    }
    iris = {s: transform(canon, p[None])[0] for s, p in irises.items()}
    box = tuple(float(v) for v in (w / 2 - 2.2 * EYE_W, h / 2 - 1.6 * EYE_W,
                                   w / 2 + 2.2 * EYE_W, h / 2 + 2.4 * EYE_W))
    face = Face(box=box, score=1.0, eyes=moved, pose=HeadPose(0.0, 0.0, 0.0),
                landmarks=np.vstack([e.contour for e in moved.values()]), backend="synthetic")
    return Synthetic(image=img, face=face, iris=iris)


def similarity(angle_deg: float, scale: float, shift: tuple[float, float],
               centre: tuple[float, float] = (240.0, 180.0)) -> np.ndarray:
    m = cv2.getRotationMatrix2D(centre, angle_deg, scale)
    m[:, 2] += shift
    return m


# --- helpers over results ------------------------------------------------------------------


def _pupil_centre(image: np.ndarray, result: EyeTransferResult) -> np.ndarray:
    """Centroid of near-black pixels inside the pasted eye, lid lines eroded away."""
    x0, y0, x1, y1 = result.box
    inside = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.fillPoly(inside, [np.round(result.contour - (x0, y0)).astype(np.int32)], 1)
    inside = cv2.erode(inside, np.ones((7, 7), np.uint8))
    dark = image[y0:y1, x0:x1].astype(int).sum(axis=2) < 80
    ys, xs = np.nonzero(dark & (inside > 0))
    assert len(xs) > 20, "no pupil found in the pasted eye"
    return np.array([xs.mean() + x0, ys.mean() + y0])


def _alpha_at(result: EyeTransferResult, points: np.ndarray) -> np.ndarray:
    x0, y0 = result.box[:2]
    cols = np.round(points[:, 0] - x0).astype(int)
    rows = np.round(points[:, 1] - y0).astype(int)
    return result.mask[rows, cols]


def _lab_mean(image: np.ndarray, where: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)[where].mean(axis=0)


def _full_mask(shape: tuple[int, ...], results: list[EyeTransferResult]) -> np.ndarray:
    full = np.zeros(shape[:2], bool)
    for r in results:
        x0, y0, x1, y1 = r.box
        full[y0:y1, x0:x1] |= r.mask > 0
    return full


TARGET_TINT = (1.0, 0.97, 0.93)
DONOR_TINT = (1.2, 1.08, 0.8)


@pytest.mark.parametrize(
    ("donor_move", "target_move"),
    [
        (similarity(0, 1.0, (17, -11)), None),
        (similarity(12, 1.0, (0, 0)), None),
        (similarity(-7, 1.25, (-9, 6)), None),
        (similarity(9, 0.8, (14, 8)), similarity(-5, 1.1, (-6, 4))),
    ],
    ids=["shifted", "rotated", "scaled", "both-moved"],
)
def test_pasted_iris_lands_on_the_target_eye(donor_move: np.ndarray, target_move: np.ndarray):
    target = make_face(open_eyes=False, similarity=target_move, tint=TARGET_TINT, seed=1)
    donor = make_face(open_eyes=True, similarity=donor_move, tint=DONOR_TINT, seed=2)
    # Where the iris belongs: the open face drawn in the target's own place.
    truth = make_face(open_eyes=True, similarity=target_move, seed=1)
    results = transfer_face(target.image, target.face, donor.image, donor.face)
    out = apply(target.image, results)
    for r in results:
        assert np.linalg.norm(_pupil_centre(out, r) - truth.iris[r.side]) <= 2.0, r.side
        # Corners pinned: the pasted eye starts and ends where the target's did.
        corners = target.face.eyes[r.side].contour[[0, 8]]
        assert np.allclose(r.contour[[0, 8]], corners, atol=1e-3)


def test_single_eye_transfer_lands_too():
    target = make_face(open_eyes=False, tint=TARGET_TINT, seed=3)
    donor = make_face(open_eyes=True, similarity=similarity(6, 1.1, (10, 5)), seed=4)
    truth = make_face(open_eyes=True, seed=3)
    r = transfer_eye(target.image, target.face.eyes["left"], donor.image, donor.face.eyes["left"])
    assert r.side == "left"
    out = apply(target.image, [r])
    assert np.linalg.norm(_pupil_centre(out, r) - truth.iris["left"]) <= 2.0
    # The other eye is untouched.
    assert np.array_equal(out[:, :240], target.image[:, :240])


def test_both_eyes_share_one_transform_that_undoes_the_head_motion():
    move = similarity(10, 1.2, (12, -7))
    target = make_face(open_eyes=False, seed=5)
    donor = make_face(open_eyes=True, similarity=move, seed=6)
    left, right = transfer_face(target.image, target.face, donor.image, donor.face)
    assert np.array_equal(left.affine, right.affine)
    # donor → target should undo ``move``: rotation -10°, scale 1/1.2 (closed lids bias it a bit).
    a, b = left.affine[0, 0], left.affine[1, 0]
    assert np.hypot(a, b) == pytest.approx(1 / 1.2, rel=0.02)
    assert np.degrees(np.arctan2(b, a)) == pytest.approx(10.0, abs=1.0)


def test_fit_similarity_recovers_a_known_transform():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (12, 2))
    m = similarity(23, 0.7, (5, -3), centre=(50, 50))
    fitted = fit_similarity(src, transform(m, src), np.ones(12))
    assert np.allclose(fitted, m, atol=1e-9)


@pytest.mark.parametrize("method", ["poisson", "feather"])
def test_skin_around_the_eye_takes_the_target_colour(method: str):
    target = make_face(open_eyes=False, tint=TARGET_TINT, light=0.04, seed=7)
    donor = make_face(open_eyes=True, similarity=similarity(4, 1.05, (6, 3)), tint=DONOR_TINT,
                      light=-0.04, seed=8)
    results = transfer_face(target.image, target.face, donor.image, donor.face, method=method)
    out = apply(target.image, results)
    for r in results:
        x0, y0, x1, y1 = r.box
        # Pasted skin: fully pasted, away from both eye outlines and their lashes.
        eyes = np.zeros(r.mask.shape, np.uint8)
        for c in (r.contour, target.face.eyes[r.side].contour):
            cv2.fillPoly(eyes, [np.round(c - (x0, y0)).astype(np.int32)], 1)
        far = cv2.distanceTransform(1 - eyes, cv2.DIST_L2, 3) > 0.18 * EYE_W
        skin = np.zeros(out.shape[:2], bool)
        skin[y0:y1, x0:x1] = (r.mask == 255) & far
        assert skin.sum() > 200
        before, after = _lab_mean(target.image, skin), _lab_mean(out, skin)
        assert np.linalg.norm(after - before) < 3.0
        # The donor's own skin is far off, so the match did the work.
        everywhere = np.ones(out.shape[:2], bool)
        donor_skin = _lab_mean(donor.image, everywhere)
        target_skin = _lab_mean(target.image, everywhere)
        assert np.linalg.norm(donor_skin - target_skin) > 10


def test_region_takes_crease_and_lashes_but_not_the_brow():
    target = make_face(open_eyes=False, seed=9)
    donor = make_face(open_eyes=True, seed=10)
    for r in transfer_face(target.image, target.face, donor.image, donor.face):
        eye = target.face.eyes[r.side]
        assert (_alpha_at(r, eye.contour[2:7] + (0, 0.12 * EYE_W)) == 255).all()  # closed lashes
        assert (_alpha_at(r, r.contour[1:8] + (0, -0.16 * EYE_W)) == 255).all()  # open crease
        brow_lower_edge = eye.brow + (0, 0.06 * EYE_W)
        inside = brow_lower_edge[:, 1] >= r.box[1]
        assert (_alpha_at(r, brow_lower_edge[inside]) == 0).all()


def test_pixels_outside_the_mask_are_identical_on_a_large_photo():
    rng = np.random.default_rng(11)
    big = rng.integers(0, 256, (3000, 4000, 3), dtype=np.uint8)
    face = make_face(open_eyes=False, tint=TARGET_TINT, seed=11)
    ox, oy = 2100, 1300
    big[oy : oy + 360, ox : ox + 480] = face.image
    shift = np.array([[1.0, 0.0, ox], [0.0, 1.0, oy]])
    eyes = {
        s: Eye(side=s, contour=transform(shift, e.contour).astype(np.float32),
               brow=transform(shift, e.brow).astype(np.float32))
        for s, e in face.face.eyes.items()
    }
    target_face = Face(box=(ox, oy, ox + 480, oy + 360), score=1.0, eyes=eyes,
                       pose=HeadPose(0, 0, 0), landmarks=np.zeros((0, 2)), backend="synthetic")
    donor = make_face(open_eyes=True, similarity=similarity(5, 1.1, (8, -4)), seed=12)
    original = big.copy()
    results = transfer_face(big, target_face, donor.image, donor.face)
    out = apply(big, results)
    assert np.array_equal(big, original)  # input untouched
    touched = _full_mask(big.shape, results)
    # np.array_equal on the complement, without fancy-indexing 36 MB twice.
    outside = np.where(touched[..., None], big, out)
    assert np.array_equal(outside, big)
    changed = (out != big).any(axis=-1)
    assert changed[touched].mean() > 0.5
    for r in results:
        assert r.pixels.shape[:2] == r.mask.shape == (r.box[3] - r.box[1], r.box[2] - r.box[0])
        assert r.seam_ok


def test_eye_at_the_image_edge_is_clipped_not_broken():
    target = make_face(open_eyes=False, seed=13)
    donor = make_face(open_eyes=True, seed=14)
    # Cut the photo just past the subject's right eye, so its crop hits the image border.
    cut = target.image[:, 135:].copy()
    shift = np.array([[1.0, 0.0, -135.0], [0.0, 1.0, 0.0]])
    eye = target.face.eyes["right"]
    moved = Eye(
        side="right", contour=transform(shift, eye.contour), brow=transform(shift, eye.brow)
    )
    r = transfer_eye(cut, moved, donor.image, donor.face.eyes["right"])
    assert r.box[0] == 0
    assert (r.mask[:, :2] == 0).all()  # kept off the border, as seamlessClone requires
    out = apply(cut, [r])
    assert np.array_equal(out[r.mask.shape[0]:], cut[r.mask.shape[0]:]) or r.box[1] > 0
    assert np.isfinite(r.seam)


@pytest.mark.parametrize("method", ["poisson", "pyramid", "feather"])
def test_every_method_blends_without_a_visible_seam(method: str):
    target = make_face(open_eyes=False, tint=TARGET_TINT, seed=15)
    donor = make_face(open_eyes=True, similarity=similarity(-4, 0.9, (5, 5)), tint=DONOR_TINT,
                      seed=16)
    results = transfer_face(target.image, target.face, donor.image, donor.face, method=method)
    assert [r.method for r in results] == [method, method]
    assert all(r.seam < SEAM_THRESHOLD for r in results)


def test_poisson_copes_with_light_from_the_side():
    # A brightness ramp that differs between frames: mean/std matching cannot remove it,
    # the Poisson solve absorbs it into the boundary.
    target = make_face(open_eyes=False, tint=TARGET_TINT, light=0.1, seed=17)
    donor = make_face(open_eyes=True, similarity=similarity(3, 1.0, (4, 2)), tint=DONOR_TINT,
                      light=-0.1, seed=18)
    results = transfer_face(target.image, target.face, donor.image, donor.face, method="poisson")
    assert all(r.seam_ok for r in results)


def test_apply_copies_and_later_results_win():
    target = make_face(open_eyes=False, seed=19)
    donor = make_face(open_eyes=True, seed=20)
    results = transfer_face(target.image, target.face, donor.image, donor.face, sides=("left",))
    before = target.image.copy()
    out = apply(target.image, results)
    assert out is not target.image and np.array_equal(target.image, before)
    assert not np.array_equal(out, before)
    with pytest.raises(ValueError, match="does not fit"):
        apply(target.image[:100, :100], results)


def test_preview_is_before_and_after_side_by_side():
    target = make_face(open_eyes=False, seed=21)
    donor = make_face(open_eyes=True, seed=22)
    after = apply(target.image, transfer_face(target.image, target.face, donor.image, donor.face))
    view = preview(target.image, after, target.face, height=200)
    half = (view.shape[1] - 4) // 2
    assert view.shape == (200, 2 * half + 4, 3) and view.dtype == np.uint8
    assert np.array_equal(view[:, :half], preview(target.image, target.image, target.face,
                                                  height=200)[:, :half])
    assert not np.array_equal(view[:, :half], view[:, half + 4 :])


def test_bad_inputs_are_refused():
    target = make_face(open_eyes=False, seed=23)
    donor = make_face(open_eyes=True, seed=24)
    one_eyed = Face(box=donor.face.box, score=1.0, eyes={"left": donor.face.eyes["left"]},
                    pose=donor.face.pose, landmarks=donor.face.landmarks, backend="synthetic")
    with pytest.raises(ValueError, match="missing"):
        transfer_face(target.image, target.face, donor.image, one_eyed)
    with pytest.raises(ValueError, match="uint8 RGB"):
        transfer_face(target.image.astype(np.float32), target.face, donor.image, donor.face)
    with pytest.raises(ValueError, match="unknown blend method"):
        transfer_face(target.image, target.face, donor.image, donor.face,
                      method="smudge")  # type: ignore[arg-type]
