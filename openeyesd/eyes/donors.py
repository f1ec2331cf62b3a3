"""Whose open eyes to borrow: match people across the frames of a burst, then pick a donor.

The plan stage uses it in three steps, per target frame with a closed-eyed face:

1. for every other frame of the session, :func:`align_frames` estimates the camera's small
   hand-held motion (one similarity, from the faces that match best by identity), and
   :func:`match_faces` pairs the people of the two frames by identity and aligned position;
2. every matched face, plus every reference portrait of the same person, becomes a
   :class:`DonorCandidate`;
3. :func:`choose_donor` rejects candidates that break a hard limit (:class:`DonorLimits`) and
   ranks the rest by a weighted score (:class:`DonorWeights`). It returns a :class:`DonorChoice`
   with every component score, or a :class:`NoDonor` with the reason; both are JSON-able for the
   sidecar;
4. :func:`fallback_donors` lists, for each set of eyes the fix stage's check might refuse,
   donors for those eyes alone that do not use the refused donor eyes again.

Positions are compared in interocular distances (IOD) of the target face, so thresholds do not
depend on resolution or on how far the person stood from the camera.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Protocol

import cv2
import numpy as np

from .transfer import fit_similarity, transform
from .types import SIDES, Eye, EyeState, Face, Side

#: Same-person threshold on the Euclidean distance of two *unit* dlib descriptors. Kept equal to
#: ``identity.SAME_PERSON_DISTANCE`` (dlib's 0.6 on raw descriptors of norm ~1.45); not imported
#: from there because that module loads dlib, which is not among the package's dependencies and
#: which choosing a donor from ready-made descriptors does not need.
SAME_PERSON_DISTANCE = 0.42
#: Below this distance identity alone is trusted, wherever the face stands: people change places
#: between the poses of a group series. Measured on the eval set's 4-person series (P09, four
#: frames, landmarks + dlib): the same person 0.17–0.35 across frames, different people 0.42 and
#: up — so 0.42 alone sits right at the edge for look-alikes, and position must confirm a match
#: between 0.32 and 0.42.
CONFIDENT_DISTANCE = 0.32
#: Aligned eye positions further apart than this many target IODs are different people.
#: Neighbours in a group photo sit 2.5–3 IOD apart (heads ~16–20 cm apart, IOD ~6.3 cm); a person
#: leaning or turning between frames moves well under 1 IOD.
MAX_POSITION_DISTANCE = 1.0


class EyeAssessment(Protocol):
    """What this module needs from the closed-eye assessor, per eye."""

    @property
    def state(self) -> EyeState: ...

    #: Higher is more open; about 0 for a closed eye and 1 for a fully open one.
    @property
    def openness(self) -> float: ...


# --------------------------------------------------------------------------- frame alignment


@dataclass(frozen=True)
class MatchLimits:
    #: Faces further apart than this (unit descriptors) are different people.
    max_identity_distance: float = SAME_PERSON_DISTANCE
    #: Identity alone matches below this; between it and ``max_identity_distance`` the aligned
    #: position must agree too (see :data:`CONFIDENT_DISTANCE`).
    confident_identity_distance: float = CONFIDENT_DISTANCE
    max_position_distance: float = MAX_POSITION_DISTANCE
    #: A face agrees with a candidate camera motion when its eyes land within this many IODs.
    #: Smaller than the match gate: the motion is fitted to the faces that hold still.
    inlier_tolerance: float = 0.5
    #: ...and when its own eye line changes size by at most this fraction and tilts by at most
    #: this many degrees relative to the motion: a head turning 20° shrinks its IOD by 6 %, a
    #: step towards the camera a few % more; heads tilt by a few degrees between frames.
    face_scale_tolerance: float = 0.15
    face_tilt_tolerance: float = 15.0


@dataclass(frozen=True)
class Similarity:
    """Maps pixel coordinates of the *other* frame onto the target frame."""

    #: 2×3 matrix [[a, -b, tx], [b, a, ty]].
    matrix: np.ndarray
    #: How many matched faces agree with it; 0 means no face matched and this is the identity.
    support: int = 0
    #: Mean residual of the supporting faces after the fit, in target IODs.
    residual: float = 0.0

    @classmethod
    def identity(cls) -> Similarity:
        """No measured motion: frames of a burst barely move, so no motion is the right prior."""
        return cls(np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))

    def apply(self, points: np.ndarray) -> np.ndarray:
        return transform(self.matrix, np.atleast_2d(points))

    @property
    def scale(self) -> float:
        return float(math.hypot(self.matrix[0, 0], self.matrix[1, 0]))

    @property
    def rotation_deg(self) -> float:
        return math.degrees(math.atan2(self.matrix[1, 0], self.matrix[0, 0]))

    @property
    def shift(self) -> tuple[float, float]:
        return float(self.matrix[0, 2]), float(self.matrix[1, 2])


def _eye_points(face: Face) -> np.ndarray:
    """The midpoints of each eye's corners, (left, right): corners barely move in a blink,
    while a contour's mean drops with the upper lid."""
    return np.array(
        [(face.eyes[s].outer_corner + face.eyes[s].inner_corner) / 2 for s in SIDES], np.float64
    )


def identity_distance(a: Face, b: Face) -> float | None:
    """Euclidean distance of the two faces' unit descriptors, or None when either has none."""
    if a.descriptor is None or b.descriptor is None:
        return None
    return float(np.linalg.norm(np.asarray(a.descriptor, np.float64) - b.descriptor))


def _position_distance(target: Face, other: Face, motion: Similarity) -> float:
    moved = motion.apply(_eye_points(other))
    gap = np.linalg.norm(moved - _eye_points(target), axis=1).mean()
    return float(gap / max(target.interocular, 1e-6))


def _seed_pairs(
    targets: Sequence[Face], others: Sequence[Face], limits: MatchLimits
) -> list[tuple[int, int]]:
    """Pairs that are each other's nearest by identity and under the same-person threshold.

    When no pair has descriptors on both sides, mutual nearest by raw position (within the
    match gate) stands in: without motion yet, burst frames are close to aligned anyway.
    """
    n, m = len(targets), len(others)
    dist = np.full((n, m), np.inf)
    for i, j in itertools.product(range(n), range(m)):
        d = identity_distance(targets[i], others[j])
        if d is not None and d <= limits.max_identity_distance:
            dist[i, j] = d
    if not np.isfinite(dist).any():
        still = Similarity.identity()
        for i, j in itertools.product(range(n), range(m)):
            d = _position_distance(targets[i], others[j], still)
            if d <= limits.max_position_distance:
                dist[i, j] = d
    pairs = []
    for i in range(n):
        j = int(np.argmin(dist[i])) if m else 0
        if m and np.isfinite(dist[i, j]) and int(np.argmin(dist[:, j])) == i:
            pairs.append((i, j))
    return pairs


def align_frames(
    target_faces: Sequence[Face], other_faces: Sequence[Face], limits: MatchLimits | None = None
) -> Similarity:
    """The camera motion from the other frame to the target, from faces matched by identity.

    Every matched face (two eye points) and every pair of matched faces proposes a similarity;
    the one most faces agree with (within ``inlier_tolerance`` IOD) wins and is refitted on
    those faces. Exhaustive hypothesise-and-verify, deterministic, and robust to any minority of
    people who moved — one who turned away, one mismatched — not just one outlier.

    The winner needs a strict majority of the matched faces. Two faces always fit *some*
    similarity exactly, so when a group rearranged itself between poses, two people who kept
    their relative places would otherwise pass for the camera's motion (on the eval set's P09
    series that gave a 1500-pixel shift at scale 0.77). Without a majority the frames get no
    motion (identity, ``support`` 0) and only confident identities match (:func:`match_faces`).
    Equal support goes to the smaller residual, then to the smaller motion.
    """
    limits = limits or MatchLimits()
    pairs = _seed_pairs(target_faces, other_faces, limits)
    if not pairs:
        return Similarity.identity()
    seeds = _Seeds.of(target_faces, other_faces, pairs)
    best: tuple[float, ...] | None = None
    best_inliers = np.zeros(0, bool)
    n = len(pairs)
    for group in [(k,) for k in range(n)] + list(itertools.combinations(range(n), 2)):
        matrix = seeds.fit(group)
        inliers, res = seeds.agreement(matrix, limits)
        if not inliers.any():
            continue
        key = (-float(inliers.sum()), float(res[inliers].mean()), seeds.motion(matrix))
        if best is None or key < best:
            best, best_inliers = key, inliers
    chosen = tuple(np.flatnonzero(best_inliers))
    if 2 * len(chosen) <= n:
        return Similarity.identity()
    matrix = seeds.fit(chosen)
    res = seeds.agreement(matrix, limits)[1][list(chosen)]
    return Similarity(matrix, support=len(chosen), residual=float(res.mean()))


@dataclass(frozen=True)
class _Seeds:
    """The eye points of matched faces in both frames: (k, 2, 2) arrays, left eye first."""

    src: np.ndarray  # other frame
    dst: np.ndarray  # target frame
    iod: np.ndarray  # (k,) target IODs

    @classmethod
    def of(
        cls, targets: Sequence[Face], others: Sequence[Face], pairs: list[tuple[int, int]]
    ) -> _Seeds:
        src = np.stack([_eye_points(others[j]) for _, j in pairs])
        dst = np.stack([_eye_points(targets[i]) for i, _ in pairs])
        return cls(src, dst, np.array([max(targets[i].interocular, 1e-6) for i, _ in pairs]))

    def fit(self, group: Sequence[int]) -> np.ndarray:
        src, dst = self.src[list(group)].reshape(-1, 2), self.dst[list(group)].reshape(-1, 2)
        return fit_similarity(src, dst, np.ones(len(src)))

    def agreement(self, matrix: np.ndarray, limits: MatchLimits) -> tuple[np.ndarray, np.ndarray]:
        """Which faces agree with ``matrix``, and their position residuals in IODs.

        A face agrees when its eyes land within ``inlier_tolerance`` *and* its own eye line
        changes size and tilt as the motion says: positions alone cannot tell a camera that
        zoomed out 20 % from two people who stepped 20 % closer together, face sizes can.
        """
        moved = transform(matrix, self.src.reshape(-1, 2)).reshape(self.src.shape)
        res = np.linalg.norm(moved - self.dst, axis=2).mean(axis=1) / self.iod
        line_moved, line_target = moved[:, 0] - moved[:, 1], self.dst[:, 0] - self.dst[:, 1]
        size = np.linalg.norm(line_moved, axis=1) / np.maximum(self.iod, 1e-6)
        cross = line_target[:, 0] * line_moved[:, 1] - line_target[:, 1] * line_moved[:, 0]
        tilt = np.degrees(np.arctan2(cross, (line_target * line_moved).sum(axis=1)))
        ok = (
            (res <= limits.inlier_tolerance)
            & (np.abs(np.log(np.maximum(size, 1e-9))) <= math.log1p(limits.face_scale_tolerance))
            & (np.abs(tilt) <= limits.face_tilt_tolerance)
        )
        return ok, res

    def motion(self, matrix: np.ndarray) -> float:
        """How far a similarity is from no motion: shift in IODs + |log scale| + radians."""
        scale = max(math.hypot(matrix[0, 0], matrix[1, 0]), 1e-9)
        angle = math.atan2(matrix[1, 0], matrix[0, 0])
        shift = math.hypot(matrix[0, 2], matrix[1, 2]) / float(self.iod.mean())
        return shift + abs(math.log(scale)) + abs(angle)


# --------------------------------------------------------------------------- face matching


class FaceMatch(NamedTuple):
    target_index: int
    other_index: int
    #: None when either face has no descriptor (matched on position alone).
    identity_distance: float | None
    #: Mean distance of the aligned eye points, in target IODs.
    position_distance: float


def match_faces(
    target_faces: Sequence[Face],
    other_faces: Sequence[Face],
    motion: Similarity,
    limits: MatchLimits | None = None,
) -> list[FaceMatch]:
    """Pair the people of two frames: optimal assignment on identity + aligned position.

    A pair is allowed when its identity distance is under ``confident_identity_distance``
    (people change places in a group series), or when its aligned eyes are within
    ``max_position_distance`` IOD and its identity distance, where both faces have descriptors,
    is under the same-person threshold. Among the allowed pairs the assignment first matches as
    many people as it can, then minimises the sum of both distances, each scaled by its limit
    (a face without a descriptor pays the identity limit in full, so a descriptor-backed match
    wins a tie). Sorted by target index.
    """
    limits = limits or MatchLimits()
    n, m = len(target_faces), len(other_faces)
    if n == 0 or m == 0:
        return []
    ident = np.full((n, m), np.nan)
    pos = np.zeros((n, m))
    allowed = np.zeros((n, m), bool)
    for i, j in itertools.product(range(n), range(m)):
        d = identity_distance(target_faces[i], other_faces[j])
        pos[i, j] = _position_distance(target_faces[i], other_faces[j], motion)
        ident[i, j] = np.nan if d is None else d
        nearby = pos[i, j] <= limits.max_position_distance
        same = d is None or d <= limits.max_identity_distance
        confident = d is not None and d <= limits.confident_identity_distance
        allowed[i, j] = confident or (nearby and same)
    id_cost = np.where(np.isnan(ident), 1.0, ident / limits.max_identity_distance)
    cost = np.minimum(pos / limits.max_position_distance, 2.0) + id_cost
    # Each allowed pair costs at most 3, so one more forbidden pair always costs more than any
    # choice among allowed ones: the assignment maximises the matches first, then their quality.
    forbidden = 3.0 * min(n, m) + 1.0
    pairs = assign(np.where(allowed, cost, forbidden))
    return [
        FaceMatch(i, j, None if np.isnan(ident[i, j]) else float(ident[i, j]), float(pos[i, j]))
        for i, j in pairs
        if allowed[i, j]
    ]


def assign(cost: np.ndarray) -> list[tuple[int, int]]:
    """Minimum-cost assignment (Hungarian algorithm with potentials, O(n²m)) on an n×m matrix.

    Every row is assigned when n ≤ m, every column otherwise. Returns (row, column) pairs sorted
    by row. scipy's ``linear_sum_assignment`` does this but scipy is not a dependency; a group
    photo has at most a few dozen faces, so plain numpy is instant.
    """
    cost = np.asarray(cost, np.float64)
    if cost.ndim != 2:
        raise ValueError(f"cost must be a 2-D matrix, got shape {cost.shape}")
    if cost.shape[0] > cost.shape[1]:
        return sorted((r, c) for c, r in assign(cost.T))
    n, m = cost.shape
    u, v = np.zeros(n + 1), np.zeros(m + 1)
    owner = np.zeros(m + 1, int)  # owner[j]: 1-based row holding column j; column 0 is virtual
    for row in range(1, n + 1):
        owner[0] = row
        col = 0
        slack = np.full(m + 1, np.inf)
        back = np.zeros(m + 1, int)
        used = np.zeros(m + 1, bool)
        while owner[col] != 0:  # grow the alternating tree until it reaches a free column
            used[col] = True
            r = owner[col]
            reduced = cost[r - 1] - u[r] - v[1:]
            better = ~used[1:] & (reduced < slack[1:])
            slack[1:][better] = reduced[better]
            back[1:][better] = col
            free = np.flatnonzero(~used[1:]) + 1
            nxt = int(free[np.argmin(slack[free])])
            delta = slack[nxt]
            u[owner[used]] += delta
            v[used] -= delta
            slack[~used] -= delta
            col = nxt
        while col != 0:  # flip the augmenting path
            prev = back[col]
            owner[col] = owner[prev]
            col = prev
    return sorted((int(owner[j]) - 1, j - 1) for j in range(1, m + 1) if owner[j] != 0)


# --------------------------------------------------------------------------- donor choice

CandidateKind = Literal["burst", "reference"]
#: Why a candidate was turned down, in the order the checks run. When every candidate fails,
#: :class:`NoDonor` reports the reason of the one that got furthest: "eyes_closed" then means
#: the right person was found but never with the needed eye open.
REJECTIONS: tuple[str, ...] = (
    # no descriptor on one side, and no aligned position either (always so for a reference)
    "no_identity",
    "different_person",
    "position",  # a burst face that is somewhere else in the aligned frame
    "eyes_closed",  # none of the needed eyes is open (closed or unknown) in this candidate
    "pose",
    "scale",
    "blurred",
)
#: Component value used in the total when it cannot be measured (no iris, no sharpness): the
#: middle of the range, so a missing measurement neither wins nor loses against a measured one.
UNKNOWN_SCORE = 0.5


@dataclass(frozen=True)
class DonorWeights:
    """Weights of the score's components (each component is 0 worst … 1 best).

    Pose and openness matter most: a turned head or a half-open eye is what makes a paste look
    wrong, and :mod:`.transfer` can correct neither (it fits a similarity; roll is corrected, so
    it counts less within the pose term via its wider limit). Sharpness next: a soft eye in a
    crisp face is the next most visible flaw. Gaze, time and identity break the remaining ties:
    a nearer frame has the same light and expression. Scale counts least, since the warp
    resamples anyway and upscaling is capped by a hard limit.
    """

    openness: float = 2.0
    pose: float = 2.0
    sharpness: float = 1.5
    gaze: float = 1.0
    time: float = 1.0
    identity: float = 1.0
    scale: float = 0.5
    #: Time score is exp(-Δt / time_scale_s): 0.6 at 1 s, 0.37 at 2 s. Burst frames 0.1–1 s apart
    #: score high; the next pose of a session, 10 s later, near 0. References always score 0.
    time_scale_s: float = 2.0
    #: Gaze score reaches 0 when the iris offsets (in eye widths) differ by this much. An iris is
    #: ~0.4 eye widths wide; a 0.15 shift reads clearly as looking elsewhere.
    gaze_tolerance: float = 0.15


@dataclass(frozen=True)
class DonorLimits:
    """Hard limits: a candidate outside any of them is never used, whatever its score."""

    max_identity_distance: float = SAME_PERSON_DISTANCE
    #: As in :class:`MatchLimits`: a burst face this close by identity may stand anywhere; a less
    #: certain one must be within ``max_position_distance`` IOD (references: identity only).
    confident_identity_distance: float = CONFIDENT_DISTANCE
    max_position_distance: float = MAX_POSITION_DISTANCE
    #: Degrees. Yaw foreshortens the eyes unequally and moves the iris relative to the corners,
    #: which a similarity cannot undo; beyond ~15° a pasted eye looks sideways. Pitch changes
    #: the lid line and how much of the upper lid shows, similar tolerance. Roll is a rotation
    #: that the alignment removes, so it is only limited where the brow/lid shading would turn.
    max_yaw_difference: float = 15.0
    max_pitch_difference: float = 12.0
    max_roll_difference: float = 30.0
    #: Target eye width / donor eye width. Enlarging a donor eye more than 1.6× shows as a soft
    #: patch; shrinking is harmless down to 1/4 (a close-up reference portrait for a group shot).
    max_upscale: float = 1.6
    max_downscale: float = 4.0
    #: Donor / target :func:`eye_sharpness`. The target eye is closed (fewer edges than an open
    #: eye), so a donor in the same focus measures above 1: open/closed 1.1–3.5 on the eval
    #: set's real pairs (P01, P03, P04, P12), ~2 on synthetic faces. A Gaussian blur of 2 px per
    #: 48 px of eye width divides it by 10–50. 0.4 turns down clear blur only.
    min_sharpness_ratio: float = 0.4


@dataclass(frozen=True)
class DonorTarget:
    key: str
    face_index: int
    face: Face
    eyes: Mapping[Side, EyeAssessment]
    #: :func:`eye_sharpness` per side, or None when not measured.
    sharpness: Mapping[Side, float] | None = None


@dataclass(frozen=True)
class DonorCandidate:
    #: The frame (or reference portrait) and face the eyes would come from.
    key: str
    face_index: int
    face: Face
    eyes: Mapping[Side, EyeAssessment]
    kind: CandidateKind = "burst"
    #: From :func:`match_faces`; None for references (a different session: identity only).
    position_distance: float | None = None
    #: Seconds between capture times; None for references.
    time_distance_s: float | None = None
    sharpness: Mapping[Side, float] | None = None


@dataclass(frozen=True)
class CandidateReport:
    """One line per candidate in the sidecar: its score, or why it was turned down."""

    key: str
    face_index: int
    kind: CandidateKind
    sides: tuple[Side, ...]
    score: float | None
    rejected: str | None = None
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "face_index": self.face_index,
            "kind": self.kind,
            "sides": list(self.sides),
            "score": self.score,
            "rejected": self.rejected,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class DonorChoice:
    candidate: DonorCandidate
    #: The needed sides this donor provides, and those it cannot (open elsewhere or nowhere).
    sides: tuple[Side, ...]
    missing: tuple[Side, ...]
    score: float
    #: Each component's 0..1 score; None where it could not be measured (UNKNOWN_SCORE used).
    components: Mapping[str, float | None]
    #: The raw measurements behind them (degrees, seconds, ratios, distances).
    measures: Mapping[str, float | None]
    considered: tuple[CandidateReport, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return {
            "outcome": "donor",
            "key": self.candidate.key,
            "face_index": self.candidate.face_index,
            "kind": self.candidate.kind,
            "sides": list(self.sides),
            "missing": list(self.missing),
            "score": self.score,
            "components": _rounded(self.components),
            "measures": _rounded(self.measures),
            "considered": [c.to_json() for c in self.considered],
        }


def _rounded(values: Mapping[str, float | None]) -> dict[str, float | None]:
    """Four decimals: enough for every measure here, and a sidecar a person can read."""
    return {k: None if v is None else round(float(v), 4) for k, v in values.items()}


@dataclass(frozen=True)
class NoDonor:
    """A normal outcome, not an error: the face stays as it is and the sidecar says why."""

    #: "no_candidates", or one of :data:`REJECTIONS` (that of the candidate that got furthest).
    reason: str
    needed: tuple[Side, ...]
    considered: tuple[CandidateReport, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return {
            "outcome": "no_donor",
            "reason": self.reason,
            "needed": list(self.needed),
            "considered": [c.to_json() for c in self.considered],
        }


@dataclass(frozen=True)
class _Scored:
    candidate: DonorCandidate
    sides: tuple[Side, ...]
    score: float
    components: dict[str, float | None]
    measures: dict[str, float | None]


def choose_donor(
    target: DonorTarget,
    candidates: Sequence[DonorCandidate],
    weights: DonorWeights | None = None,
    limits: DonorLimits | None = None,
    sides: Sequence[Side] | None = None,
) -> DonorChoice | NoDonor:
    """The best donor for the target's closed eyes (or for ``sides``), or why there is none.

    A donor that provides every needed eye always beats one that provides fewer, whatever the
    scores: both eyes from one frame share one gaze and one moment, while a left eye from one
    frame and a right from another can look in two directions. Among donors of equal coverage
    the weighted score decides; equal scores keep the candidates' order.
    """
    weights, limits = weights or DonorWeights(), limits or DonorLimits()
    if sides is None:
        sides = [s for s in SIDES if target.eyes[s].state == EyeState.CLOSED]
    needed = tuple(sides)
    if not needed:
        raise ValueError("the target face has no closed eye to replace")
    reports: list[CandidateReport] = []
    scored: list[_Scored] = []
    furthest = -1
    for cand in candidates:
        outcome = _evaluate(target, cand, needed, weights, limits)
        if isinstance(outcome, _Scored):
            scored.append(outcome)
            reports.append(
                CandidateReport(cand.key, cand.face_index, cand.kind, outcome.sides, outcome.score)
            )
        else:
            reason, detail = outcome
            furthest = max(furthest, REJECTIONS.index(reason))
            reports.append(
                CandidateReport(cand.key, cand.face_index, cand.kind, (), None, reason, detail)
            )
    if not scored:
        reason = REJECTIONS[furthest] if furthest >= 0 else "no_candidates"
        return NoDonor(reason, needed, tuple(reports))
    best = max(scored, key=lambda s: (len(s.sides), s.score))
    return DonorChoice(
        candidate=best.candidate,
        sides=best.sides,
        missing=tuple(s for s in needed if s not in best.sides),
        score=best.score,
        components=best.components,
        measures=best.measures,
        considered=tuple(reports),
    )


def choose_donors(
    target: DonorTarget,
    candidates: Sequence[DonorCandidate],
    weights: DonorWeights | None = None,
    limits: DonorLimits | None = None,
    sides: Sequence[Side] | None = None,
) -> list[DonorChoice] | NoDonor:
    """Donors for every closed eye of the target: one frame for both where one has both
    open, else a second donor for the eye the first cannot give (a blink caught in two
    frames, left shut in one and right in the other). A face whose closed eyes cannot all be
    opened gets no donor at all: a face with one eye fixed and one still shut is no fix, and
    the GPU profile may generate both."""
    first = choose_donor(target, candidates, weights, limits, sides)
    if isinstance(first, NoDonor) or not first.missing:
        return first if isinstance(first, NoDonor) else [first]
    second = choose_donor(target, candidates, weights, limits, sides=first.missing)
    if isinstance(second, NoDonor):
        return second
    return [first, second]


@dataclass(frozen=True)
class _RefusedEye:
    """An eye the fix stage's check refused once: never offered again for this target."""

    state: EyeState = EyeState.UNKNOWN
    openness: float = 0.0


def fallback_donors(
    target: DonorTarget,
    candidates: Sequence[DonorCandidate],
    chosen: Sequence[DonorChoice],
    weights: DonorWeights | None = None,
    limits: DonorLimits | None = None,
) -> dict[tuple[Side, ...], list[DonorChoice]]:
    """What to try when the fix stage's check refuses some of the eyes ``chosen`` gave: for
    each set of refused eyes, donors for those eyes only, never the refused donor eyes again.

    The usual cause is a donor eye read open that is in fact shut (a wink the assessment
    missed) or a seam that shows: the other eye of the same donor may still be the best, so
    only the refused eyes change donor. Keys are the refused sides in ``SIDES`` order; a set
    with no other donor is left out (the face then stays for review)."""
    gave = {side: (c.candidate.key, c.candidate.face_index) for c in chosen for side in c.sides}
    out: dict[tuple[Side, ...], list[DonorChoice]] = {}
    for count in range(1, len(gave) + 1):
        for refused in itertools.combinations([s for s in SIDES if s in gave], count):
            others = [_without_eyes(c, [s for s in refused if gave[s] == (c.key, c.face_index)])
                      for c in candidates]
            choices = choose_donors(target, others, weights, limits, sides=refused)
            if not isinstance(choices, NoDonor):
                out[refused] = choices
    return out


def _without_eyes(candidate: DonorCandidate, sides: Sequence[Side]) -> DonorCandidate:
    if not sides:
        return candidate
    eyes = {side: _RefusedEye() if side in sides else view
            for side, view in candidate.eyes.items()}
    return dataclasses.replace(candidate, eyes=eyes)


def _evaluate(
    target: DonorTarget,
    cand: DonorCandidate,
    needed: tuple[Side, ...],
    weights: DonorWeights,
    limits: DonorLimits,
) -> _Scored | tuple[str, str]:
    """Score one candidate, or (rejection, detail) at the first hard limit it breaks."""
    rejection = _same_person(target, cand, limits)
    if rejection:
        return rejection
    sides = tuple(s for s in needed if cand.eyes[s].state == EyeState.OPEN)
    if not sides:
        states = ", ".join(f"{s} {cand.eyes[s].state.value}" for s in needed)
        return "eyes_closed", states
    measures = _measures(target, cand, sides)
    for axis, diff, limit in (
        ("yaw", measures.yaw_difference, limits.max_yaw_difference),
        ("pitch", measures.pitch_difference, limits.max_pitch_difference),
        ("roll", measures.roll_difference, limits.max_roll_difference),
    ):
        if diff > limit:
            return "pose", f"{axis} differs by {diff:.1f}° > {limit:.1f}°"
    upscale = measures.upscale
    if upscale > limits.max_upscale or upscale < 1.0 / limits.max_downscale:
        return "scale", f"donor eye would be scaled ×{upscale:.2f}"
    ratio = measures.sharpness_ratio
    if ratio is not None and ratio < limits.min_sharpness_ratio:
        return "blurred", f"sharpness ratio {ratio:.2f} < {limits.min_sharpness_ratio:.2f}"
    components = _components(cand, sides, measures, weights, limits)
    total = sum(
        getattr(weights, k) * (UNKNOWN_SCORE if v is None else v) for k, v in components.items()
    )
    score = total / sum(getattr(weights, k) for k in components)
    return _Scored(cand, sides, round(score, 4), components, dataclasses.asdict(measures))


def _same_person(
    target: DonorTarget, cand: DonorCandidate, limits: DonorLimits
) -> tuple[str, str] | None:
    """Identity and position checks. A burst face needs at least one of the two as evidence; a
    reference portrait, from another session, only has identity to go on."""
    dist = identity_distance(target.face, cand.face)
    if dist is not None and dist > limits.max_identity_distance:
        return "different_person", f"identity distance {dist:.3f} > {limits.max_identity_distance}"
    pos = cand.position_distance if cand.kind == "burst" else None
    confident = dist is not None and dist <= limits.confident_identity_distance
    if pos is not None and pos > limits.max_position_distance and not confident:
        return "position", f"{pos:.2f} IOD from the target after alignment"
    if dist is None and pos is None:
        return "no_identity", "no descriptor on one side and no aligned position"
    return None


@dataclass(frozen=True)
class _Measures:
    """The raw numbers behind the scores, as the sidecar records them."""

    identity_distance: float | None
    position_distance: float | None
    time_distance_s: float | None
    openness: float
    yaw_difference: float
    pitch_difference: float
    roll_difference: float
    #: Target eye width / donor eye width: >1 means the donor eye gets enlarged.
    upscale: float
    sharpness_ratio: float | None
    gaze_difference: float | None


def _measures(target: DonorTarget, cand: DonorCandidate, sides: tuple[Side, ...]) -> _Measures:
    tp, cp = target.face.pose, cand.face.pose
    widths = [target.face.eyes[s].width / max(cand.face.eyes[s].width, 1e-6) for s in sides]
    sharp: float | None = None
    if target.sharpness is not None and cand.sharpness is not None:
        ratios = [cand.sharpness[s] / max(target.sharpness[s], 1e-6) for s in sides]
        sharp = float(np.mean(ratios))
    burst = cand.kind == "burst"
    return _Measures(
        identity_distance=identity_distance(target.face, cand.face),
        position_distance=cand.position_distance if burst else None,
        time_distance_s=cand.time_distance_s if burst else None,
        openness=float(np.mean([cand.eyes[s].openness for s in sides])),
        yaw_difference=abs(tp.yaw - cp.yaw),
        pitch_difference=abs(tp.pitch - cp.pitch),
        roll_difference=abs(_wrap_degrees(tp.roll - cp.roll)),
        upscale=float(np.mean(widths)),
        sharpness_ratio=sharp,
        gaze_difference=_gaze_difference(target, cand, sides),
    )


def _wrap_degrees(angle: float) -> float:
    return (angle + 180.0) % 360.0 - 180.0


def _components(
    cand: DonorCandidate,
    sides: tuple[Side, ...],
    m: _Measures,
    weights: DonorWeights,
    limits: DonorLimits,
) -> dict[str, float | None]:
    """Each criterion as 0 (worst acceptable) … 1 (best); None where it cannot be measured."""
    pose = 1.0 - max(
        m.yaw_difference / limits.max_yaw_difference,
        m.pitch_difference / limits.max_pitch_difference,
        m.roll_difference / limits.max_roll_difference,
    )
    scale_limit = limits.max_upscale if m.upscale >= 1.0 else limits.max_downscale
    gaze, sharp, dist = m.gaze_difference, m.sharpness_ratio, m.identity_distance
    if cand.kind == "reference":
        time: float | None = 0.0  # another session: other light, hair, make-up; last resort
    elif m.time_distance_s is not None:
        time = math.exp(-m.time_distance_s / weights.time_scale_s)
    else:
        time = None
    return {
        "openness": float(np.clip(m.openness, 0.0, 1.0)),
        "pose": max(pose, 0.0),
        "sharpness": None if sharp is None else min(sharp, 1.0),
        "gaze": None if gaze is None else max(1.0 - gaze / weights.gaze_tolerance, 0.0),
        "time": time,
        "identity": None if dist is None else max(1.0 - dist / limits.max_identity_distance, 0.0),
        "scale": max(1.0 - abs(math.log(m.upscale)) / math.log(scale_limit), 0.0),
    }


def gaze_offset(face: Face, side: Side) -> np.ndarray | None:
    """Where the iris sits in the eye, in eye widths from the corners' midpoint, along the
    face's horizontal (right eye → left eye, so the same for both eyes) and vertical axes.
    None when the backend gave no iris. Both eyes of one gaze move the same way on these axes."""
    eye = face.eyes[side]
    if eye.iris is None:
        return None
    across = face.eyes["left"].centre - face.eyes["right"].centre
    across = across / max(float(np.linalg.norm(across)), 1e-9)
    down = np.array([-across[1], across[0]])
    rel = eye.iris[0] - (eye.outer_corner + eye.inner_corner) / 2
    return np.array([rel @ across, rel @ down], np.float64) / max(eye.width, 1e-6)


def _gaze_difference(
    target: DonorTarget, cand: DonorCandidate, sides: tuple[Side, ...]
) -> float | None:
    """How differently the donor looks, measured against the target's *open* eye.

    A closed eye has no gaze, so the reference is the target's other eye when it is open. The
    donor's same eye is compared where it is open too (like with like); otherwise the donor's
    replacement eye stands in for it. None when the target has no open eye with an iris.
    """
    diffs = []
    for side in sides:
        other: Side = "right" if side == "left" else "left"
        ref = gaze_offset(target.face, other) if target.eyes[other].state == EyeState.OPEN else None
        if ref is None:
            continue
        look = gaze_offset(cand.face, other) if cand.eyes[other].state == EyeState.OPEN else None
        if look is None:
            look = gaze_offset(cand.face, side)
        if look is not None:
            diffs.append(float(np.linalg.norm(look - ref)))
    return float(np.mean(diffs)) if diffs else None


#: :func:`eye_sharpness` resamples every eye to this width, so a close-up and a group shot are
#: compared at one scale (variance of Laplacian grows with magnification). 48 px is a typical
#: eye in a 24-megapixel group photo.
SHARPNESS_EYE_WIDTH = 48.0


def eye_sharpness(image_rgb: np.ndarray, eye: Eye, eye_width: float = SHARPNESS_EYE_WIDTH) -> float:
    """Variance of the Laplacian over the eye and brow, resampled to ``eye_width`` pixels.

    The crop includes the brow and a margin of skin so that a closed eye (lashes, lid crease,
    brow) and an open one are measured over similar content; an open eye still measures higher
    for the same focus, which :class:`DonorLimits` allows for.
    """
    points = np.vstack([eye.contour, eye.brow]).astype(np.float64)
    margin = 0.25 * eye.width
    h, w = image_rgb.shape[:2]
    x0, y0 = np.maximum(np.floor(points.min(axis=0) - margin).astype(int), 0)
    x1, y1 = np.ceil(points.max(axis=0) + margin).astype(int) + 1
    crop = image_rgb[y0 : min(y1, h), x0 : min(x1, w)]
    if crop.size == 0:
        raise ValueError("the eye lies outside the image")
    gray = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY) if crop.ndim == 3 else crop
    f = eye_width / max(eye.width, 1e-6)
    interp = cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR
    small = cv2.resize(gray.astype(np.float32), None, fx=f, fy=f, interpolation=interp)
    return float(cv2.Laplacian(small, cv2.CV_32F).var())
