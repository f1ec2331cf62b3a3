"""The paste region, colour matching, the blends and the seam metric, on small synthetic crops."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from openeyesd.eyes.blend import (
    BLEND_METHODS,
    blend,
    brow_exclusion,
    eye_region,
    match_colour,
)
from openeyesd.eyes.quality import SEAM_THRESHOLD, measure_seam, seam_score

H, W = 160, 200
EYE_W = 70.0


def _skin(seed: int, gain: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """Skin-coloured crop with blotches and pore noise, scaled per channel by ``gain``."""
    rng = np.random.default_rng(seed)
    blotch = cv2.resize(rng.normal(0, 6, (H // 16 + 1, W // 16 + 1)), (W, H), cv2.INTER_CUBIC)
    img = np.array([205.0, 160.0, 135.0]) + (blotch + rng.normal(0, 3, (H, W)))[..., None]
    return np.clip(img * np.array(gain), 0, 255).astype(np.uint8)


def _eye(cx: float = 100.0, cy: float = 85.0, up: float = 0.3, low: float = 0.2) -> np.ndarray:
    t = np.r_[np.linspace(0, np.pi, 9), np.linspace(np.pi, 2 * np.pi, 9)[1:-1]]
    heights = np.where(t <= np.pi, up, low) * EYE_W
    return np.column_stack([cx + EYE_W / 2 * np.cos(t), cy - heights * np.sin(t)])


def _brow(cy: float = 85.0 - 0.7 * EYE_W) -> np.ndarray:
    return np.column_stack([np.linspace(60, 140, 5), np.full(5, cy)])


def _region():
    return eye_region((H, W), [_eye(), _eye(up=-0.05, low=0.1)], [_brow()], EYE_W)


def _donor_with_eye(gain: tuple[float, float, float]) -> np.ndarray:
    donor = _skin(2, gain)
    cv2.fillPoly(donor, [np.round(_eye()).astype(np.int32)], (230, 230, 225))
    cv2.circle(donor, (100, 80), 13, (40, 60, 90), -1)
    return donor


# --- region --------------------------------------------------------------------------------


def test_region_is_feathered_off_the_border_and_below_the_brow():
    region = _region()
    alpha = region.alpha
    inside = np.zeros((H, W), np.uint8)
    cv2.fillPoly(inside, [np.round(_eye()).astype(np.int32)], 1)
    assert (alpha[inside > 0] == 255).all()
    assert ((alpha > 0) & (alpha < 255)).sum() > 500  # a real feather, not a hard edge
    assert (alpha[:2] == 0).all() and (alpha[-2:] == 0).all()
    assert (alpha[:, :2] == 0).all() and (alpha[:, -2:] == 0).all()
    brow_y = int(_brow()[0, 1])
    assert (alpha[: brow_y + int(0.1 * EYE_W)] == 0).all()
    # The ring is skin outside the region, never in it.
    assert region.ring.sum() > 1000 and not (region.ring & (alpha > 0)).any()


def test_brow_exclusion_is_everything_above_the_brow_line():
    above = brow_exclusion((H, W), _brow(40.0), gap=5.0)
    assert above[:44].all() and not above[47:].any()


# --- colour --------------------------------------------------------------------------------


def test_colour_match_takes_the_target_exposure_and_white_balance():
    target = _skin(1)
    donor = _skin(2, (1.25, 1.05, 0.8))
    ring = _region().ring
    matched = match_colour(donor, target, ring)
    lab = lambda im: cv2.cvtColor(im.astype(np.float32) / 255, cv2.COLOR_RGB2Lab)  # noqa: E731
    before = np.linalg.norm(lab(donor)[ring].mean(0) - lab(target)[ring].mean(0))
    after = np.linalg.norm(lab(matched)[ring].mean(0) - lab(target)[ring].mean(0))
    assert before > 10 and after < 1.0


def test_colour_match_skips_a_ring_too_small_to_measure():
    donor = _skin(2, (1.3, 1.0, 0.7))
    ring = np.zeros((H, W), bool)
    ring[0, :10] = True
    assert np.array_equal(match_colour(donor, _skin(1), ring), donor.astype(np.float32))


# --- blends --------------------------------------------------------------------------------


@pytest.mark.parametrize("method", BLEND_METHODS)
def test_blend_leaves_every_pixel_outside_the_mask_alone(method: str):
    target, alpha = _skin(1), _region().alpha
    out = blend(target, _donor_with_eye((1.2, 1.0, 0.9)).astype(np.float32), alpha, method)
    assert out.dtype == np.uint8 and out.shape == target.shape
    assert np.array_equal(out[alpha == 0], target[alpha == 0])
    assert (out[alpha == 255] != target[alpha == 255]).any()


def test_poisson_places_the_source_where_it_was():
    # seamlessClone centres the mask's bounding box on ``p``; a wrong ``p`` shifts the paste.
    target, alpha = _skin(1), _region().alpha
    out = blend(target, target, alpha, "poisson")
    assert np.abs(out.astype(int) - target.astype(int)).max() <= 2


@pytest.mark.parametrize("method", ["pyramid", "feather"])
def test_core_of_the_region_is_the_donor(method: str):
    target, region = _skin(1), _region()
    donor = _donor_with_eye((1.0, 1.0, 1.0))
    out = blend(target, donor, region.alpha, method)
    core = cv2.erode((region.alpha == 255).astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
    assert np.abs(out[core].astype(int) - donor[core].astype(int)).mean() < 2.0


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="unknown blend method"):
        blend(_skin(1), _skin(2), _region().alpha, "smudge")  # type: ignore[arg-type]


# --- seam metric ---------------------------------------------------------------------------


def test_seam_metric_flags_a_hard_edged_miscoloured_paste():
    target, region = _skin(1), _region()
    donor = _donor_with_eye((1.25, 1.05, 0.8))
    hard = np.where(region.alpha > 0, 255, 0).astype(np.uint8)
    bad = blend(target, donor, hard, "feather")
    report = measure_seam(target, bad, hard)
    assert report.score > SEAM_THRESHOLD and not report.ok
    assert report.colour > 1.0 and report.edge > 0.5  # both symptoms seen


def test_seam_metric_flags_a_soft_edged_but_miscoloured_paste():
    target, region = _skin(1), _region()
    bad = blend(target, _donor_with_eye((1.25, 1.05, 0.8)), region.alpha, "feather")
    assert seam_score(target, bad, region.alpha) > SEAM_THRESHOLD


@pytest.mark.parametrize("method", BLEND_METHODS)
def test_seam_metric_passes_a_colour_matched_blend(method: str):
    target, region = _skin(1), _region()
    donor = match_colour(_donor_with_eye((1.25, 1.05, 0.8)), target, region.ring)
    good = blend(target, donor, region.alpha, method)
    assert seam_score(target, good, region.alpha) < SEAM_THRESHOLD


def test_seam_metric_is_zero_for_no_change_and_for_an_empty_mask():
    target, region = _skin(1), _region()
    assert seam_score(target, target, region.alpha) == 0.0
    assert seam_score(target, _skin(2), np.zeros((H, W), np.uint8)) == 0.0
