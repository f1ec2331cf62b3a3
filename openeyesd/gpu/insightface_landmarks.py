"""Face landmarks on the GPU profile: InsightFace's ``buffalo_l`` models run by onnxruntime.

Only two files of the pack are used, read from ``<models.dir>/buffalo_l/`` (``openeyesctl
models fetch buffalo_l``); the ``insightface`` package is not needed, the decoding below is
our own:

* ``det_10g.onnx``, SCRFD-10G: finds faces on a letterboxed copy of the photo (``det_size``
  square, image at the top-left, black padding). Per stride 8/16/32 it gives, for 2 anchors per
  grid cell, a score, the distances from the anchor to the box's 4 sides and 5 keypoints as
  offsets, all in units of the stride. Boxes are merged by greedy IoU NMS.
* ``2d106det.onnx``: 106 (x, y) points in [-1, 1] on a 192x192 crop of the full-resolution
  photo, a square 1.5x the box's longer side around its centre. Crops come from
  ``openeyesd.eyes.landmarks`` so both backends share one pixel convention and its anti-alias
  prefilter for big faces.

The 106 points are then mapped onto ``types.Eye`` (contour, brow, iris) and a head pose; the
index tables below say which points and where that knowledge comes from.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from openeyesd.config import OnnxProvider
from openeyesd.errors import BackendUnavailable

# The CPU backend's crop helpers: one pixel convention (continuous coordinates, pixel centres
# at +0.5) and its INTER_AREA prefilter for big faces, rather than a second copy of both.
from openeyesd.eyes.landmarks import _check_image, _crop, _Roi
from openeyesd.eyes.types import Eye, Face, HeadPose, Side
from openeyesd.gpu.onnx_providers import (
    ProviderChoice,
    SessionCache,
    active_provider,
    choose_providers,
    run_session,
)

if TYPE_CHECKING:
    from onnxruntime import InferenceSession

PACK = "buffalo_l"
DETECTOR_FILE = "det_10g.onnx"
LANDMARK_FILE = "2d106det.onnx"
FETCH_HINT = f"run `openeyesctl models fetch {PACK}`"

STRIDES = (8, 16, 32)
ANCHORS_PER_CELL = 2
#: SCRFD was trained on RGB scaled to about [-1, 1]; insightface feeds it (x - 127.5) / 128.
DET_MEAN, DET_STD = 127.5, 128.0
#: 2d106det starts with its own normalisation layers, so it takes raw 0..255 RGB (insightface
#: detects those layers and uses mean 0, std 1; uniface and DeepFaceLive feed it the same).
LMK_MEAN, LMK_STD = 0.0, 1.0
#: The landmark crop is a square this many times the detection box's longer side.
LMK_ROI_SCALE = 1.5

# --- the 106-point layout --------------------------------------------------------------------
# InsightFace publishes the layout only as a picture (alignment/coordinate_reg/README.md,
# "2d106markup.jpg"); the indices below were read from code that uses the model's output:
# - eye outlines as polygons, image-left eye [35, 36, 33, 37, 39, 42, 40, 41] and image-right
#   eye [89, 90, 87, 91, 93, 96, 94, 95] (OpenVtuber by 1996scarlet, which converted this
#   model, and Kendryte's K230 SDK face-landmark demo); every image-right index is the
#   image-left one + 54;
# - which half is the upper lid and where the corners, nose, mouth and chin are: DeepFaceLive's
#   106 -> 68 table (iperov), e.g. dlib's upper-lid points 37/38 are means of 41,40 and 40,42,
#   the lower-lid 40/41 of 37,33 and 33,36, nose tip 86, nose base 80, mouth corners 52/61,
#   chin 0; OpenVtuber's blink and mouth ratios (y33 - y40, y60 - y62) agree;
# - two points inside each pupil, 34/38 and 88/92 (insightface issue #2408); OpenVtuber uses
#   34/88 as eye centres. We take the mean of each pair.
# The image-left eye is the subject's right eye (types.py: sides are the subject's own).

#: Per eye, in types.py order: outer corner, upper lid outer -> inner (3), inner corner,
#: lower lid inner -> outer (3).
EYE_106: dict[Side, tuple[int, ...]] = {
    "right": (35, 41, 40, 42, 39, 37, 33, 36),
    "left": (93, 96, 94, 95, 89, 90, 87, 91),
}
PUPIL_106: dict[Side, tuple[int, int]] = {"right": (34, 38), "left": (88, 92)}
#: The brow's two edges, outer -> inner, starting at the shared outer tip; the brow we
#: return is their mid-line (5 points).
BROW_106: dict[Side, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "right": ((43, 44, 45, 47, 46), (43, 48, 49, 51, 50)),
    "left": ((101, 100, 99, 98, 97), (101, 105, 104, 103, 102)),
}
#: The layout has no iris boundary: its radius is estimated as this fraction of the
#: corner-to-corner width (an adult iris is ~11.7 mm across, MediaPipe assumes 11.8 mm; the
#: eye opening is ~28-30 mm wide), so ``Eye.iris`` boundary points are an estimate.
IRIS_RADIUS_OF_EYE_WIDTH = 0.2

#: A generic adult head in millimetres at the layout's most stable points: x towards the
#: subject's left, y down, z away from the camera, nose tip at the origin. Rough anthropometric
#: averages (biocular width ~90 mm, intercanthal ~32 mm, mouth ~50 mm, eyes to chin ~112 mm);
#: the pose needs their shape, not any one person's.
POSE_MODEL_106: dict[int, tuple[float, float, float]] = {
    35: (-45.0, -34.0, 30.0),  # right eye, outer corner
    39: (-16.0, -33.0, 22.0),  # right eye, inner corner
    89: (16.0, -33.0, 22.0),  # left eye, inner corner
    93: (45.0, -34.0, 30.0),  # left eye, outer corner
    86: (0.0, 0.0, 0.0),  # nose tip
    80: (0.0, 14.0, 16.0),  # nose base (subnasale)
    52: (-25.0, 38.0, 24.0),  # mouth corner, subject's right
    61: (25.0, 38.0, 24.0),  # mouth corner, subject's left
    0: (0.0, 78.0, 18.0),  # chin
}


@dataclass(frozen=True)
class Detection:
    """One SCRFD face, full-image pixel coordinates."""

    box: np.ndarray  # (4,) x0, y0, x1, y1
    #: (5, 2): subject's right eye, left eye, nose tip, mouth corner right, mouth corner left.
    keypoints: np.ndarray
    score: float


def model_files(models_dir: Path) -> tuple[Path, Path]:
    """The detector and landmark files, or BackendUnavailable naming what is missing."""
    folder = Path(models_dir) / PACK
    paths = (folder / DETECTOR_FILE, folder / LANDMARK_FILE)
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise BackendUnavailable(
            f"InsightFace {PACK} model files missing: {', '.join(missing)}; {FETCH_HINT} "
            "(or switch pipeline.profile to \"cpu\")"
        )
    return paths


# --- SCRFD -----------------------------------------------------------------------------------


def letterbox(image: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The detector's input (1, 3, h, w) for ``size`` (w, h): the image scaled to fit, at the
    top-left, black elsewhere; and the per-axis factor from image to detector pixels."""
    h, w = image.shape[:2]
    fit = min(size[0] / w, size[1] / h)
    nw, nh = max(1, round(w * fit)), max(1, round(h * fit))
    interp = cv2.INTER_AREA if fit < 1 else cv2.INTER_LINEAR
    canvas = np.zeros((size[1], size[0], 3), np.float32)
    canvas[:nh, :nw] = cv2.resize(image, (nw, nh), interpolation=interp)
    tensor = ((canvas - DET_MEAN) / DET_STD).transpose(2, 0, 1)[None]
    # The exact factors of the rounded size, not ``fit``, so coordinates map back exactly.
    return np.ascontiguousarray(tensor), np.array([nw / w, nh / h])


def anchor_centres(rows: int, cols: int, stride: int) -> np.ndarray:
    """(rows * cols * 2, 2) anchor centres (x, y), row-major, both anchors of a cell in turn.
    SCRFD puts them on the cell's top-left corner (x = col * stride), not its middle."""
    ys, xs = np.mgrid[:rows, :cols]
    centres = np.stack([xs, ys], axis=-1).reshape(-1, 2).astype(np.float64) * stride
    return np.repeat(centres, ANCHORS_PER_CELL, axis=0)


def decode_scrfd(
    outputs: list[object], input_hw: tuple[int, int], min_score: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes (N, 4), keypoints (N, 5, 2) and scores (N,) above ``min_score``, in detector
    input pixels, before NMS.

    Outputs are told apart by shape, not by name or position: per stride there is one with a
    column of scores, one with 4 distances, one with 10 keypoint offsets, each with one row
    per anchor (with or without a leading batch axis, depending on the export).
    """
    by_shape = {}
    for out in outputs:
        arr = np.asarray(out, dtype=np.float64)
        flat = arr.reshape(-1, arr.shape[-1])
        by_shape[flat.shape] = flat
    boxes, kps, scores = [], [], []
    for stride in STRIDES:
        rows, cols = input_hw[0] // stride, input_hw[1] // stride
        n = rows * cols * ANCHORS_PER_CELL
        if not all((n, c) in by_shape for c in (1, 4, 10)):
            raise BackendUnavailable(
                f"{DETECTOR_FILE}: outputs {sorted(by_shape)} are not SCRFD with keypoints for "
                f"a {input_hw[1]}x{input_hw[0]} input (expected ({n}, 1/4/10) at stride "
                f"{stride}); re-fetch the model: {FETCH_HINT}"
            )
        score, dist, offs = by_shape[(n, 1)][:, 0], by_shape[(n, 4)], by_shape[(n, 10)]
        keep = np.flatnonzero(score >= min_score)
        centres = anchor_centres(rows, cols, stride)[keep]
        dist = dist[keep] * stride  # left, top, right, bottom
        boxes.append(np.hstack([centres - dist[:, :2], centres + dist[:, 2:]]))
        kps.append(centres[:, None, :] + offs[keep].reshape(-1, 5, 2) * stride)
        scores.append(score[keep])
    return np.concatenate(boxes), np.concatenate(kps), np.concatenate(scores)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_limit: float) -> list[int]:
    """Greedy non-maximum suppression: indices kept, best score first."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        lo = np.maximum(boxes[best, :2], boxes[rest, :2])
        hi = np.minimum(boxes[best, 2:], boxes[rest, 2:])
        inter = np.clip(hi - lo, 0, None).prod(axis=1)
        area = lambda b: np.clip(b[..., 2:] - b[..., :2], 0, None).prod(axis=-1)  # noqa: E731
        iou = inter / np.maximum(area(boxes[best]) + area(boxes[rest]) - inter, 1e-9)
        order = rest[iou <= iou_limit]
    return keep


def _input_size(shape: list[object], default: tuple[int, int]) -> tuple[int, int]:
    """(w, h) of a (1, 3, h, w) input; ``default`` where the export left them symbolic."""
    h, w = shape[2], shape[3]
    return (w, h) if isinstance(w, int) and isinstance(h, int) else default


class ScrfdDetector:
    def __init__(self, session: InferenceSession, det_size: int) -> None:
        self._session = session
        model_input = session.get_inputs()[0]
        self._input = model_input.name
        # det_10g takes any size (multiples of 32); a fixed-size export wins over det_size.
        self._size = _input_size(list(model_input.shape), (det_size, det_size))

    @property
    def size(self) -> tuple[int, int]:
        return self._size

    def __call__(self, image_rgb: np.ndarray, min_score: float, iou: float) -> list[Detection]:
        tensor, factor = letterbox(image_rgb, self._size)
        outputs = run_session(self._session, {self._input: tensor}, "SCRFD face detection")
        boxes, kps, scores = decode_scrfd(outputs, (self._size[1], self._size[0]), min_score)
        # SCRFD's training scaled coordinates by the resize factor with no half-pixel shift,
        # so dividing by it is the exact inverse.
        return [
            Detection(boxes[i] / np.tile(factor, 2), kps[i] / factor, float(scores[i]))
            for i in nms(boxes, scores, iou)
        ]


# --- 106 landmarks ---------------------------------------------------------------------------


class Landmarker106:
    def __init__(self, session: InferenceSession) -> None:
        self._session = session
        model_input = session.get_inputs()[0]
        self._input = model_input.name
        self._size = _input_size(list(model_input.shape), (192, 192))[0]

    def __call__(self, image_rgb: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, float]:
        """(106, 2) points in full-image pixel coordinates and the crop's side in pixels."""
        side = max(float(box[2] - box[0]), float(box[3] - box[1]), 1.0) * LMK_ROI_SCALE
        centre = (box[:2] + box[2:]) / 2 + 0.5  # continuous coordinates
        roi = _Roi(centre, side, np.array([1.0, 0.0]), np.array([0.0, 1.0]))
        crop, lin, shift = _crop(image_rgb, roi, self._size)
        tensor = ((crop.astype(np.float32) - LMK_MEAN) / LMK_STD).transpose(2, 0, 1)[None]
        (raw, *_) = run_session(self._session, {self._input: np.ascontiguousarray(tensor)},
                                "106-point landmarks")
        flat = np.asarray(raw, dtype=np.float64).reshape(-1)
        if flat.size != 212:
            raise BackendUnavailable(
                f"{LANDMARK_FILE}: expected 212 outputs (106 points), got {flat.size}; "
                f"re-fetch the model: {FETCH_HINT}"
            )
        # [-1, 1] spans the crop edge to edge: 0 is the crop's centre, the box's centre.
        in_crop = (flat.reshape(106, 2) + 1.0) * (self._size / 2)
        return (in_crop @ lin.T + shift - 0.5).astype(np.float32), side


def _contour(points: np.ndarray, side: Side) -> np.ndarray:
    """16 points from the layout's 8: its own points at even indices (corners at 0 and 8),
    midpoints of neighbours at odd ones; the lids are smooth enough at this spacing."""
    eight = points[list(EYE_106[side])].astype(np.float64)
    ring = np.vstack([eight, eight[:1]])
    contour = np.empty((16, 2))
    contour[0::2] = eight
    contour[1::2] = (ring[:-1] + ring[1:]) / 2
    return contour


def _iris(points: np.ndarray, contour: np.ndarray, side: Side) -> np.ndarray:
    """Pupil centre (mean of the layout's two pupil points) and 4 boundary points on a circle
    of estimated radius (see IRIS_RADIUS_OF_EYE_WIDTH): along the eye axis and across it."""
    centre = points[list(PUPIL_106[side])].astype(np.float64).mean(axis=0)
    axis = contour[8] - contour[0]
    width = float(np.linalg.norm(axis))
    ex = axis / width if width > 1e-6 else np.array([1.0, 0.0])
    ey = np.array([-ex[1], ex[0]])
    radius = IRIS_RADIUS_OF_EYE_WIDTH * width
    return np.vstack([centre, centre + radius * np.stack([ex, ey, -ex, -ey])])


def eyes_from_106(points: np.ndarray) -> dict[Side, Eye]:
    """Both eyes in types.py terms from the 106 points (full-image pixel coordinates)."""
    eyes: dict[Side, Eye] = {}
    for side in ("right", "left"):
        contour = _contour(points, side)
        upper, lower = BROW_106[side]
        brow = (points[list(upper)].astype(np.float64) + points[list(lower)]) / 2
        eyes[side] = Eye(side, contour.astype(np.float32), brow.astype(np.float32),
                         _iris(points, contour, side).astype(np.float32))
    return eyes


def head_pose_106(points: np.ndarray) -> HeadPose:
    """Yaw/pitch/roll (types.HeadPose conventions, same formulas as the CPU backend's
    ``head_pose``) from a scaled-orthographic fit of POSE_MODEL_106 to the 2D points.

    Scaled orthographic needs no focal length, which a photo does not tell us, and a head is
    shallow next to the camera distance of a portrait. The least-squares 2x3 projection is
    snapped to the nearest one with orthonormal rows; the third row is their cross product.
    """
    model = np.array(list(POSE_MODEL_106.values()), dtype=np.float64)
    image = points[list(POSE_MODEL_106)].astype(np.float64)
    projection, *_ = np.linalg.lstsq(model - model.mean(0), image - image.mean(0), rcond=None)
    u, _, vt = np.linalg.svd(projection.T, full_matrices=False)
    rows = u @ vt
    rotation = np.vstack([rows, np.cross(rows[0], rows[1])])  # model -> camera
    x_axis, y_axis = rotation[:, 0], rotation[:, 1]
    yaw = np.degrees(np.arcsin(np.clip(x_axis[2], -1, 1)))
    pitch = -np.degrees(np.arcsin(np.clip(y_axis[2], -1, 1)))
    roll = np.degrees(np.arctan2(x_axis[1], x_axis[0]))
    return HeadPose(float(yaw), float(pitch), float(roll))


# --- the backend -----------------------------------------------------------------------------


class InsightFaceLandmarks:
    """The GPU profile's landmark backend (``LandmarkBackend``): SCRFD + 2d106det."""

    name = "insightface-buffalo_l"

    def __init__(
        self,
        models_dir: Path,
        provider: OnnxProvider,
        *,
        det_size: int = 640,
        session_cache: SessionCache | None = None,
        min_score: float = 0.5,
        nms_iou: float = 0.4,
    ) -> None:
        """Loads both models now (missing files or an unusable onnxruntime raise
        BackendUnavailable here, not on the first photo) and settles the provider once."""
        if det_size <= 0 or det_size % 32:
            raise ValueError(f"det_size must be a positive multiple of 32, got {det_size}")
        det_path, lmk_path = model_files(models_dir)
        self._cache = session_cache if session_cache is not None else SessionCache()
        self._choice: ProviderChoice = choose_providers(provider, det_path, self._cache)
        self._sessions = {path.name: self._cache.get(path, self._choice)
                          for path in (det_path, lmk_path)}
        self._detector = ScrfdDetector(self._sessions[DETECTOR_FILE], det_size)
        self._landmarks = Landmarker106(self._sessions[LANDMARK_FILE])
        self._min_score, self._nms_iou = min_score, nms_iou
        self._models_dir = Path(models_dir) / PACK

    def provider_report(self) -> dict[str, object]:
        """For ``openeyesctl doctor``/``status``: what was asked for, what runs, and why."""
        return {
            "backend": self.name,
            **self._choice.as_dict(),
            "sessions": {name: active_provider(s) for name, s in self._sessions.items()},
            "models_dir": str(self._models_dir),
            "det_size": list(self._detector.size),
        }

    def detect(self, image_rgb: np.ndarray) -> list[Face]:
        """Every face found, left to right."""
        _check_image(image_rgb)
        detections = self._detector(image_rgb, self._min_score, self._nms_iou)
        faces = [self._face(image_rgb, det) for det in detections]
        return sorted(faces, key=lambda f: (f.box[0], f.box[1]))

    def find_faces(self, image_rgb: np.ndarray) -> list[Detection]:
        """The detector alone (boxes and 5 keypoints), for previews and tests."""
        _check_image(image_rgb)
        return self._detector(image_rgb, self._min_score, self._nms_iou)

    def _face(self, image: np.ndarray, det: Detection) -> Face:
        points, roi_px = self._landmarks(image, det.box)
        x0, y0, x1, y1 = (float(v) for v in det.box)
        return Face(
            box=(x0, y0, x1, y1),
            score=det.score,
            eyes=eyes_from_106(points),
            pose=head_pose_106(points),
            landmarks=points,
            backend=self.name,
            extras={"landmark_roi_px": roi_px},
        )
