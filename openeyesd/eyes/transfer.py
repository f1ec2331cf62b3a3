"""Open a closed eye with the same person's open eye from another frame.

The reference method (Photoshop Elements "Open Closed Eyes", Pixel "Best Take"):

1. **align** — one similarity transform, donor → target, fitted by weighted least squares on the
   landmarks a blink does not move: eye corners, lower lids, brows. When both eyes of a face are
   transferred they share this transform, so the gaze of the pasted eyes agrees.
2. **warp** — a piecewise-affine (Delaunay) refinement on top of it pins the donor's eye corners
   exactly onto the target's, spreading the correction smoothly to the crop border.
3. **region, colour, blend, score** — see :mod:`.blend` and :mod:`.quality`.

All of it happens on a crop around each eye at full resolution; pixels outside the blend mask are
never written, so :func:`apply` changes nothing else in the photo, bit for bit.

Points are in the coordinates of :mod:`.types` as the landmark backend emits them: full-image
pixel coordinates with a pixel's centre at integer (x, y), the convention cv2 draws and warps in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from .blend import BlendMethod, blend, eye_region, match_colour
from .quality import SEAM_THRESHOLD, seam_score
from .resample import shrink
from .types import Eye, Face, Side

# Weights of the alignment fit. Corners barely move in a blink, the lower lid a little; the upper
# lid is what closes, so it is left out; the brow drops a little when the lids squeeze.
_CORNER_WEIGHT = 4.0
_LOWER_LID_WEIGHT = 1.0
_BROW_WEIGHT = 0.5
_LOWER_LID = slice(9, 16)

#: Margin around the eye and brow points, in eye widths: room for the region's dilation, the skin
#: ring of colour matching and the Poisson solver's boundary.
CROP_MARGIN = 0.6
#: Preview height in pixels and the margin around the face box, in face widths.
PREVIEW_HEIGHT = 384
PREVIEW_MARGIN = 0.2


@dataclass(frozen=True)
class EyeTransferResult:
    side: Side
    #: (x0, y0, x1, y1) of the crop in full-image pixels, x1/y1 exclusive.
    box: tuple[int, int, int, int]
    #: The crop's new pixels, uint8 RGB; equal to the target's wherever ``mask`` is 0.
    pixels: np.ndarray
    #: Feathered blend alpha over the crop, uint8: 0 untouched, 255 fully donor.
    mask: np.ndarray
    #: Seam visibility (:func:`.quality.seam_score`), lower is better.
    seam: float
    #: The global donor → target similarity, 2×3, full-image coordinates.
    affine: np.ndarray
    #: The donor's open-eye contour where it now lies in the target, full-image coordinates.
    contour: np.ndarray
    method: str

    @property
    def seam_ok(self) -> bool:
        return self.seam <= SEAM_THRESHOLD


def _check_image(name: str, image: np.ndarray) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{name} must be uint8 RGB (H, W, 3), got {image.dtype} {image.shape}")


def transform(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 2×3 affine to (N, 2) points."""
    pts = np.asarray(points, np.float64)
    return pts @ affine[:, :2].T + affine[:, 2]


def fit_similarity(src: np.ndarray, dst: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted least-squares similarity (rotation, uniform scale, shift) mapping src → dst.

    Linear in (a, b, tx, ty) with x' = a·x − b·y + tx, y' = b·x + a·y + ty, so one lstsq solves it.
    """
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    n = len(src)
    design = np.zeros((2 * n, 4))
    design[0::2] = np.column_stack([src[:, 0], -src[:, 1], np.ones(n), np.zeros(n)])
    design[1::2] = np.column_stack([src[:, 1], src[:, 0], np.zeros(n), np.ones(n)])
    w = np.sqrt(np.repeat(np.asarray(weights, np.float64), 2))
    sol = np.linalg.lstsq(design * w[:, None], dst.reshape(-1) * w, rcond=None)[0]
    a, b, tx, ty = sol
    return np.array([[a, -b, tx], [b, a, ty]])


def _stable_points(eye: Eye) -> tuple[np.ndarray, np.ndarray]:
    contour = np.asarray(eye.contour, np.float64)
    brow = np.asarray(eye.brow, np.float64)
    corners = np.stack([eye.outer_corner, eye.inner_corner]).astype(np.float64)
    lower = contour[_LOWER_LID]
    points = np.vstack([corners, lower, brow])
    weights = np.concatenate([
        np.full(2, _CORNER_WEIGHT),
        np.full(len(lower), _LOWER_LID_WEIGHT),
        np.full(len(brow), _BROW_WEIGHT),
    ])
    return points, weights


def align(pairs: Sequence[tuple[Eye, Eye]]) -> np.ndarray:
    """One donor → target similarity for all (target_eye, donor_eye) pairs together."""
    src, dst, weights = [], [], []
    for target_eye, donor_eye in pairs:
        if len(donor_eye.brow) != len(target_eye.brow):
            raise ValueError("donor and target brows must have the same number of points")
        d_pts, w = _stable_points(donor_eye)
        t_pts, _ = _stable_points(target_eye)
        src.append(d_pts)
        dst.append(t_pts)
        weights.append(w)
    return fit_similarity(np.vstack(src), np.vstack(dst), np.concatenate(weights))


def pin_corners(warped: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Shift a warped donor contour so its corners land exactly on the target's.

    Each point gets the corners' residuals blended by where it lies along the corner-to-corner
    axis, so the open eye keeps its shape and only stretches as much as the corners require.
    """
    outer, inner = warped[0], warped[8]
    axis = inner - outer
    t = np.clip((warped - outer) @ axis / max(float(axis @ axis), 1e-9), 0.0, 1.0)[:, None]
    r_outer, r_inner = target[0] - outer, target[8] - inner
    return warped + (1.0 - t) * r_outer + t * r_inner


def _crop_box(
    points: np.ndarray, eye_width: float, shape: tuple[int, ...]
) -> tuple[int, int, int, int]:
    margin = CROP_MARGIN * eye_width
    x0, y0 = np.floor(points.min(axis=0) - margin).astype(int)
    x1, y1 = np.ceil(points.max(axis=0) + margin).astype(int) + 1
    h, w = shape[:2]
    return int(max(0, x0)), int(max(0, y0)), int(min(w, x1)), int(min(h, y1))


def _frame_points(w: int, h: int) -> np.ndarray:
    """The crop's corners and edge midpoints: where the refinement hands over to the global fit."""
    xs, ys = (0.0, (w - 1) / 2, w - 1.0), (0.0, (h - 1) / 2, h - 1.0)
    return np.array([(x, y) for x in xs for y in ys if (x, y) != (xs[1], ys[1])])


def _triangulate(points: np.ndarray, w: int, h: int) -> np.ndarray:
    """Delaunay triangles of ``points`` (all inside the w×h crop) as (M, 3) vertex indices."""
    subdiv = cv2.Subdiv2D((0, 0, w, h))
    for x, y in points:
        subdiv.insert((float(x), float(y)))
    corners = subdiv.getTriangleList().reshape(-1, 3, 2).astype(np.float64)
    # Subdiv2D hangs its mesh on virtual vertices far outside the rectangle; drop those triangles.
    inside = np.all((corners >= -0.5) & (corners <= (w, h)), axis=(1, 2))
    corners = corners[inside]
    dist = np.linalg.norm(corners[:, :, None, :] - points[None, None, :, :], axis=3)
    return dist.argmin(axis=2)


def _keep_inside(src: np.ndarray, dst: np.ndarray, w: int, h: int) -> tuple[np.ndarray, ...]:
    """Control points inside the crop, dropping near-duplicates (Subdiv2D would merge them)."""
    inside = (dst[:, 0] >= 0) & (dst[:, 0] <= w - 1) & (dst[:, 1] >= 0) & (dst[:, 1] <= h - 1)
    apart = np.linalg.norm(dst[:, None, :] - dst[None, :, :], axis=2) >= 0.5
    keep: list[int] = []
    for i in np.flatnonzero(inside):
        if apart[i, keep].all():
            keep.append(int(i))
    return src[keep], dst[keep]


def _signed_area(tri: np.ndarray) -> float:
    (ax, ay), (bx, by), (cx, cy) = tri
    return 0.5 * float((bx - ax) * (cy - ay) - (by - ay) * (cx - ax))


def _piecewise_map(
    src: np.ndarray, dst: np.ndarray, fallback: np.ndarray, w: int, h: int
) -> tuple[np.ndarray, np.ndarray]:
    """cv2.remap maps (crop → donor image) of a piecewise-affine warp with ``fallback`` outside.

    ``dst`` are control points in crop coordinates, ``src`` their donor positions; ``fallback`` is
    the 2×3 crop → donor affine used where no valid triangle covers a pixel.
    """
    label = np.zeros((h, w), np.uint16)
    mats = [fallback.astype(np.float32)]
    for tri in _triangulate(dst, w, h):
        d, s = dst[tri], src[tri]
        area_d, area_s = _signed_area(d), _signed_area(s)
        # A sliver or a flipped triangle would fold the image; leave it to the global fit.
        if abs(area_d) < 1.0 or area_d * area_s <= 0:
            continue
        mats.append(cv2.getAffineTransform(d.astype(np.float32), s.astype(np.float32)))
        cv2.fillConvexPoly(label, np.round(d * 16).astype(np.int32), len(mats) - 1, cv2.LINE_8, 4)
    m = np.asarray(mats, np.float32)[label]
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
    map_x = m[..., 0, 0] * gx + m[..., 0, 1] * gy + m[..., 0, 2]
    map_y = m[..., 1, 0] * gx + m[..., 1, 1] * gy + m[..., 1, 2]
    return map_x, map_y


def _warp_donor(
    donor_rgb: np.ndarray,
    affine: np.ndarray,
    controls: tuple[np.ndarray, np.ndarray],
    box: tuple[int, int, int, int],
) -> np.ndarray:
    """The donor resampled into the target crop ``box``; ``controls`` = (donor, target) points."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    # crop → donor = inverse(affine) after shifting crop coordinates to full-image ones.
    shift = np.array([[1.0, 0.0, x0], [0.0, 1.0, y0], [0.0, 0.0, 1.0]])
    fallback = cv2.invertAffineTransform(affine) @ shift
    frame = _frame_points(w, h)
    src = np.vstack([controls[0], transform(fallback, frame)])
    dst = np.vstack([controls[1] - (x0, y0), frame])
    src, dst = _keep_inside(src, dst, w, h)
    map_x, map_y = _piecewise_map(src, dst, fallback, w, h)
    # Reflect rather than black: a donor eye near its image border must not drag in a black edge.
    warped = cv2.remap(donor_rgb, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    return warped.astype(np.float32)


def _transfer_aligned(
    target_rgb: np.ndarray,
    target_eye: Eye,
    donor_rgb: np.ndarray,
    donor_eye: Eye,
    affine: np.ndarray,
    method: BlendMethod,
) -> EyeTransferResult:
    width = target_eye.width
    if width < 4:
        raise ValueError(f"target {target_eye.side} eye is {width:.1f} px wide; too small to fix")
    t_contour = np.asarray(target_eye.contour, np.float64)
    d_contour = np.asarray(donor_eye.contour, np.float64)
    contour = pin_corners(transform(affine, d_contour), t_contour)
    d_brow = transform(affine, donor_eye.brow)
    box = _crop_box(np.vstack([t_contour, contour]), width, target_rgb.shape)
    x0, y0, x1, y1 = box
    if x1 - x0 < 8 or y1 - y0 < 8:
        raise ValueError(f"target {target_eye.side} eye lies outside the image")
    off = np.array([x0, y0], np.float64)
    controls = (np.vstack([d_contour, donor_eye.brow]), np.vstack([contour, d_brow]))
    warped = _warp_donor(donor_rgb, affine, controls, box)
    crop = target_rgb[y0:y1, x0:x1]
    brows = [np.asarray(target_eye.brow, np.float64) - off, d_brow - off]
    region = eye_region(crop.shape[:2], [t_contour - off, contour - off], brows, width)
    pixels = blend(crop, match_colour(warped, crop, region.ring), region.alpha, method)
    return EyeTransferResult(
        side=target_eye.side,
        box=(x0, y0, x1, y1),
        pixels=pixels,
        mask=region.alpha,
        seam=seam_score(crop, pixels, region.alpha),
        affine=affine,
        contour=contour.astype(np.float32),
        method=method,
    )


def transfer_eye(
    target_rgb: np.ndarray,
    target_eye: Eye,
    donor_rgb: np.ndarray,
    donor_eye: Eye,
    *,
    method: BlendMethod = "poisson",
) -> EyeTransferResult:
    """Put ``donor_eye`` (open, from ``donor_rgb``) where ``target_eye`` is in ``target_rgb``.

    Images are uint8 RGB, not modified. Use :func:`apply` to paste the result back.
    """
    _check_image("target_rgb", target_rgb)
    _check_image("donor_rgb", donor_rgb)
    affine = align([(target_eye, donor_eye)])
    return _transfer_aligned(target_rgb, target_eye, donor_rgb, donor_eye, affine, method)


def transfer_face(
    target_rgb: np.ndarray,
    target_face: Face,
    donor_rgb: np.ndarray,
    donor_face: Face,
    sides: Sequence[Side] = ("left", "right"),
    *,
    method: BlendMethod = "poisson",
) -> list[EyeTransferResult]:
    """Transfer the given eyes of one face, all warped by ONE transform fitted on all of them.

    One transform keeps the two pasted eyes consistent with each other (same scale, same roll,
    so the gaze agrees), which two independent fits do not guarantee.
    """
    _check_image("target_rgb", target_rgb)
    _check_image("donor_rgb", donor_rgb)
    missing = [s for s in sides if s not in target_face.eyes or s not in donor_face.eyes]
    if not sides or missing:
        raise ValueError(f"cannot transfer sides {tuple(sides)}: missing {missing}")
    pairs = [(target_face.eyes[s], donor_face.eyes[s]) for s in sides]
    affine = align(pairs)
    return [
        _transfer_aligned(target_rgb, t_eye, donor_rgb, d_eye, affine, method)
        for t_eye, d_eye in pairs
    ]


def apply(image: np.ndarray, results: Sequence[EyeTransferResult]) -> np.ndarray:
    """A copy of ``image`` with each result's pixels pasted under its mask; later results win."""
    out = image.copy()
    for result in results:
        x0, y0, x1, y1 = result.box
        view = out[y0:y1, x0:x1]
        if view.shape[:2] != result.mask.shape:
            raise ValueError(f"result box {result.box} does not fit an image of {image.shape}")
        paste = result.mask > 0
        view[paste] = result.pixels[paste]
    return out


def preview(
    before_rgb: np.ndarray, after_rgb: np.ndarray, face: Face, *, height: int = PREVIEW_HEIGHT
) -> np.ndarray:
    """Before | after crops of ``face``, side by side at ``height`` pixels, for operators."""
    margin = PREVIEW_MARGIN * face.width
    h, w = before_rgb.shape[:2]
    x0, y0 = max(0, int(face.box[0] - margin)), max(0, int(face.box[1] - margin))
    x1, y1 = min(w, int(np.ceil(face.box[2] + margin))), min(h, int(np.ceil(face.box[3] + margin)))
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"face box {face.box} lies outside the image")
    size = (max(1, round((x1 - x0) * height / (y1 - y0))), height)
    crops = [shrink(img[y0:y1, x0:x1], size) for img in (before_rgb, after_rgb)]
    gap = np.full((height, 4, 3), 255, np.uint8)
    return np.hstack([crops[0], gap, crops[1]])
