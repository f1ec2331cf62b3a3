"""The pixels around each face's eyes, kept in memory so a donor frame need not be decoded again.

A blink is fixed from the same person's eyes in a neighbouring frame of the burst. That frame
was decoded moments earlier for its own job (the blinking frame waits for its burst to be
quiet, then plans), and the fix needs only the few hundred pixels around the donor's eyes.
Decoding the whole donor again cost a 12 MP photo 0.07 s, a 24 MP photo 0.15 s.

So the assess stage (and the plan stage, for a donor it analyses itself) leaves a copy of each
face's eye region here, keyed by the photo's content hash, and the fix stage takes them from
here. The store is one per daemon process, shared by its workers, bounded in bytes, and drops
the frames used least recently first. A miss (a restart, a burst larger than the bound, a donor
eye the warp reaches past its region) costs only the decode it saves on a hit: the fix stage
then decodes the donor as before.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from openeyesd.eyes.analysis import FrameAnalysis
from openeyesd.eyes.types import SIDES, EyeState, Face
from openeyesd.imageio import Box

#: Margin around a face's eye and brow points, in eye widths. The transfer reads the donor
#: inside its crop mapped back onto the donor: the eye contour +- 0.6 eye widths
#: (transfer.CROP_MARGIN), turned by the roll between the two faces and stretched by their
#: shapes. 1.0 leaves room for both; the fix stage checks every transfer against the boxes.
REGION_MARGIN = 1.0


def eye_region_box(face: Face, width: int, height: int) -> Box:
    """The box around both eyes and brows of ``face`` that a transfer from it reads, clamped
    to the photo."""
    points = np.vstack([np.vstack([eye.contour, eye.brow]) for eye in face.eyes.values()])
    margin = REGION_MARGIN * max(eye.width for eye in face.eyes.values())
    x0, y0 = np.floor(points.min(axis=0) - margin).astype(int)
    x1, y1 = np.ceil(points.max(axis=0) + margin).astype(int) + 1
    return (max(int(x0), 0), max(int(y0), 0), min(int(x1), width), min(int(y1), height))


@dataclass(frozen=True)
class FrameRegions:
    """One photo's eye regions: its upright size, and per face index a box and its pixels."""

    width: int
    height: int
    regions: dict[int, tuple[Box, np.ndarray]]

    @property
    def nbytes(self) -> int:
        return sum(pixels.nbytes for _, pixels in self.regions.values())

    def sparse_frame(self, face_indices: Iterable[int]) -> tuple[np.ndarray, list[Box]] | None:
        """The photo with only those faces' regions filled in (full-frame coordinates, so
        the analysed landmarks apply as they are), and the filled boxes; None when one of the
        faces has no region here. The rest is zero pages from ``np.zeros`` (calloc), never
        written and so never resident."""
        wanted = sorted(set(face_indices))
        if any(index not in self.regions for index in wanted):
            return None
        frame = np.zeros((self.height, self.width, 3), np.uint8)
        for index in wanted:
            (x0, y0, x1, y1), pixels = self.regions[index]
            frame[y0:y1, x0:x1] = pixels
        frame.flags.writeable = False
        return frame, [self.regions[index][0] for index in wanted]


def donor_regions(pixels: np.ndarray, frame: FrameAnalysis) -> FrameRegions:
    """The eye regions of the faces of ``frame`` that could lend an eye: judged, not too small
    (a closed eye here may still read open against the person's burst, so closed faces too)."""
    return cut_regions(pixels, [
        (index, face.face) for index, face in enumerate(frame.faces)
        if face.face.eyes and any(face.state(side) is not EyeState.UNKNOWN for side in SIDES)])


def cut_regions(pixels: np.ndarray, faces: Iterable[tuple[int, Face]]) -> FrameRegions:
    """Copies of the eye regions of ``faces`` (index, face) in the upright RGB ``pixels``."""
    height, width = pixels.shape[:2]
    regions: dict[int, tuple[Box, np.ndarray]] = {}
    for index, face in faces:
        box = eye_region_box(face, width, height)
        x0, y0, x1, y1 = box
        if x0 < x1 and y0 < y1:
            copy = pixels[y0:y1, x0:x1].copy()
            copy.flags.writeable = False
            regions[index] = (box, copy)
    return FrameRegions(width, height, regions)


class EyeRegionStore:
    """Eye regions by photo content hash, least recently used dropped first beyond
    ``max_bytes``. Thread-safe: the workers of one daemon share it."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._frames: OrderedDict[str, FrameRegions] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def put(self, sha256: str, regions: FrameRegions) -> None:
        if not regions.regions or regions.nbytes > self.max_bytes:
            return
        with self._lock:
            if (old := self._frames.pop(sha256, None)) is not None:
                self._bytes -= old.nbytes
            self._frames[sha256] = regions
            self._bytes += regions.nbytes
            while self._bytes > self.max_bytes:
                _, dropped = self._frames.popitem(last=False)
                self._bytes -= dropped.nbytes

    def get(self, sha256: str) -> FrameRegions | None:
        with self._lock:
            regions = self._frames.get(sha256)
            if regions is not None:
                self._frames.move_to_end(sha256)
            return regions

    @property
    def nbytes(self) -> int:
        with self._lock:
            return self._bytes
