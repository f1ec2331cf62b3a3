"""Synthetic blinks for tests: paint an eye of a real (public-domain) face shut."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from skimage import data as skimage_data

from openeyesd.eyes import assess
from openeyesd.eyes.types import Eye


def _skin_below(image: np.ndarray, eye: Eye) -> np.ndarray:
    origin, _, down, width = assess._eye_frame(eye)
    x, y = (origin + down * 0.5 * width).astype(int)
    r = max(int(0.08 * width), 1)
    return np.median(image[y - r:y + r + 1, x - r:x + r + 1].reshape(-1, 3), axis=0)


def close_eye(image: np.ndarray, eye: Eye) -> np.ndarray:
    """Paint the eye shut: skin from below the eye over the lid polygon (grown 25 %, soft
    edge), then a dark lash line just below where the lower lid was."""
    skin = _skin_below(image, eye)
    _, _, down, width = assess._eye_frame(eye)
    centre = eye.contour.mean(axis=0)
    grown = centre + (eye.contour - centre) * 1.25
    mask = np.zeros(image.shape[:2], np.uint8)
    cv2.fillPoly(mask, [np.round(grown * 4).astype(np.int32)], 255, shift=2)
    alpha = cv2.GaussianBlur(mask, (0, 0), 0.06 * width)[..., None] / 255.0
    out = image * (1 - alpha) + skin * alpha
    lid = np.concatenate([eye.contour[8:], eye.contour[:1]]) + down * 0.02 * width
    line = np.zeros(image.shape[:2], np.uint8)
    cv2.polylines(line, [np.round(lid * 4).astype(np.int32)], False, 255,
                  max(1, round(width / 12)), cv2.LINE_AA, shift=2)
    beta = cv2.GaussianBlur(line, (0, 0), 0.5)[..., None] / 255.0 * 0.85
    out = out * (1 - beta) + skin * 0.35 * beta
    return np.clip(out, 0, 255).astype(np.uint8)


def blink_frames() -> dict[str, np.ndarray]:
    """The astronaut with open eyes, and the same frame with both, or one, eye painted shut."""
    from openeyesd.eyes.landmarks import FaceMeshBackend

    cv2.setNumThreads(1)
    astronaut = np.ascontiguousarray(skimage_data.astronaut())
    (face,) = FaceMeshBackend().detect(astronaut)
    left_shut = close_eye(astronaut, face.eyes["left"])
    shut = close_eye(left_shut, face.eyes["right"])
    return {"open": astronaut, "shut": shut, "left_shut": left_shut,
            "right_shut": close_eye(astronaut, face.eyes["right"])}


def save_frame(path: Path, pixels: np.ndarray, taken: str) -> Path:
    """A JPEG with EXIF DateTimeOriginal ("YYYY:MM:DD HH:MM:SS") and SubSec, as cameras write."""
    exif = Image.Exif()
    exif[0x8769] = {0x9003: taken, 0x9291: "00"}
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=95, exif=exif.tobytes())
    return path
