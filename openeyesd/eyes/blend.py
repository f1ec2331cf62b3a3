"""The pixel half of an eye transfer: the paste region, colour matching and the blend itself.

Everything here works on one crop around one eye, in crop pixel coordinates. Images are RGB,
``uint8`` unless said otherwise; masks are ``uint8`` alpha (0 = untouched, 255 = all donor).
Distances are measured with distance transforms rather than morphology with large kernels, so the
cost stays linear in the crop size however large the eye is.

Three blends, chosen by name. ``poisson`` is the default: it had the least visible seams of the
three on every measurement (synthetic faces and a real pair; see the table in :mod:`.quality`),
and it alone absorbs a lighting *gradient* that differs between the frames, which mean/std colour
matching cannot. ``pyramid`` (multi-band) never bleeds boundary colour inwards, which Poisson can
do where the boundary crosses strong edges (hair, glasses); ``feather`` is the plain baseline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import cv2
import numpy as np

BlendMethod = Literal["poisson", "pyramid", "feather"]
BLEND_METHODS: tuple[str, ...] = get_args(BlendMethod)

#: Dilation of the eye outlines, in eye widths: far enough to take the crease above an open eye
#: and the lashes of both the open and the closed eye along.
DILATE_FRACTION = 0.35
#: Width of the feathered edge, in eye widths, measured inwards from the region's border.
FEATHER_FRACTION = 0.12
#: Width of the skin ring outside the region whose colour statistics are matched.
RING_FRACTION = 0.15
#: How far below the brow line the region stops, in eye widths. Backends give the brow's centre
#: line (MediaPipe) or its upper edge (dlib 68), and a brow is ~0.15 eye widths thick, so this
#: keeps the whole brow out of the paste while the crease (below it) stays in.
BROW_GAP_FRACTION = 0.1
#: Pixels kept clear at the crop border: cv2.seamlessClone needs the mask off the ROI border.
_BORDER = 2
#: Below this many ring pixels the colour statistics are noise, so colour matching is skipped.
_MIN_RING_PIXELS = 50
#: Bounds on the std ratio of colour matching. Frames of one burst differ mostly by an offset;
#: the ring's spread also depends on the eye's state (an open eye's socket shadow reaches into it),
#: and a free ratio then flattens or exaggerates the pasted iris (0.67 seen on a real pair).
_STD_RATIO = (0.8, 1.25)


@dataclass(frozen=True)
class EyeRegion:
    #: Feathered alpha, uint8; zero everywhere the target must stay exactly as it was.
    alpha: np.ndarray
    #: Skin ring just outside the region, bool; where donor and target colours are compared.
    ring: np.ndarray


def _inside_distance(binary: np.ndarray) -> np.ndarray:
    """Distance from each pixel of ``binary`` to the nearest pixel outside it (0 outside)."""
    return cv2.distanceTransform(binary.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)


def _outside_distance(binary: np.ndarray) -> np.ndarray:
    return _inside_distance(~binary)


def brow_exclusion(shape: tuple[int, int], brow: np.ndarray, gap: float) -> np.ndarray:
    """Everything above a line ``gap`` pixels below the brow, as a bool mask.

    The brow's ends are extended along its own direction so the excluded area spans the crop
    even when the brow is short; the polygon is then closed far above the crop.
    """
    pts = np.asarray(brow, np.float64) + (0.0, gap)
    reach = float(shape[0] + shape[1])
    first = pts[0] + _unit(pts[0] - pts[1]) * reach
    last = pts[-1] + _unit(pts[-1] - pts[-2]) * reach
    top = -2.0 * reach
    poly = np.vstack([[first[0], top], first, pts, last, [last[0], top]])
    out = np.zeros(shape, np.uint8)
    cv2.fillPoly(out, [np.round(poly * 16).astype(np.int32)], 1, cv2.LINE_8, 4)
    return out.astype(bool)


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v / n if n > 1e-9 else np.array([1.0, 0.0])


def eye_region(
    shape: tuple[int, int],
    contours: list[np.ndarray],
    brows: list[np.ndarray],
    eye_width: float,
    *,
    dilate: float = DILATE_FRACTION,
    feather: float = FEATHER_FRACTION,
) -> EyeRegion:
    """The paste region: union of the eye outlines, dilated, cut below the brows, feathered.

    ``contours`` are the target's closed-eye outline and the donor's open-eye outline mapped into
    the target, both in crop coordinates; ``brows`` likewise.
    """
    polys = np.zeros(shape, np.uint8)
    for contour in contours:
        cv2.fillPoly(polys, [np.round(contour * 16).astype(np.int32)], 1, cv2.LINE_8, 4)
    # The outlines themselves are never cut by the brow line, only their dilation.
    outlines = polys.astype(bool)
    binary = _outside_distance(outlines) <= dilate * eye_width
    above = np.zeros(shape, bool)
    for brow in brows:
        above |= brow_exclusion(shape, brow, BROW_GAP_FRACTION * eye_width)
    binary &= ~above | outlines
    binary[:_BORDER] = binary[-_BORDER:] = False
    binary[:, :_BORDER] = binary[:, -_BORDER:] = False
    # A smoothstep on the distance inside the region: zero exactly on and outside its border,
    # so nothing outside the region changes, and flat at both ends so no ridge shows.
    t = np.clip(_inside_distance(binary) / max(feather * eye_width, 1.0), 0.0, 1.0)
    alpha = np.round(255.0 * t * t * (3.0 - 2.0 * t)).astype(np.uint8)
    ring = (_outside_distance(binary) <= RING_FRACTION * eye_width) & ~binary & ~above
    return EyeRegion(alpha=alpha, ring=ring)


def _to_lab(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.asarray(rgb, np.float32) / 255.0, cv2.COLOR_RGB2Lab)


def _from_lab(lab: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(lab.astype(np.float32), cv2.COLOR_Lab2RGB) * 255.0


def match_colour(donor: np.ndarray, target: np.ndarray, ring: np.ndarray) -> np.ndarray:
    """Give ``donor`` the target's exposure and white balance, measured on the skin ``ring``.

    Mean/std transfer per Lab channel (Reinhard et al. 2001): both images are aligned, so the ring
    shows the same skin in each and the difference is lighting and camera, not content.
    Returns float32 RGB in [0, 255].
    """
    donor_f = np.asarray(donor, np.float32)
    if int(ring.sum()) < _MIN_RING_PIXELS:
        return donor_f
    d_lab, t_lab = _to_lab(donor_f), _to_lab(target)
    d_px, t_px = d_lab[ring], t_lab[ring]
    d_mean, t_mean = d_px.mean(axis=0), t_px.mean(axis=0)
    ratio = np.clip(t_px.std(axis=0) / np.maximum(d_px.std(axis=0), 1e-3), *_STD_RATIO)
    matched = (d_lab - d_mean) * ratio + t_mean
    return np.clip(_from_lab(matched), 0.0, 255.0)


def _feather_blend(target: np.ndarray, donor: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = (alpha.astype(np.float32) / 255.0)[..., None]
    return donor * a + target.astype(np.float32) * (1.0 - a)


def _poisson_blend(target: np.ndarray, donor: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Poisson image editing (Pérez et al. 2003) via cv2.seamlessClone, then the feathered alpha.

    seamlessClone places the centre of the mask's bounding box at ``p``, so passing that centre
    keeps donor and target aligned. It also solves over the whole bounding box, nudging pixels
    outside the mask; the final alpha composite puts those back exactly.
    """
    mask = np.where(alpha > 0, 255, 0).astype(np.uint8)
    x, y, w, h = cv2.boundingRect(mask)
    if w == 0 or h == 0:
        return target.astype(np.float32)
    src = np.clip(np.round(donor), 0, 255).astype(np.uint8)
    cloned = cv2.seamlessClone(src, target, mask, (x + w // 2, y + h // 2), cv2.NORMAL_CLONE)
    return _feather_blend(target, cloned.astype(np.float32), alpha)


def _pyramid_levels(shape: tuple[int, ...], coarsest: int = 8) -> int:
    return int(max(1, min(6, np.floor(np.log2(max(min(shape[:2]), 1) / coarsest)))))


def _laplacian_pyramid(img: np.ndarray, levels: int) -> list[np.ndarray]:
    pyramid, current = [], img
    for _ in range(levels):
        down = cv2.pyrDown(current)
        up = cv2.pyrUp(down, dstsize=(current.shape[1], current.shape[0]))
        pyramid.append(current - up)
        current = down
    pyramid.append(current)
    return pyramid


def _pyramid_blend(target: np.ndarray, donor: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Multi-band blend (Burt & Adelson 1983): each frequency band blended over its own width."""
    levels = _pyramid_levels(target.shape)
    a = alpha.astype(np.float32) / 255.0
    lt = _laplacian_pyramid(target.astype(np.float32), levels)
    ld = _laplacian_pyramid(donor.astype(np.float32), levels)
    blended = []
    for band_t, band_d in zip(lt, ld, strict=True):
        # The alpha pyramid is built with the same pyrDown, so its levels match the bands.
        w = a[..., None]
        blended.append(band_d * w + band_t * (1.0 - w))
        a = cv2.pyrDown(a)
    out = blended[-1]
    for band in reversed(blended[:-1]):
        out = cv2.pyrUp(out, dstsize=(band.shape[1], band.shape[0])) + band
    # Coarse bands spread past the region; the alpha composite keeps the outside exact.
    return _feather_blend(target, out, alpha)


def blend(
    target: np.ndarray, donor: np.ndarray, alpha: np.ndarray, method: BlendMethod = "poisson"
) -> np.ndarray:
    """Blend ``donor`` (float32 or uint8 RGB) into ``target`` (uint8 RGB) under ``alpha``.

    Returns uint8 RGB; wherever ``alpha`` is 0 the result equals ``target`` exactly.
    """
    blenders = {"poisson": _poisson_blend, "pyramid": _pyramid_blend, "feather": _feather_blend}
    if method not in blenders:
        raise ValueError(f"unknown blend method {method!r}; expected one of {BLEND_METHODS}")
    out = np.clip(np.round(blenders[method](target, donor, alpha)), 0, 255).astype(np.uint8)
    # The composite already gives alpha == 0 pixels the target's exact value (0·donor + 1·target);
    # copying them makes that a guarantee of this function rather than of float arithmetic.
    untouched = alpha == 0
    out[untouched] = target[untouched]
    return out
