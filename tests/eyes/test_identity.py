"""dlib identity descriptors on the astronaut, altered copies of her, and the cameraman."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from openeyesd.eyes.model_info import MODELS, check_models
from openeyesd.eyes.types import Face

skimage_data = pytest.importorskip("skimage.data")
pytest.importorskip("dlib")
_PROBLEMS = check_models(MODELS, verify_sha256=False)
pytestmark = pytest.mark.skipif(bool(_PROBLEMS), reason="; ".join(_PROBLEMS))

from openeyesd.eyes.identity import DlibIdentity, IdentityBackend  # noqa: E402
from openeyesd.eyes.landmarks import FaceMeshBackend  # noqa: E402


@pytest.fixture(scope="module")
def landmarks(mesh_backend):
    return mesh_backend


@pytest.fixture(scope="module")
def identity() -> DlibIdentity:
    return DlibIdentity()


def _one_face(landmarks: FaceMeshBackend, image: np.ndarray) -> Face:
    faces = landmarks.detect(np.ascontiguousarray(image))
    assert len(faces) == 1
    return faces[0]


@pytest.fixture(scope="module")
def reference(landmarks: FaceMeshBackend, identity: DlibIdentity,
              astronaut: np.ndarray) -> np.ndarray:
    return identity.describe(astronaut, _one_face(landmarks, astronaut))


def test_descriptor_is_a_unit_vector(reference: np.ndarray, identity: DlibIdentity) -> None:
    probe: IdentityBackend = identity
    assert probe.name == "dlib-resnet-v1"
    assert reference.shape == (128,) and reference.dtype == np.float32
    assert np.linalg.norm(reference) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("change", ["mirror", "half_size", "brighter", "in_bigger_frame"])
def test_same_person_is_close(change: str, landmarks: FaceMeshBackend, identity: DlibIdentity,
                              astronaut: np.ndarray, reference: np.ndarray) -> None:
    image = {
        "mirror": lambda a: a[:, ::-1],
        "half_size": lambda a: cv2.resize(a, (256, 256), interpolation=cv2.INTER_AREA),
        "brighter": lambda a: cv2.convertScaleAbs(a, alpha=1.15, beta=20),
        "in_bigger_frame": lambda a: cv2.copyMakeBorder(a, 300, 100, 200, 400,
                                                        cv2.BORDER_CONSTANT, value=(90,) * 3),
    }[change](astronaut)
    image = np.ascontiguousarray(image)
    other = identity.describe(image, _one_face(landmarks, image))
    distance = identity.distance(reference, other)
    assert distance < 0.25
    assert identity.same_person(distance)


def test_other_person_is_far(landmarks: FaceMeshBackend, identity: DlibIdentity,
                             reference: np.ndarray) -> None:
    camera = np.ascontiguousarray(np.stack([skimage_data.camera()] * 3, axis=-1))
    cameraman = identity.describe(camera, _one_face(landmarks, camera))
    distance = identity.distance(reference, cameraman)
    assert distance > 0.5
    assert not identity.same_person(distance)


def test_distorted_face_is_farther_than_a_mirrored_one(
    landmarks: FaceMeshBackend, identity: DlibIdentity, astronaut: np.ndarray,
    reference: np.ndarray,
) -> None:
    # Stretch the face to 1.6x its width: the proportions that identify her change.
    stretched = cv2.resize(astronaut, (820, 512), interpolation=cv2.INTER_CUBIC)
    far = identity.distance(reference, identity.describe(stretched,
                                                         _one_face(landmarks, stretched)))
    mirror = np.ascontiguousarray(astronaut[:, ::-1])
    near = identity.distance(reference, identity.describe(mirror, _one_face(landmarks, mirror)))
    assert far > near + 0.1


def test_five_points_agree_with_the_mesh(landmarks: FaceMeshBackend, identity: DlibIdentity,
                                         astronaut: np.ndarray) -> None:
    face = _one_face(landmarks, astronaut)
    points = identity.five_points(astronaut, face)
    # dlib: subject's left eye outer, inner; right eye outer, inner; base of the nose
    mesh = face.landmarks[[263, 362, 33, 133, 2]]
    assert np.abs(points - mesh).max() < 6.0


def test_distance_is_symmetric_and_zero_on_itself(identity: DlibIdentity,
                                                  reference: np.ndarray) -> None:
    assert identity.distance(reference, reference) == pytest.approx(0.0, abs=1e-6)
    other = np.roll(reference, 1)
    assert identity.distance(reference, other) == pytest.approx(identity.distance(other,
                                                                                  reference))


def _toolkit_pauses(tmp_path: Path, reason: str, break_it: Callable[[], None]) -> None:
    """With ``break_it`` done after the toolkit's modules are imported, build_toolkit on a
    default config raises BackendUnavailable (the worker pauses) whose message matches
    ``reason``, rather than letting the error through."""
    from openeyesd.config import parse_config
    from openeyesd.errors import BackendUnavailable
    from openeyesd.eyes.analysis import build_toolkit
    from tests.conftest import config_dict

    config = parse_config(config_dict(tmp_path), base_dir=tmp_path)
    break_it()
    with pytest.raises(BackendUnavailable, match=reason):
        build_toolkit(config)


def test_a_missing_dlib_pauses_instead_of_crashing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _toolkit_pauses(tmp_path, "could not load", lambda: monkeypatch.setitem(
        sys.modules, "openeyesd.eyes.identity", None))  # as if dlib were absent


def test_a_network_litert_refuses_pauses_instead_of_crashing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from openeyesd.eyes import tflite

    def refuse(*args, **kwargs):
        raise ValueError("Model provided has model identifier 'PK\x03\x04', should be 'TFL3'")

    _toolkit_pauses(tmp_path, "TFL3",
                    lambda: monkeypatch.setattr(tflite, "_new_interpreter", refuse))


def test_litert_missing_pauses_with_the_install_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _toolkit_pauses(tmp_path, "pip install 'ai-edge-litert", lambda: monkeypatch.setitem(
        sys.modules, "ai_edge_litert.interpreter", None))  # as if not installed
