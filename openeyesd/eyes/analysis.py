"""What the eye stages know about one photo: its faces, who they are, and each eye's state.

An analysis depends only on the photo's content and the backends, so it is cached by content
hash under ``state/analysis``: the frames of a burst are each other's donors, and a frame that
was analysed as its own job is not analysed again when a neighbour needs it (and vice versa).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from openeyesd.config import Config, Profile
from openeyesd.errors import BackendUnavailable
from openeyesd.eyes.assess import (
    EyeMeasurement,
    EyeVerdict,
    FaceAssessment,
    assess_face,
    classify,
    judge_both_eyes,
)
from openeyesd.eyes.blink import BlinkModel, classify_with_blink
from openeyesd.eyes.donors import eye_sharpness
from openeyesd.eyes.identity import IdentityBackend
from openeyesd.eyes.landmarks import LandmarkBackend
from openeyesd.eyes.types import SIDES, Eye, EyeState, Face, HeadPose, Side
from openeyesd.files import atomic_write_bytes

#: Bump when the meaning of a cached analysis changes (backends, assessment rules).
ANALYSIS_VERSION = "5"
#: The blink model reads MediaPipe's 478-point layout (mesh + iris).
BLINK_LAYOUT_POINTS = 478


@dataclass(frozen=True)
class FaceAnalysis:
    face: Face
    assessment: FaceAssessment
    #: Variance of the Laplacian around each eye, at a fixed eye width (donor choice).
    sharpness: dict[Side, float]
    #: Faces narrower than eyes.min_face_px are never judged or fixed.
    too_small: bool = False
    #: MediaPipe blendshapes' eyeBlink per eye; None when the landmarks are not MediaPipe's.
    blink: dict[Side, float] | None = None

    def state(self, side: Side) -> EyeState:
        return EyeState.UNKNOWN if self.too_small else self.assessment.verdicts[side].state

    def closed_sides(self) -> list[Side]:
        return [side for side in SIDES if self.state(side) is EyeState.CLOSED]


@dataclass(frozen=True)
class FrameAnalysis:
    sha256: str
    width: int
    height: int
    faces: list[FaceAnalysis] = field(default_factory=list)

    def needs_fix(self) -> bool:
        return any(face.closed_sides() for face in self.faces)


@dataclass(frozen=True)
class EyeToolkit:
    """The built backends the eye stages share; built once per worker (models are not
    thread-safe), passed in, so tests can hand in others."""

    landmarks: LandmarkBackend
    identity: IdentityBackend
    min_face_px: int
    blink: BlinkModel | None = None

    def blink_scores(self, face: Face) -> dict[Side, float] | None:
        """eyeBlink per eye, when the blink model runs on this backend's landmark layout."""
        if self.blink is None or face.landmarks.shape[0] != BLINK_LAYOUT_POINTS:
            return None
        return self.blink.blink_scores(face)


def judge(
    measurements: dict[Side, EyeMeasurement], blink: dict[Side, float] | None,
    baselines: dict[Side, float | None] | None = None,
) -> dict[Side, EyeVerdict]:
    """Each eye's verdict: lid opening (against the person's burst baselines when known),
    and eyeBlink where available (it catches closed eyes under lashes that read open); then
    the rules on both eyes together: one eye that only the burst reads closed while the other
    held (open, unless a wink); a wink, one eye dropped against the burst while the other did
    not; a small face whose lids the landmarks drew shut on both eyes."""
    base = baselines or {}

    def verdicts(against: dict[Side, float | None]) -> dict[Side, EyeVerdict]:
        if blink is None:
            return {side: classify(measurements[side], baseline=against.get(side))
                    for side in SIDES}
        return {side: classify_with_blink(measurements[side], blink[side],
                                          baseline=against.get(side)) for side in SIDES}

    alone = verdicts({}) if base else None
    return judge_both_eyes(measurements, verdicts(base), baselines, alone=alone)


def detect_faces(image_rgb: np.ndarray, toolkit: EyeToolkit) -> list[Face]:
    """Landmarks for every face, each with its identity descriptor."""
    return [
        _with_descriptor(face, toolkit.identity.describe(image_rgb, face))
        for face in toolkit.landmarks.detect(image_rgb)
    ]


def assess_faces(
    image_rgb: np.ndarray, faces: list[Face], sha256: str, toolkit: EyeToolkit
) -> FrameAnalysis:
    """Each eye's state, and the sharpness a donor choice needs."""
    analysed = []
    for face in faces:
        measured = assess_face(image_rgb, face).measurements
        blink = toolkit.blink_scores(face)
        analysed.append(FaceAnalysis(
            face=face,
            assessment=FaceAssessment(measured, judge(measured, blink)),
            sharpness={side: eye_sharpness(image_rgb, face.eyes[side]) for side in SIDES},
            too_small=face.width < toolkit.min_face_px,
            blink=blink,
        ))
    height, width = image_rgb.shape[:2]
    return FrameAnalysis(sha256=sha256, width=width, height=height, faces=analysed)


def analyse(image_rgb: np.ndarray, sha256: str, toolkit: EyeToolkit) -> FrameAnalysis:
    return assess_faces(image_rgb, detect_faces(image_rgb, toolkit), sha256, toolkit)


def _with_descriptor(face: Face, descriptor: np.ndarray) -> Face:
    return Face(box=face.box, score=face.score, eyes=face.eyes, pose=face.pose,
                landmarks=face.landmarks, backend=face.backend, descriptor=descriptor,
                extras=face.extras)


# -- JSON -----------------------------------------------------------------------------------


def _points(array: np.ndarray | None) -> list[list[float]] | None:
    return None if array is None else np.round(np.asarray(array, np.float64), 3).tolist()


def _array(values: Any) -> np.ndarray | None:
    return None if values is None else np.asarray(values, np.float32)


def face_to_json(face: Face) -> dict[str, Any]:
    return {
        "box": [round(float(v), 2) for v in face.box],
        "score": round(float(face.score), 4),
        "pose": {"yaw": face.pose.yaw, "pitch": face.pose.pitch, "roll": face.pose.roll},
        "eyes": {side: {"contour": _points(eye.contour), "brow": _points(eye.brow),
                        "iris": _points(eye.iris)} for side, eye in face.eyes.items()},
        "landmarks": _points(face.landmarks),
        "backend": face.backend,
        "descriptor": None if face.descriptor is None else face.descriptor.tolist(),
        "extras": {key: float(value) for key, value in face.extras.items()},
    }


def face_from_json(data: dict[str, Any]) -> Face:
    eyes = {
        side: Eye(side=side, contour=_array(eye["contour"]), brow=_array(eye["brow"]),
                  iris=_array(eye["iris"]))
        for side, eye in data["eyes"].items()
    }
    return Face(
        box=tuple(data["box"]), score=data["score"], eyes=eyes,  # type: ignore[arg-type]
        pose=HeadPose(**data["pose"]), landmarks=_array(data["landmarks"]),
        backend=data["backend"], descriptor=_array(data["descriptor"]),
        extras=dict(data.get("extras", {})),
    )


def face_analysis_to_json(face: FaceAnalysis) -> dict[str, Any]:
    return {
        "face": face_to_json(face.face),
        "measurements": {s: m.to_dict() for s, m in face.assessment.measurements.items()},
        "verdicts": {s: {"state": str(v.state), "score": v.score, "reason": v.reason}
                     for s, v in face.assessment.verdicts.items()},
        "sharpness": face.sharpness,
        "too_small": face.too_small,
        "blink": face.blink,
    }


def face_analysis_from_json(data: dict[str, Any]) -> FaceAnalysis:
    measurements = {side: EyeMeasurement(**m) for side, m in data["measurements"].items()}
    verdicts = {side: EyeVerdict(state=EyeState(v["state"]), score=v["score"],
                                 reason=v["reason"]) for side, v in data["verdicts"].items()}
    return FaceAnalysis(
        face=face_from_json(data["face"]),
        assessment=FaceAssessment(measurements=measurements, verdicts=verdicts),
        sharpness=dict(data["sharpness"]), too_small=data["too_small"],
        blink=data.get("blink"),
    )


def frame_to_json(frame: FrameAnalysis) -> dict[str, Any]:
    return {"version": ANALYSIS_VERSION, "sha256": frame.sha256, "width": frame.width,
            "height": frame.height, "faces": [face_analysis_to_json(f) for f in frame.faces]}


def frame_from_json(data: dict[str, Any]) -> FrameAnalysis:
    return FrameAnalysis(sha256=data["sha256"], width=data["width"], height=data["height"],
                         faces=[face_analysis_from_json(f) for f in data["faces"]])


class AnalysisCache:
    """``<dir>/<sha256>.v<version>.json``, written atomically; a damaged entry is a miss.
    Reading an entry marks it used (its mtime), so ``prune`` removes only entries nobody has
    needed for a while; an entry pruned and needed after all is analysed again."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, sha256: str) -> Path:
        return self.directory / f"{sha256}.v{ANALYSIS_VERSION}.json"

    def get(self, sha256: str) -> FrameAnalysis | None:
        path = self._path(sha256)
        try:
            frame = frame_from_json(json.loads(path.read_text(encoding="utf-8")))
        except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError):
            return None
        with contextlib.suppress(OSError):
            os.utime(path)
        return frame

    def prune(self, unused_for_s: float) -> int:
        """Delete the entries (of any analysis version) not written or read for
        ``unused_for_s`` seconds; returns how many. Without it the folder would grow by one
        entry per photo for as long as the daemon runs."""
        cutoff = time.time() - unused_for_s
        removed = 0
        for path in self.directory.glob("*.json"):
            with contextlib.suppress(OSError):
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
        return removed

    def put(self, frame: FrameAnalysis) -> None:
        data = json.dumps(frame_to_json(frame), separators=(",", ":")).encode()
        atomic_write_bytes(self._path(frame.sha256), data)


def build_toolkit(config: Config) -> EyeToolkit:
    """The CPU backends, models loaded now (tens of milliseconds). Missing model files are an
    infrastructure problem: the worker pauses and `openeyesctl doctor` says how to fix it."""
    from openeyesd.eyes.dlib_resnet import NotTheDescriptorNetwork
    from openeyesd.eyes.landmarks import FaceMeshBackend, FaceMeshSettings
    from openeyesd.eyes.model_info import ModelMissing

    try:
        from openeyesd.eyes.identity import DlibIdentity  # dlib-bin: a compiled dependency

        mesh = FaceMeshBackend(FaceMeshSettings(detect_max_side=config.eyes.detect_max_side))
        identity = DlibIdentity()
        blink = BlinkModel()
        mesh.warm_up()
        blink.warm_up()
    except (ModelMissing, NotTheDescriptorNetwork, ImportError, RuntimeError, OSError,
            ValueError, cv2.error) as exc:  # ValueError: LiteRT refusing a damaged .tflite
        raise BackendUnavailable(
            f"the CPU eye backends could not load: {exc}; run `openeyesctl doctor`"
        ) from exc
    landmarks: LandmarkBackend = mesh
    if config.pipeline.profile is Profile.GPU and config.gpu.landmarks == "insightface":
        landmarks = _insightface_landmarks(config)
    warm_colour_tables()
    return EyeToolkit(landmarks=landmarks, identity=identity, min_face_px=config.eyes.min_face_px,
                      blink=blink)


def warm_colour_tables() -> None:
    """OpenCV fills its RGB <-> Lab tables on a process's first Lab conversion (~0.1 s, once;
    assessment, colour matching and the seam score all convert): paid here, with the models,
    not by the first photo a worker takes."""
    cv2.cvtColor(np.zeros((1, 1, 3), np.float32), cv2.COLOR_RGB2Lab)


def _insightface_landmarks(config: Config) -> LandmarkBackend:
    """buffalo_l through onnxruntime, once its files verify and its licence is accepted."""
    from openeyesd import models
    from openeyesd.gpu.insightface_landmarks import InsightFaceLandmarks

    problems = models.verify(config, models.find("buffalo_l"))
    if problems:
        raise BackendUnavailable(
            "gpu.landmarks = 'insightface' but buffalo_l is not ready: "
            + "; ".join(p.message for p in problems[:3])
            + "; run `openeyesctl models fetch buffalo_l` (it needs "
            "models.allow_non_commercial = true)"
        )
    return InsightFaceLandmarks(config.models.dir, config.gpu.landmarks_provider)
