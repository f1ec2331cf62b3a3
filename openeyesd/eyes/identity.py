"""Who is who across the frames of a burst: dlib's ResNet face descriptor (128-D).

The face is aligned with dlib's 5-point shape predictor (eye corners + nose base), fitted inside
the landmark backend's face box, and cut to dlib's 150x150 chip, exactly as dlib's descriptor was
trained. The network itself runs in NumPy (dlib_resnet.py: same numbers, a quarter of the time).
Both models come from the ``face_recognition_models`` wheel and are CC0; its 68-point model is
non-commercial and is never loaded (see model_info.py).
"""

from __future__ import annotations

from typing import Protocol

import dlib
import numpy as np

from openeyesd.eyes.dlib_resnet import CHIP_SIZE, read_dlib_resnet
from openeyesd.eyes.model_info import model, model_path
from openeyesd.eyes.types import Face

#: Euclidean distance between unit descriptors below which two faces are taken to be the same
#: person. dlib's documented 0.6 is for raw descriptors (norm ~1.4-1.5 here); 0.6 / 1.45 ~ 0.41.
SAME_PERSON_DISTANCE = 0.42


class IdentityBackend(Protocol):
    name: str

    def describe(self, image_rgb: np.ndarray, face: Face) -> np.ndarray: ...

    def distance(self, a: np.ndarray, b: np.ndarray) -> float: ...


class DlibIdentity:
    """dlib_face_recognition_resnet_model_v1 on a 5-point-aligned 150x150 chip."""

    name = "dlib-resnet-v1"

    def __init__(self, padding: float = 0.25) -> None:
        """``padding`` is dlib's chip margin, 0.25 as the model was trained."""
        self._shape = dlib.shape_predictor(str(model_path(model("dlib_shape_predictor_5"))))
        self._net = read_dlib_resnet(model_path(model("dlib_face_recognition_resnet_v1")))
        self._padding = padding

    def five_points(self, image_rgb: np.ndarray, face: Face) -> np.ndarray:
        """dlib's 5 points (full-image pixels): subject's left eye outer, inner corner,
        right eye outer, inner corner, base of the nose."""
        crop, offset = _face_region(image_rgb, face)
        shape = self._shape(crop, _rectangle(face, offset))
        return np.array([(p.x, p.y) for p in shape.parts()], np.float32) + offset

    def describe(self, image_rgb: np.ndarray, face: Face) -> np.ndarray:
        """Unit-length 128-D descriptor of ``face`` in ``image_rgb``."""
        crop, offset = _face_region(image_rgb, face)
        shape = self._shape(crop, _rectangle(face, offset))
        chip = dlib.get_face_chip(crop, shape, CHIP_SIZE, self._padding)
        vec = self._net.describe_chip(np.ascontiguousarray(chip, np.uint8))
        return vec / max(float(np.linalg.norm(vec)), 1e-12)

    @staticmethod
    def distance(a: np.ndarray, b: np.ndarray) -> float:
        """Euclidean distance of two unit descriptors: 0 identical, 2 opposite."""
        return float(np.linalg.norm(np.asarray(a, np.float32) - np.asarray(b, np.float32)))

    @staticmethod
    def same_person(distance: float) -> bool:
        return distance < SAME_PERSON_DISTANCE


def _face_region(image: np.ndarray, face: Face) -> tuple[np.ndarray, np.ndarray]:
    """The face box grown by one box width each way, as a contiguous array, and its offset.

    dlib converts the whole array it is given; a 24-megapixel frame costs far more than the
    region that the aligned chip (box + padding, rotated) can actually read.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 image (H, W, 3), got {image.dtype} {image.shape}")
    x0, y0, x1, y1 = face.box
    grow = max(x1 - x0, y1 - y0)
    h, w = image.shape[:2]
    left, top = max(int(x0 - grow), 0), max(int(y0 - grow), 0)
    right, bottom = min(int(x1 + grow) + 1, w), min(int(y1 + grow) + 1, h)
    crop = np.ascontiguousarray(image[top:bottom, left:right])
    return crop, np.array([left, top], np.float32)


def _rectangle(face: Face, offset: np.ndarray) -> dlib.rectangle:
    x0, y0, x1, y1 = face.box
    dx, dy = float(offset[0]), float(offset[1])
    return dlib.rectangle(round(x0 - dx), round(y0 - dy), round(x1 - dx), round(y1 - dy))
