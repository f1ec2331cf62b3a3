"""Is each eye open, closed, or not judgeable? One verdict per eye (a wink is one closed eye).

Evidence, chosen by measurement on the evaluation set (docs/assess.md has the figures):

* **lid opening** from the iris model's 16-point eyelid contour: the mean gap between facing
  upper and lower lid points over the middle of the eye, divided by the eye's width. It alone
  separates open from closed eyes with AUC 0.98 on eyes >= 12 px wide, where dlib's eye aspect
  ratio does not; the face mesh's own (unrefined) eyelids do not separate at all (AUC 0.47).
* **the person's own other frames** (``assess_relative``): a blink is a drop against the same
  eye's widest frame of the burst. On the evaluation bursts closed frames are at <= 0.60 of that
  baseline on their more closed eye (one exception at 0.76) and open frames at >= 0.82; a
  narrow-eyed person is judged against their own narrow open eyes, not against everyone's.
* **both eyes together** (``judge_wink``): in a burst, an eye that dropped well below its
  widest frame *and* below the other eye, while the other eye holds its own, is a wink, even
  where the per-eye limit (kept low for faces that narrow both eyes in a smile) reads it open;
  an eye only the burst reads closed, while the other eye holds and it is no wink, is open
  (``judge_lone_drop``: a blink shuts both eyes); and a face with an eye under
  ``min_eye_px`` is closed where the landmark net drew both eyes' lids shut, the one reading
  of so small an eye that no open eye gave, else unknown (``judge_small_face``).
* **guards** that make a verdict "unknown", which is never fixed: eye narrower than
  ``min_eye_px`` (open and closed openings overlap below ~10 px), head turned past ``max_yaw``,
  the eye crop off the image, no iris from the backend, or an eye band with almost no contrast
  (sunglasses, deep shadow, heavy blur).

Appearance features on the full-resolution eye crop (darkness of the iris disk between the lids,
height of the dark run at the iris column, sclera fraction, colour distance to the cheek,
contrast) were measured too and did not separate the hard cases (AUC 0.38-0.70 inside the
ambiguous opening band): they are not used; bench/calibrate_assess.py shows how to re-measure.

``measure_eye`` returns the numbers (JSON-able, for the sidecar), ``classify`` turns them into an
``EyeVerdict``; the thresholds are the frozen ``Thresholds``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from openeyesd.eyes.types import SIDES, Eye, EyeState, Face, Side

#: Canonical crop: this many pixels per eye width (corner to corner).
_CROP_EYE_PX = 48
#: Crop extent in eye widths around the corner midpoint: x in [-0.8, 0.8], y in [-0.7, 1.0]
#: (the cheek band used as the skin reference lies 0.6-0.9 eye widths below the eye).
_CROP_HALF_W = 0.8
_CROP_UP, _CROP_DOWN = 0.7, 1.0
#: Pairs of contour points facing each other across the middle of the eye (upper k, lower 16-k).
_MIDDLE_PAIRS = ((3, 13), (4, 12), (5, 11))


@dataclass(frozen=True)
class Thresholds:
    """Values chosen on the evaluation set (bench/calibrate_assess.py, docs/assess.md)."""

    #: Eyes narrower than this (corner to corner, px) are "unknown": below ~10 px open eyes
    #: measure openings down to 0.09, the same as closed ones.
    min_eye_px: float = 10.0
    #: |yaw| above this is a profile view: the far eye is foreshortened or hidden.
    max_yaw: float = 40.0
    #: More of the eye crop than this off the image edge: "unknown".
    max_outside: float = 0.2
    #: Without a burst baseline, an opening below this is closed. With FaceLandmarker v2's
    #: eyelids, open eyes >= 10 px measured >= 0.144 (a narrow-eyed smile in a group photo),
    #: and all but two closed faces have an eye below 0.108; 0.12 leaves a margin to the open
    #: side. The two left (0.136, 0.137) are found by the burst rule or not at all.
    closed_opening: float = 0.12
    #: Eyes narrower than this (px) but judgeable use ``small_closed_opening`` instead, and
    #: eyeBlink a higher margin (``BlinkThresholds.small_eye_blink_over_opening``). The set
    #: has no closed eye this small, and its open ones all read open; but its faces shrunk to
    #: 10-24 px eyes, as is and as JPEG q75/q40 (bench/calibrate_small_eyes.py), read 37 of
    #: 1,275 open fits closed at 0.12 / 0.32 (1,019 of 1,054 closed), 9 at 0.06 / 0.40 (955,
    #: with ``judge_small_face``): narrow-eyed smiles lose opening when blurred and compressed.
    #: Rerun after the landmark crops changed (halvings): 11 of 1,276 (951 of 1,049); with
    #: LiteRT running the networks, 13 of 1,273 (956 of 1,047).
    small_eye_px: float = 24.0
    #: The limit for those eyes without a baseline (see docs/assess.md, "Small eyes").
    small_closed_opening: float = 0.06
    #: With a baseline the limit is never below this (a shut lid measures ~0-0.09) ...
    floor_opening: float = 0.06
    #: ... closed when opening / baseline is below this: closed frames measured <= 0.53 of
    #: the eye's widest frame on their more closed eye (but one wink, at 0.62), open frames
    #: >= 0.57 (two faces in a group series; the next at 0.67) ...
    relative_closed: float = 0.55
    #: ... provided the baseline itself is an open eye (else the absolute rule applies) ...
    min_baseline: float = 0.2
    #: ... and the limit never above this, whatever the baseline (widest open eyes ~0.41).
    max_relative_limit: float = 0.26
    #: Eye band flatter than this (L* p90 - p10 relative to the cheek's L*) is "unknown":
    #: sunglasses measured 0.00-0.05, closed eyes >= 0.13 (lashes and lid crease show).
    flat_contrast: float = 0.08
    #: A wink (``judge_wink``): an eye read open is closed when its opening is below this
    #: fraction both of its burst baseline and of the other eye in the same frame ... The
    #: one wink the relative rule misses measured 0.62 and 0.59; the open eyes nearest on
    #: either measure, 0.84 (P08: 0.58 of its baseline but 0.84 of its other eye; 0.84 of its
    #: baseline but 0.49 of its other eye).
    wink_ratio: float = 0.7
    #: ... while the other eye holds at least this fraction of its own baseline (the wink
    #: measured 1.00): one eye shut while the other stays as it was, not both narrowing.
    wink_steady: float = 0.9
    #: An eye read closed only against its burst baseline (it reads open alone) is reopened
    #: when the other eye still holds this fraction of its own baseline and the eye is no
    #: wink (``judge_lone_drop``): a blink shuts both eyes. The set's blink read so on one eye
    #: measured 0.58 on the other; the open face it reopens, 0.89-0.93 (one eye 0.55-0.58 of
    #: a baseline of 0.43, the set's widest open eye, and 0.83-0.84 of the other eye).
    lone_drop_held: float = 0.75
    #: Eyes from this width up to ``min_eye_px`` are too small to read open, but where the
    #: landmark net draws the lids of both eyes meeting or crossed (opening 0) the face is
    #: closed (``judge_small_face``). Eval faces with eyes >= 16 px shrunk until their eyes
    #: were 6.5-9.5 px, as is and as JPEG at quality 75 and 40 (bench/calibrate_small_eyes.py):
    #: 0 of 1,758 open fits read so, 96 of 1,141 closed ones (reruns after the landmark crops
    #: changed: 0 of 1,759, 94 of 1,140; with LiteRT, 0 of 1,748, 86 of 1,140). Under 7 px it
    #: found no closed face, and an earlier run that re-fitted the known box found one open
    #: face at 6.6 px.
    min_shut_eye_px: float = 7.0


DEFAULT_THRESHOLDS = Thresholds()


@dataclass(frozen=True)
class EyeMeasurement:
    """Everything ``classify`` needs, as plain numbers (lengths relative to the eye width)."""

    side: Side
    width_px: float
    yaw: float
    #: Mean lid gap over the middle of the eye / eye width.
    opening: float
    #: Fraction of the iris disk inside the eyelid polygon; None when the backend has no iris.
    iris_visible: float | None
    #: (L* p90 - p10) of the eye band / median L* of the cheek below it. An open or closed eye
    #: has lashes, iris, lid crease; sunglasses, deep shadow or heavy blur are flat.
    contrast: float
    #: Fraction of the eye crop that fell outside the image.
    outside: float

    def to_dict(self) -> dict[str, float | str | None]:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class EyeVerdict:
    state: EyeState
    #: Signed margin from the deciding threshold, in opening units: < 0 closed, > 0 open; 0 for
    #: "unknown". Larger magnitude = more confident.
    score: float
    #: Why, in words, for the sidecar and ``openeyesctl``.
    reason: str


@dataclass(frozen=True)
class FaceAssessment:
    measurements: dict[Side, EyeMeasurement]
    verdicts: dict[Side, EyeVerdict]

    @property
    def closed_sides(self) -> list[Side]:
        return [side for side in SIDES if self.verdicts[side].state is EyeState.CLOSED]

    @property
    def needs_fix(self) -> bool:
        return bool(self.closed_sides)


def _eye_frame(eye: Eye) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Origin (corner midpoint), x axis (image left to right along the eye), y axis (down)."""
    outer, inner = eye.outer_corner.astype(np.float64), eye.inner_corner.astype(np.float64)
    ex = inner - outer if eye.side == "right" else outer - inner
    width = max(float(np.linalg.norm(ex)), 1e-6)
    ex = ex / width
    ey = np.array([-ex[1], ex[0]])
    return (outer + inner) / 2, ex, ey, width


def _to_local(points: np.ndarray, origin: np.ndarray, ex: np.ndarray, ey: np.ndarray,
              width: float) -> np.ndarray:
    rel = np.asarray(points, np.float64) - origin
    return np.stack([rel @ ex, rel @ ey], axis=1) / width


def lid_opening(eye: Eye) -> float:
    """Mean upper-to-lower lid distance over the middle of the eye, / eye width."""
    origin, ex, ey, width = _eye_frame(eye)
    local = _to_local(eye.contour, origin, ex, ey, width)
    gaps = [local[lo, 1] - local[up, 1] for up, lo in _MIDDLE_PAIRS]
    return float(max(np.mean(gaps), 0.0))


def iris_visible(eye: Eye) -> float:
    """Fraction of the iris disk inside the eyelid polygon, on a 41x41 grid over the disk."""
    if eye.iris is None:
        return 0.0
    centre = eye.iris[0].astype(np.float64)
    radius = float(np.mean(np.linalg.norm(eye.iris[1:] - eye.iris[0], axis=1)))
    if radius < 1e-3:
        return 0.0
    axis = np.linspace(-1, 1, 41)
    gx, gy = np.meshgrid(axis, axis)
    disk = np.stack([gx.ravel(), gy.ravel()], 1)
    disk = disk[(disk**2).sum(1) <= 1] * radius + centre
    return float(np.mean(inside_polygon(disk, eye.contour.astype(np.float64))))


def inside_polygon(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Which of ``points`` (N, 2) lie inside ``polygon`` (M, 2): the even-odd rule, every
    point against every edge at once (one pointPolygonTest call a point cost ~1 ms an eye)."""
    x, y = points[:, :1], points[:, 1:]
    x0, y0 = polygon[:, 0], polygon[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    spans = (y0 > y) != (y1 > y)  # the edge crosses the point's row (so y1 != y0 there)
    with np.errstate(divide="ignore", invalid="ignore"):
        crossing_x = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
    return np.count_nonzero(spans & (x < crossing_x), axis=1) % 2 == 1


def eye_crop(image_rgb: np.ndarray, eye: Eye) -> tuple[np.ndarray, float]:
    """The eye, level and scaled to ``_CROP_EYE_PX`` per eye width, as float Lab (L* 0-100);
    and the fraction of it outside the image. Big eyes are area-shrunk first so nothing aliases."""
    origin, ex, ey, width = _eye_frame(eye)
    src, scale, offset = image_rgb, 1.0, np.zeros(2)
    factor = _CROP_EYE_PX / width
    if factor < 0.5:
        half = width * (_CROP_HALF_W + _CROP_DOWN) + 2
        x0, y0 = (max(int(v - half), 0) for v in origin)
        sub = image_rgb[y0:int(origin[1] + half) + 1, x0:int(origin[0] + half) + 1]
        size = (max(1, round(sub.shape[1] * factor * 2)), max(1, round(sub.shape[0] * factor * 2)))
        src = cv2.resize(sub, size, interpolation=cv2.INTER_AREA)
        scale, offset = size[0] / sub.shape[1], np.array([x0, y0], np.float64)
    out_w = round(2 * _CROP_HALF_W * _CROP_EYE_PX)
    out_h = round((_CROP_UP + _CROP_DOWN) * _CROP_EYE_PX)
    # Crop pixel (u, v) shows image point origin + ((u - cu) ex + (v - cv) ey) / factor.
    lin = np.stack([ex, ey], axis=1) / factor * scale
    shift = (origin - offset) * scale - lin @ np.array(_crop_centre(out_w))
    m = np.hstack([lin, shift[:, None]])
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    crop = cv2.warpAffine(src, m, (out_w, out_h), flags=flags, borderMode=cv2.BORDER_CONSTANT)
    valid = cv2.warpAffine(np.full(src.shape[:2], 255, np.uint8), m, (out_w, out_h), flags=flags)
    lab = cv2.cvtColor(crop.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)
    return lab, float(np.mean(valid < 128))


def _crop_centre(out_w: int) -> tuple[float, float]:
    """Crop pixel coordinates of the eye's corner midpoint."""
    return (out_w - 1) / 2, _CROP_UP * _CROP_EYE_PX - 0.5


def _band(lab: np.ndarray, x: tuple[float, float], y: tuple[float, float]) -> np.ndarray:
    """L* of the crop pixels whose local coordinates (eye widths) fall in the box x * y."""
    h, w = lab.shape[:2]
    cu, cv = _crop_centre(w)
    u0, u1 = (int(np.clip(round(cu + v * _CROP_EYE_PX), 0, w - 1)) for v in x)
    v0, v1 = (int(np.clip(round(cv + v * _CROP_EYE_PX), 0, h - 1)) for v in y)
    return lab[v0:max(v1, v0 + 1), u0:max(u1, u0 + 1), 0].ravel()


def eye_contrast(lab: np.ndarray) -> float:
    """Spread of L* over the eye band, relative to the cheek's brightness (see EyeMeasurement).

    Relative to the cheek, not absolute, so a dark skin or a dim photo is not "flat"; the cheek
    band is 0.6-0.9 eye widths below the eye, clear of the lower lid and of most glasses."""
    eye_band = _band(lab, (-0.45, 0.45), (-0.2, 0.2))
    cheek = max(float(np.median(_band(lab, (-0.35, 0.35), (0.6, 0.9)))), 1.0)
    return float(np.percentile(eye_band, 90) - np.percentile(eye_band, 10)) / cheek


def measure_eye(image_rgb: np.ndarray, face: Face, side: Side) -> EyeMeasurement:
    """The numbers behind one eye's verdict (see EyeMeasurement)."""
    eye = face.eyes[side]
    lab, outside = eye_crop(image_rgb, eye)
    return EyeMeasurement(
        side=side, width_px=eye.width, yaw=face.pose.yaw, opening=lid_opening(eye),
        iris_visible=None if eye.iris is None else iris_visible(eye),
        contrast=eye_contrast(lab), outside=outside,
    )


def _unknown_reason(m: EyeMeasurement, t: Thresholds, min_px: float | None = None) -> str | None:
    """Why this eye cannot be judged, or None. ``min_px``: the smallest eye width accepted
    (``t.min_eye_px`` unless given)."""
    smallest = t.min_eye_px if min_px is None else min_px
    if m.width_px < smallest:
        return f"eye too small ({m.width_px:.0f} px < {smallest:.0f})"
    if abs(m.yaw) > t.max_yaw:
        return f"head turned ({m.yaw:.0f} degrees)"
    if m.outside > t.max_outside:
        return "eye at the image edge"
    if m.iris_visible is None:
        return "no iris from the landmark backend"
    if m.contrast < t.flat_contrast:
        return f"eye region flat (sunglasses, shadow or blur): contrast {m.contrast:.2f}"
    return None


def closed_limit(
    baseline: float | None, t: Thresholds = DEFAULT_THRESHOLDS, width_px: float | None = None
) -> tuple[float, str]:
    """The opening below which an eye ``width_px`` wide is closed, and what set it."""
    if baseline is None or baseline < t.min_baseline:
        if width_px is not None and width_px < t.small_eye_px:
            return t.small_closed_opening, f"absolute, eye under {t.small_eye_px:.0f} px"
        return t.closed_opening, "absolute"
    limit = min(max(t.relative_closed * baseline, t.floor_opening), t.max_relative_limit)
    return limit, f"{t.relative_closed:.2f} x burst baseline {baseline:.3f}"


def classify(
    m: EyeMeasurement, *, baseline: float | None = None, thresholds: Thresholds | None = None
) -> EyeVerdict:
    """Open / closed / unknown for one eye. ``baseline``: this eye's widest opening in the
    person's other frames of the burst (see ``assess_relative``), or None."""
    t = thresholds or DEFAULT_THRESHOLDS
    why = _unknown_reason(m, t)
    if why is not None:
        return EyeVerdict(EyeState.UNKNOWN, 0.0, why)
    limit, source = closed_limit(baseline, t, m.width_px)
    score = m.opening - limit
    state = EyeState.CLOSED if score < 0 else EyeState.OPEN
    word = "<" if score < 0 else ">="
    return EyeVerdict(state, score, f"opening {m.opening:.3f} {word} {limit:.3f} ({source})")


_EYE_AND_OTHER: tuple[tuple[Side, Side], ...] = (("right", "left"), ("left", "right"))


def judge_wink(
    measurements: dict[Side, EyeMeasurement], verdicts: dict[Side, EyeVerdict],
    baselines: dict[Side, float | None] | None, thresholds: Thresholds | None = None,
) -> dict[Side, EyeVerdict]:
    """``verdicts`` with a wink the per-eye rule read open made closed (see ``wink_ratio``).

    A per-eye limit relative to the burst cannot go higher without closing open eyes that
    narrow in a smile; a wink differs in that one eye drops while the other does not, which
    only the two eyes together show. Needs both baselines; unknown eyes are never touched."""
    t = thresholds or DEFAULT_THRESHOLDS
    out = dict(verdicts)
    for side, other, own_base, other_base in _pairs_in_burst(verdicts, baselines, t,
                                                             EyeState.OPEN):
        opening, other_opening = measurements[side].opening, measurements[other].opening
        limit = t.wink_ratio * min(own_base, other_opening)
        if _is_wink(opening, own_base, other_opening, t) and (
                other_opening >= t.wink_steady * other_base):
            out[side] = EyeVerdict(
                EyeState.CLOSED, opening - limit,
                f"a wink: opening {opening:.3f} < {t.wink_ratio:.2f} x min(burst baseline "
                f"{own_base:.3f}, other eye {other_opening:.3f}), other eye at "
                f"{other_opening / other_base:.2f} of its baseline")
    return out


def _pairs_in_burst(
    verdicts: dict[Side, EyeVerdict], baselines: dict[Side, float | None] | None,
    t: Thresholds, state: EyeState,
) -> Iterator[tuple[Side, Side, float, float]]:
    """(eye, other eye, their burst baselines) for each eye in ``state`` whose other eye reads
    open, where both baselines are usable (at least ``min_baseline``)."""
    base = baselines or {}
    for side, other in _EYE_AND_OTHER:
        own_base, other_base = base.get(side), base.get(other)
        if (verdicts[side].state is state and verdicts[other].state is EyeState.OPEN
                and own_base is not None and other_base is not None
                and min(own_base, other_base) >= t.min_baseline):
            yield side, other, own_base, other_base


def _is_wink(opening: float, own_base: float, other_opening: float, t: Thresholds) -> bool:
    """Narrower than ``wink_ratio`` of both its widest frame and the other eye now."""
    return opening < t.wink_ratio * min(own_base, other_opening)


def judge_lone_drop(
    measurements: dict[Side, EyeMeasurement], verdicts: dict[Side, EyeVerdict],
    baselines: dict[Side, float | None] | None, thresholds: Thresholds | None = None,
    alone: dict[Side, EyeVerdict] | None = None,
) -> dict[Side, EyeVerdict]:
    """``verdicts`` with an eye that the burst baseline alone read closed reopened, where the
    other eye held its own baseline (``lone_drop_held``) and the eye is no wink.

    The per-eye relative rule reads a blink, and a blink shuts both eyes: one eye dropping
    while the other holds is a wink (``judge_wink`` decides with the two eyes compared) or a
    baseline taken from a frame that measured that one eye too wide. ``alone``: each eye's
    verdict without the burst (default: ``classify`` without a baseline); an eye that reads
    closed alone, by its lids or by eyeBlink, is never reopened."""
    t = thresholds or DEFAULT_THRESHOLDS
    out = dict(verdicts)
    for side, other, own_base, other_base in _pairs_in_burst(verdicts, baselines, t,
                                                             EyeState.CLOSED):
        by_itself = (alone or {}).get(side) or classify(measurements[side], thresholds=t)
        opening, other_opening = measurements[side].opening, measurements[other].opening
        held = other_opening / other_base
        if (by_itself.state is not EyeState.OPEN or held < t.lone_drop_held
                or _is_wink(opening, own_base, other_opening, t)):
            continue
        out[side] = EyeVerdict(
            EyeState.OPEN, by_itself.score,
            f"{by_itself.reason}; against the burst {verdicts[side].reason}, but the other "
            f"eye held {held:.2f} of its baseline and this eye is no wink (not under "
            f"{t.wink_ratio:.2f} x the other eye's {other_opening:.3f}): one eye alone is no "
            "blink")
    return out


def judge_small_face(
    measurements: dict[Side, EyeMeasurement], verdicts: dict[Side, EyeVerdict],
    thresholds: Thresholds | None = None,
) -> dict[Side, EyeVerdict]:
    """``verdicts`` for a face with an eye under ``min_eye_px``: closed where the landmark net
    drew both eyes' lids shut (see ``min_shut_eye_px``), else unknown, both eyes.

    Below ``min_eye_px`` an open eye can measure as narrow as a closed one, so a small eye is
    never read open; lids that meet on both eyes are the one reading no open eye gave at these
    sizes. One eye alone is not enough (it happened on open eyes), and every other guard
    (pose, image edge, iris, flat band) must pass on both eyes. The other eye of such a face
    is not judged on its own either: just over the limit, on a turned head, shrunk faces
    of the set read open eyes closed (bench/calibrate_small_eyes.py)."""
    t = thresholds or DEFAULT_THRESHOLDS
    small = [m for m in measurements.values() if m.width_px < t.min_eye_px]
    if not small:
        return verdicts
    width = min(m.width_px for m in small)
    shut = all(_unknown_reason(m, t, min_px=t.min_shut_eye_px) is None and m.opening <= 0.0
               for m in measurements.values())
    if shut:
        return {side: EyeVerdict(EyeState.CLOSED, 0.0,
                                 f"small eyes ({width:.0f} px), both lids drawn shut: opening 0")
                for side in SIDES}
    withheld = f"the other eye is too small to judge this face ({width:.0f} px)"
    return {side: v if v.state is EyeState.UNKNOWN else EyeVerdict(EyeState.UNKNOWN, 0.0, withheld)
            for side, v in verdicts.items()}


def judge_both_eyes(
    measurements: dict[Side, EyeMeasurement], verdicts: dict[Side, EyeVerdict],
    baselines: dict[Side, float | None] | None, thresholds: Thresholds | None = None,
    alone: dict[Side, EyeVerdict] | None = None,
) -> dict[Side, EyeVerdict]:
    """The rules that read the two eyes of one face together, after each eye's own verdict:
    one eye dropped against the burst while the other held, and no wink: open
    (``judge_lone_drop``; ``alone`` as there); a wink (``judge_wink``); and a small face:
    shut on both eyes or not judged (``judge_small_face``)."""
    kept = judge_lone_drop(measurements, verdicts, baselines, thresholds, alone)
    winked = judge_wink(measurements, kept, baselines, thresholds)
    return judge_small_face(measurements, winked, thresholds)


def assess_face(
    image_rgb: np.ndarray, face: Face, *, baselines: dict[Side, float | None] | None = None,
    thresholds: Thresholds | None = None,
) -> FaceAssessment:
    """Both eyes of ``face``, each judged on its own (a wink closes one), then together
    (``judge_both_eyes``)."""
    measures = {side: measure_eye(image_rgb, face, side) for side in SIDES}
    base = baselines or {}
    verdicts = {side: classify(measures[side], baseline=base.get(side), thresholds=thresholds)
                for side in SIDES}
    return FaceAssessment(measures, judge_both_eyes(measures, verdicts, baselines, thresholds))


def burst_baselines(
    frames: Sequence[dict[Side, EyeMeasurement]], thresholds: Thresholds | None = None
) -> dict[Side, float | None]:
    """Each eye's widest opening over one person's frames, counting only judgeable eyes."""
    t = thresholds or DEFAULT_THRESHOLDS
    out: dict[Side, float | None] = {}
    for side in SIDES:
        usable = [f[side].opening for f in frames if _unknown_reason(f[side], t) is None]
        out[side] = max(usable) if usable else None
    return out


def assess_relative(
    frames: Sequence[dict[Side, EyeMeasurement]], thresholds: Thresholds | None = None
) -> list[dict[Side, EyeVerdict]]:
    """Verdicts for one person's measurements across the frames of a burst, each eye judged
    against that eye's widest frame. The caller matches faces to persons (identity backend)."""
    base = burst_baselines(frames, thresholds)
    return [judge_both_eyes(f, {side: classify(f[side], baseline=base[side],
                                               thresholds=thresholds)
                                for side in SIDES}, base, thresholds)
            for f in frames]
