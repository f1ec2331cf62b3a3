"""The store of donor eye regions: what it keeps, what it drops, and the frame it rebuilds."""

from __future__ import annotations

import numpy as np

from openeyesd.eyes.donor_regions import EyeRegionStore, FrameRegions, cut_regions, eye_region_box
from openeyesd.eyes.types import Eye, Face, HeadPose


def _face(x: float, y: float, eye_width: float = 20.0) -> Face:
    """A face whose two eyes lie side by side at (x, y), brows 10 px above."""
    eyes = {}
    for side, dx in (("right", 0.0), ("left", 2 * eye_width)):
        t = np.linspace(0, 2 * np.pi, 16, endpoint=False)
        contour = np.stack([x + dx + eye_width / 2 * (1 - np.cos(t)),
                            y - 4 * np.sin(t)], axis=1)
        brow = np.stack([x + dx + np.linspace(0, eye_width, 5), np.full(5, y - 10.0)], axis=1)
        eyes[side] = Eye(side, contour, brow)
    return Face(box=(x - 10, y - 30, x + 3 * eye_width + 10, y + 40), score=1.0, eyes=eyes,
                pose=HeadPose(0.0, 0.0, 0.0), landmarks=np.zeros((0, 2)), backend="test")


def _photo(height: int = 200, width: int = 300) -> np.ndarray:
    rng = np.random.default_rng(3)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_the_region_holds_both_eyes_and_brows_with_an_eye_width_around() -> None:
    box = eye_region_box(_face(100, 100), 300, 200)
    # eyes from x=100 to 160, brows at y=90, lids down to y=104; margin 20 px
    assert box == (80, 70, 181, 125)


def test_the_region_is_clamped_to_the_photo() -> None:
    assert eye_region_box(_face(5, 12), 50, 40) == (0, 0, 50, 37)


def test_the_sparse_frame_has_the_regions_pixels_and_zeros_elsewhere() -> None:
    photo = _photo()
    regions = cut_regions(photo, [(0, _face(30, 60)), (2, _face(180, 120))])
    frame, boxes = regions.sparse_frame([2, 0])  # type: ignore[misc]
    assert frame.shape == photo.shape and not frame.flags.writeable
    filled = np.zeros(photo.shape[:2], bool)
    for x0, y0, x1, y1 in boxes:
        filled[y0:y1, x0:x1] = True
    assert np.array_equal(frame[filled], photo[filled])
    assert not frame[~filled].any()


def test_a_face_without_a_region_means_decode() -> None:
    regions = cut_regions(_photo(), [(0, _face(30, 60))])
    assert regions.sparse_frame([0, 1]) is None


def test_the_copies_do_not_share_memory_with_the_photo() -> None:
    photo = _photo()
    regions = cut_regions(photo, [(0, _face(30, 60))])
    photo[:] = 0
    assert regions.regions[0][1].any()


def _regions(nbytes: int) -> FrameRegions:
    pixels = np.ones((1, nbytes // 3, 3), np.uint8)
    return FrameRegions(10, 10, {0: ((0, 0, 1, 1), pixels)})


def test_the_store_drops_the_least_recently_used_beyond_its_bound() -> None:
    store = EyeRegionStore(max_bytes=3000)
    store.put("a", _regions(1200))
    store.put("b", _regions(1200))
    assert store.get("a") is not None  # now "b" is the least recently used
    store.put("c", _regions(1200))
    assert store.get("b") is None and store.get("a") is not None and store.get("c") is not None
    assert store.nbytes == 2400


def test_the_store_replaces_a_photo_and_refuses_what_cannot_fit() -> None:
    store = EyeRegionStore(max_bytes=3000)
    store.put("a", _regions(1200))
    store.put("a", _regions(600))
    assert store.nbytes == 600
    store.put("huge", _regions(6000))
    assert store.get("huge") is None and store.get("a") is not None


def test_a_store_of_zero_bytes_keeps_nothing() -> None:
    store = EyeRegionStore(max_bytes=0)
    store.put("a", _regions(300))
    assert store.get("a") is None and store.nbytes == 0
