"""Tiny stand-ins for buffalo_l's two models, built with ``onnx.helper``.

They have the real models' input and output names and shapes, so the backend loads and runs
them exactly like the real files:

* ``det_10g.onnx``: input ``input.1`` (1, 3, H, W), H and W free like the real export; nine
  outputs (scores, box distances, keypoint offsets for strides 8, 16, 32; 2 anchors per cell,
  rows ordered cell by cell). Each is a simple function of the input: a 1x1 convolution of
  the image averaged over each stride cell. At stride 8 the score is high where a cell is red
  (normalised R - B is large), so a red square placed on one cell of the letterboxed input
  yields one known box; box distances and keypoint offsets are constants. Strides 16 and 32
  never fire.
* ``2d106det.onnx``: input ``data`` (1, 3, 192, 192), output ``fc1`` (1, 212): a fixed face
  (``canonical_106``) in the model's [-1, 1] crop coordinates.

``canonical_106`` is laid out from the outline *walks* published by code that draws the real
model's eyes and brows (see openeyesd/gpu/insightface_landmarks.py), not from the backend's own
index tables, so a slip in those tables shows up in the tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

#: det_10g's output names, in its order: scores 8/16/32, boxes 8/16/32, keypoints 8/16/32.
DET_OUTPUTS = ("448", "471", "494", "451", "474", "497", "454", "477", "500")
STRIDES = (8, 16, 32)
OPSET = 17
IR_VERSION = 8


@dataclass(frozen=True)
class TinyDetector:
    #: Distances from the anchor to the box's left, top, right, bottom, in strides.
    box: tuple[float, float, float, float] = (1.0, 1.0, 3.0, 3.0)
    #: 5 keypoints (x, y) relative to the anchor, in strides.
    keypoints: tuple[float, ...] = (0.5, 0.5, 2.5, 0.5, 1.5, 1.5, 0.75, 2.5, 2.25, 2.5)
    #: Score logit = gain * (R - B) - gain / 2 - anchor penalty, with R, B normalised to [-1, 1].
    gain: float = 8.0
    #: The second anchor of a cell scores lower, so NMS has a clear winner among equal boxes.
    second_anchor_penalty: float = 1.0

    def expected(self, anchor: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
        """Box (4,) and keypoints (5, 2) in detector pixels for a stride-8 anchor."""
        a = np.asarray(anchor, dtype=np.float64)
        d = np.asarray(self.box) * 8
        box = np.array([a[0] - d[0], a[1] - d[1], a[0] + d[2], a[1] + d[3]])
        return box, a + np.asarray(self.keypoints).reshape(5, 2) * 8


def _const(name: str, array: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)


def _head(
    pooled: str, stride: int, kind: str, width: int, weight: np.ndarray, bias: np.ndarray
) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    """Conv 1x1 -> (optional sigmoid) -> NHWC -> (rows, width): one output of one stride."""
    p = f"s{stride}_{kind}"
    inits = [_const(f"{p}_w", weight), _const(f"{p}_b", bias),
             numpy_helper.from_array(np.array([-1, width], np.int64), f"{p}_shape")]
    nodes = [helper.make_node("Conv", [pooled, f"{p}_w", f"{p}_b"], [f"{p}_conv"])]
    last = f"{p}_conv"
    if kind == "score":
        nodes.append(helper.make_node("Sigmoid", [last], [f"{p}_sig"]))
        last = f"{p}_sig"
    nodes.append(helper.make_node("Transpose", [last], [f"{p}_nhwc"], perm=[0, 2, 3, 1]))
    index = {"score": 0, "box": 3, "kps": 6}[kind] + STRIDES.index(stride)
    nodes.append(helper.make_node("Reshape", [f"{p}_nhwc", f"{p}_shape"], [DET_OUTPUTS[index]]))
    return nodes, inits


def _score_weights(spec: TinyDetector, stride: int) -> tuple[np.ndarray, np.ndarray]:
    weight = np.zeros((2, 3, 1, 1))
    if stride != 8:
        return weight, np.full(2, -30.0)
    weight[:, 0, 0, 0], weight[:, 2, 0, 0] = spec.gain, -spec.gain
    bias = np.array([-spec.gain / 2, -spec.gain / 2 - spec.second_anchor_penalty])
    return weight, bias


def detector_model(spec: TinyDetector) -> onnx.ModelProto:
    nodes, inits, outputs = [], [], []
    for stride in STRIDES:
        pooled = f"pool{stride}"
        nodes.append(helper.make_node("AveragePool", ["input.1"], [pooled],
                                      kernel_shape=[stride, stride], strides=[stride, stride]))
        heads = (
            ("score", 1, *_score_weights(spec, stride)),
            ("box", 4, np.zeros((8, 3, 1, 1)), np.tile(spec.box, 2)),
            ("kps", 10, np.zeros((20, 3, 1, 1)), np.tile(spec.keypoints, 2)),
        )
        for kind, width, weight, bias in heads:
            more_nodes, more_inits = _head(pooled, stride, kind, width, weight, bias)
            nodes += more_nodes
            inits += more_inits
    for index, name in enumerate(DET_OUTPUTS):
        width = (1, 4, 10)[index // 3]
        outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["rows", width]))
    image = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "H", "W"])
    graph = helper.make_graph(nodes, "tiny_scrfd", [image], outputs, inits)
    return _model(graph)


def landmark_model(points: np.ndarray) -> onnx.ModelProto:
    """Outputs ``points`` (106, 2), whatever the crop; the input still flows through the graph
    (times zero) so onnxruntime checks its name and shape on every run."""
    flat = np.asarray(points, dtype=np.float32).reshape(1, 212)
    nodes = [
        helper.make_node("ReduceMean", ["data"], ["mean"], keepdims=0),
        helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
        helper.make_node("Add", ["nothing", "points"], ["fc1"]),
    ]
    inits = [_const("zero", np.zeros(())), _const("points", flat)]
    graph = helper.make_graph(
        nodes, "tiny_2d106det",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 192, 192])],
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [1, 212])], inits)
    return _model(graph)


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def write_buffalo_l(models_dir: Path, spec: TinyDetector | None = None) -> Path:
    """``models_dir/buffalo_l/{det_10g,2d106det}.onnx``; returns the pack folder."""
    folder = Path(models_dir) / "buffalo_l"
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(detector_model(spec or TinyDetector()), folder / "det_10g.onnx")
    onnx.save(landmark_model(canonical_106()), folder / "2d106det.onnx")
    return folder


# --- a frontal face in the 106 layout ------------------------------------------------------
# Outline walks as published (image-left first; the image-right eye/brow is the subject's left):
#   eyes:  [35, 36, 33, 37, 39, 42, 40, 41] and [89, 90, 87, 91, 93, 96, 94, 95]: from the
#          image-left corner along the lower lid to the image-right corner, back along the upper;
#   pupil: 34, 38 and 88, 92;
#   brows: [43, 44, 45, 47, 46, 50, 51, 49, 48] (from the image-left tip) and
#          [97, 98, 99, 100, 101, 105, 104, 103, 102] (to the image-right tip and back);
#   nose tip 86, nose base 80, mouth corners 52 (image-left) and 61, chin 0.
EYE_WALKS = ((35, 36, 33, 37, 39, 42, 40, 41), (89, 90, 87, 91, 93, 96, 94, 95))
PUPILS = ((34, 38), (88, 92))
EYE_CENTRES = ((-0.25, -0.25), (0.25, -0.25))  # image-left, image-right
EYE_HALF_SIZE = (0.11, 0.04)


def _eyes(points: dict[int, tuple[float, float]]) -> None:
    # Angles from the image-left corner (pi) through the lower lid (y down: sin > 0) to the
    # image-right corner (0) and back through the upper lid.
    angles = np.pi * np.array([1, 0.75, 0.5, 0.25, 0, -0.25, -0.5, -0.75])
    for walk, pupil, (cx, cy) in zip(EYE_WALKS, PUPILS, EYE_CENTRES, strict=True):
        for index, t in zip(walk, angles, strict=True):
            points[index] = (cx + EYE_HALF_SIZE[0] * np.cos(t), cy + EYE_HALF_SIZE[1] * np.sin(t))
        points[pupil[0]], points[pupil[1]] = (cx - 0.005, cy), (cx + 0.005, cy)


def _brows(points: dict[int, tuple[float, float]]) -> None:
    (lx, ly), (rx, _) = EYE_CENTRES
    xs = np.linspace(-0.09, 0.09, 4)
    top, bottom = ly - 0.14, ly - 0.10
    points[43] = (lx - 0.15, ly - 0.11)  # image-left brow's tip, outer end
    for index, x in zip((44, 45, 47, 46), lx + xs, strict=True):
        points[index] = (x, top)
    for index, x in zip((48, 49, 51, 50), lx + xs, strict=True):
        points[index] = (x, bottom)
    points[101] = (rx + 0.15, ly - 0.11)  # image-right brow's tip, outer end
    for index, x in zip((97, 98, 99, 100), rx + xs, strict=True):
        points[index] = (x, top)
    for index, x in zip((102, 103, 104, 105), rx + xs, strict=True):
        points[index] = (x, bottom)


def _lower_face(points: dict[int, tuple[float, float]]) -> None:
    for index, y in zip((72, 73, 74), (-0.2, -0.12, -0.05), strict=True):
        points[index] = (0.0, y)  # nose bridge
    points[86], points[80] = (0.0, 0.02), (0.0, 0.134)  # nose tip, nose base
    for offset, index in enumerate(range(75, 80)):
        points[index] = (-0.12 + 0.02 * offset, 0.1)
    for offset, index in enumerate(range(81, 86)):
        points[index] = (0.04 + 0.02 * offset, 0.1)
    points[52], points[61] = (-0.2, 0.326), (0.2, 0.326)  # mouth corners
    rest = [i for i in range(52, 72) if i not in (52, 61)]
    for t, index in zip(np.linspace(0.1, 2 * np.pi - 0.1, len(rest)), rest, strict=True):
        points[index] = (0.15 * np.cos(t), 0.326 + 0.06 * np.sin(t))
    # Jaw: [1, 9..16, 2..8, 0, 24..18, 32..25, 17] runs from the image-left temple round the
    # chin (0) to the image-right temple.
    jaw = [1, *range(9, 17), *range(2, 9), 0, *range(24, 17, -1), *range(32, 24, -1), 17]
    for t, index in zip(np.linspace(np.pi, 0, len(jaw)), jaw, strict=True):
        points[index] = (0.55 * np.cos(t), -0.2 + 0.846 * np.sin(t))


def canonical_106() -> np.ndarray:
    """A frontal face, (106, 2) in the model's [-1, 1] crop coordinates (the crop is 1.5x the
    face box, so the box spans about -0.67..0.67)."""
    points: dict[int, tuple[float, float]] = {}
    _eyes(points)
    _brows(points)
    _lower_face(points)
    if sorted(points) != list(range(106)):
        raise AssertionError(f"layout incomplete: {sorted(set(range(106)) - set(points))}")
    return np.array([points[i] for i in range(106)], dtype=np.float64)
