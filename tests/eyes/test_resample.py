"""Fast shrinking by halvings (openeyesd/eyes/resample.py)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from openeyesd.eyes.resample import halve, halvings, shrink


def test_halvings_stop_before_the_length_falls_under_the_limit() -> None:
    assert halvings(1000, 256) == 1  # 500 >= 256, 250 is not
    assert halvings(1024, 256) == 2
    assert halvings(255, 256) == 0


def test_halve_drops_odd_edges_and_stops_at_two_pixels() -> None:
    image = np.zeros((7, 13, 3), np.uint8)
    halved, done = halve(image, 5)
    assert done == 2 and halved.shape == (1, 3, 3)  # 7x13 -> 3x6 -> 1x3, then a side < 2


@pytest.mark.parametrize(("shape", "size"), [((3001, 2003), (300, 200)), ((400, 300), (301, 226)),
                                             ((120, 90), (240, 180))])
def test_shrink_looks_like_one_area_resize(shape: tuple[int, int], size: tuple[int, int]) -> None:
    rng = np.random.default_rng(3)
    coarse = rng.integers(0, 256, (12, 9, 3), dtype=np.uint8)
    image = cv2.resize(coarse, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)
    fast = shrink(image, size)
    direct = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    assert fast.shape == direct.shape == (size[1], size[0], 3)
    assert np.abs(fast.astype(int) - direct).mean() < 1.5
