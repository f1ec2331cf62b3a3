"""Data the eye library passes between its parts.

Coordinates are always full-image pixel coordinates ``(x, y)`` as float32 arrays, in the
orientation the pipeline works in (EXIF orientation already applied). "Left" and "right" are
the *subject's own* left and right, so a person's left eye appears on the right of the picture.

Every landmark backend, whatever its native point set (MediaPipe 478, dlib 68, InsightFace 106),
maps its output onto these types, so the stages after ``detect`` never see a backend's indices.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

import numpy as np

Side = Literal["left", "right"]
SIDES: tuple[Side, Side] = ("left", "right")


class EyeState(StrEnum):
    OPEN = "open"
    CLOSED = "closed"
    #: sunglasses, profile view, too small, occluded: never fixed.
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Eye:
    side: Side
    #: The eyelid outline, 16 points: outer corner first, along the upper lid to the inner
    #: corner (indices 0..8), then back along the lower lid (9..15).
    contour: np.ndarray
    #: The eyebrow above this eye, ordered outer to inner, 5 or more points.
    brow: np.ndarray
    #: Iris centre followed by 4 points on its boundary, or None when the backend has no iris.
    iris: np.ndarray | None = None

    @property
    def outer_corner(self) -> np.ndarray:
        return self.contour[0]

    @property
    def inner_corner(self) -> np.ndarray:
        return self.contour[8]

    @property
    def upper_lid(self) -> np.ndarray:
        return self.contour[0:9]

    @property
    def lower_lid(self) -> np.ndarray:
        return np.concatenate([self.contour[8:], self.contour[:1]])

    @property
    def width(self) -> float:
        return float(np.linalg.norm(self.inner_corner - self.outer_corner))

    @property
    def centre(self) -> np.ndarray:
        return self.contour.mean(axis=0)


@dataclass(frozen=True)
class HeadPose:
    """Degrees; 0/0/0 is a frontal face. Positive yaw turns to the subject's left."""

    yaw: float
    pitch: float
    roll: float


@dataclass(frozen=True)
class Face:
    #: (x0, y0, x1, y1) in full-image pixels.
    box: tuple[float, float, float, float]
    score: float
    eyes: dict[Side, Eye]
    pose: HeadPose
    #: The backend's own points, full-image coordinates, for debugging and previews.
    landmarks: np.ndarray
    #: Which backend produced this face, e.g. "mediapipe-facemesh".
    backend: str
    #: Identity descriptor (unit vector) when an identity backend ran, else None.
    descriptor: np.ndarray | None = None
    extras: dict[str, float] = field(default_factory=dict)

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])

    @property
    def interocular(self) -> float:
        return float(np.linalg.norm(self.eyes["left"].centre - self.eyes["right"].centre))
