"""How well the CPU eye path does on real photos: find faces, judge eyes, fix closed ones.

Reads the evaluation set (``../shared/eval`` from the repository root, or ``--data``) at run
time only; nothing of it is copied into the repository. The contact sheet goes to ``bench/out``
(git-ignored). Without the folder it says so and exits 0 (``"available": false`` in the JSON).

Every photo goes through the product's own code: ``imageio.load_rgb``, then
``eyes.analysis.analyse`` with the toolkit ``build_toolkit`` makes from the default config.
Labels are placed onto the detected faces by ``bench/eval_labels.py`` (its hand-made table for
this folder's multi-face photos, else rules for the manifest's words; the report says how many
faces each way and lists words it did not understand). ``LabelledFace.truth``: a face is closed
if any eye is labelled closed; half-closed and not judgeable faces are "ambiguous", left out of
precision and recall, and counted on their own. A photo that cannot be read or analysed is
listed and left out, never the end of the run. Reported:

* **detection recall**: per photo min(found, labelled) / labelled, labelled = the manifest's
  ``n_faces`` ("~10" counts 10);
* **closed-eye precision / recall per face**, and **open faces that would be altered** (read
  closed): photos with partner frames (same ``pair_id``) are judged again against them with
  ``stages.plan.rejudge_in_burst``, exactly as the plan stage does; the single-photo figures
  are printed for comparison;
* **the fix path** on the same-person sets (a ``pair_id`` with a frame holding a labelled
  closed face and another frame holding a labelled open eye): for every labelled closed face,
  the plan stage's donor choice (``_target``/``_candidates`` from ``stages.plan`` and
  ``donors.choose_donor``, the eyes to replace being the labelled closed ones), then
  ``transfer.transfer_face`` + ``transfer.apply`` and ``FixStage.check``, faces of one photo
  one after the other as ``FixStage.run`` does, with its one more try from
  ``donors.fallback_donors`` for the eyes a check refuses. Per attempt: success
  (``check.ok``: the eyes read open after and the seam is not visible), the seam score, the
  identity distance between the fixed face and the donor (and before the fix, for
  comparison), and the largest pixel change outside the union of the transfer results' blend
  masks over the full image (must be 0).

OpenCV runs with one thread (``cv2.setNumThreads(1)``), OMP/OpenBLAS likewise.

    .venv/bin/python bench/eval_eyes.py [--data DIR] [--sheet PATH] [--json]
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import os
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._common import emit_json, median  # noqa: E402
from bench.calibrate_assess import LabelledFace, Score  # noqa: E402
from bench.eval_labels import EyeLabels, PlacedLabels, labelled_count, labels_for  # noqa: E402
from openeyesd.config import Config, LimitsConfig, parse_config  # noqa: E402
from openeyesd.eyes.analysis import EyeToolkit, FrameAnalysis, analyse, build_toolkit  # noqa: E402
from openeyesd.eyes.donors import (  # noqa: E402
    DonorChoice,
    NoDonor,
    choose_donors,
    fallback_donors,
)
from openeyesd.eyes.sessions import capture_time  # noqa: E402
from openeyesd.eyes.transfer import EyeTransferResult, apply, preview, transfer_face  # noqa: E402
from openeyesd.eyes.types import SIDES, EyeState, Side  # noqa: E402
from openeyesd.files import sha256_file  # noqa: E402
from openeyesd.imageio import load_rgb  # noqa: E402
from openeyesd.intake import is_image_name  # noqa: E402
from openeyesd.stages.fix import verify_fixed_face  # noqa: E402
from openeyesd.stages.plan import (  # noqa: E402
    Baselines,
    DonorFrame,
    _candidates,
    _target,
    rejudge_in_burst,
)

DEFAULT_DATA = REPO.parent / "shared" / "eval"
DEFAULT_SHEET = REPO / "bench" / "out" / "eval_contact_sheet.png"
LIMITS = LimitsConfig()
SHEET_TILE_HEIGHT, SHEET_COLUMNS = 256, 3


@dataclass
class Photo:
    file: str
    group: str
    pair: str
    path: Path
    labelled: int
    analysis: FrameAnalysis
    labels: list[EyeLabels]
    #: How ``labels`` were placed (``eval_labels.PlacedLabels``).
    placed: PlacedLabels
    #: The analysis after ``rejudge_in_burst`` where the photo has partner frames.
    judged: FrameAnalysis | None = None
    #: Per face, the person's widest openings in the burst (empty without partner frames).
    baselines: Baselines = field(default_factory=dict)


@dataclass
class Attempt:
    photo: Photo
    face: int
    sides: tuple[Side, ...]
    #: "closed" (labelled closed) or "open" (labelled open but read closed: a false alarm).
    truth: str
    classified_closed: bool
    outcome: str  # "fixed", "check_failed", "no_donor", "error"
    reason: str = ""
    donor: str = ""
    #: The donor eyes that read closed when the donor frame is judged in its own burst.
    donor_closed_in_burst: tuple[Side, ...] = ()
    #: The replaced eyes read open on the fixed photo judged in the burst (None: face lost).
    open_after_in_burst: bool | None = None
    seams: list[float] = field(default_factory=list)
    identity_after: float | None = None
    identity_before: float | None = None
    outside_change: int = 0
    #: Each replaced eye's opening after the fix / the donor eye's own opening.
    opening_vs_donor: dict[str, float] = field(default_factory=dict)
    #: The eyes the check refused (empty when it passed or refused the face as a whole), and
    #: the first check's reason when the fallback donors were tried after it.
    refused_sides: tuple[str, ...] = ()
    first_refusal: str = ""
    tile: np.ndarray | None = None


# -- loading ------------------------------------------------------------------------------------


def default_toolkit() -> tuple[Config, EyeToolkit]:
    """The toolkit the worker builds from a default config (folders are never touched)."""
    tmp = Path(tempfile.gettempdir())
    config = parse_config({"watch": [{"path": str(tmp / "in")}],
                           "output": {"path": str(tmp / "out")}}, base_dir=tmp)
    return config, build_toolkit(config)


def load_photos(data: Path, toolkit: EyeToolkit) -> tuple[list[Photo], list[str]]:
    """The manifest's photos, analysed and labelled, and a line for each one left out."""
    rows = list(csv.DictReader((data / "MANIFEST.tsv").open(), delimiter="\t"))
    photos, skipped = [], []
    for row in rows:
        path = data / row["local_file"]
        if row.get("group") == "video" or not is_image_name(path):
            continue
        try:
            pixels = load_rgb(path, LIMITS).pixels
            analysis = analyse(pixels, sha256_file(path), toolkit)
        except Exception as exc:  # noqa: BLE001 - one bad photo must not end the evaluation
            skipped.append(f"{row['local_file']}: {type(exc).__name__}: {exc}")
            continue
        size = (pixels.shape[1], pixels.shape[0])
        placed = labels_for(row, [f.face for f in analysis.faces], size)
        photos.append(Photo(row["local_file"], row.get("group", ""), row.get("pair_id", ""),
                            path, labelled_count(row.get("n_faces", "1")), analysis,
                            placed.labels, placed))
    return photos, skipped


def label_summary(photos: list[Photo]) -> dict[str, Any]:
    """How the labels were placed: photos per way, faces matched by count, words not
    understood (see bench/eval_labels.py)."""
    return {
        "photos_by_way": dict(Counter(p.placed.how for p in photos)),
        "faces_placed_by_count": sum(p.placed.by_count for p in photos),
        "not_understood": [p.file for p in photos if p.placed.how == "not understood"],
    }


def partners_of(photo: Photo, photos: list[Photo]) -> list[Photo]:
    return [p for p in photos if photo.pair and p.pair == photo.pair and p.file != photo.file]


def donor_frames(photo: Photo, photos: list[Photo]) -> list[DonorFrame]:
    """The photo's partner frames as the plan stage sees its burst: cached (single-photo)
    analyses; the time gap only where both frames carry the camera's clock."""
    mine = capture_time(photo.path)
    frames = []
    for other in partners_of(photo, photos):
        theirs = capture_time(other.path)
        gap = (abs(theirs.timestamp - mine.timestamp)
               if mine.source == theirs.source == "exif" else None)
        frames.append(DonorFrame(f"eval:{other.file}", "burst", other.analysis, other.path, gap))
    return frames


def judge_in_bursts(photos: list[Photo]) -> None:
    for photo in photos:
        donors = donor_frames(photo, photos)
        photo.judged, photo.baselines = rejudge_in_burst(photo.analysis, donors)


# -- assessment figures -------------------------------------------------------------------------


def face_state(frame: FrameAnalysis, index: int) -> str:
    face = frame.faces[index]
    if face.closed_sides():
        return "closed"
    return "unknown" if any(face.state(s) is EyeState.UNKNOWN for s in SIDES) else "open"


def labelled_faces(photo: Photo) -> list[LabelledFace]:
    return [LabelledFace(photo.file, photo.group, photo.pair, i, fa.face, photo.labels[i],
                         fa.assessment.measurements)
            for i, fa in enumerate(photo.analysis.faces)]


def assessment_scores(photos: list[Photo]) -> tuple[Score, Score, list[str]]:
    """(with the burst rule where there are partners, single photo), and the errors."""
    burst, single, errors = Score(), Score(), []
    for photo in photos:
        assert photo.judged is not None
        for lf in labelled_faces(photo):
            pred = face_state(photo.judged, lf.index)
            burst.add(lf.truth, pred)
            single.add(lf.truth, face_state(photo.analysis, lf.index))
            if lf.truth in ("open", "closed") and pred != lf.truth and not (
                    lf.truth == "open" and pred == "unknown"):
                partner = " (burst)" if photo.judged is not photo.analysis else ""
                errors.append(f"{lf.truth:6s} read {pred:7s}{partner} {photo.file[:70]} "
                              f"#{lf.index}")
    return burst, single, errors


def detection_recall(photos: list[Photo]) -> tuple[float, int, int]:
    found = sum(min(len(p.analysis.faces), p.labelled) for p in photos)
    labelled = sum(p.labelled for p in photos)
    return found / max(labelled, 1), found, labelled


# -- the fix path -------------------------------------------------------------------------------


def closed_sides(labels: EyeLabels) -> tuple[Side, ...]:
    """Labels are (subject's right, subject's left); sides in SIDES order."""
    by_side = {"right": labels[0], "left": labels[1]}
    return tuple(s for s in SIDES if by_side[s] == "closed")


def fix_targets(photo: Photo) -> list[tuple[int, tuple[Side, ...], str]]:
    """(face, eyes to replace, truth): every labelled closed face (its labelled closed eyes),
    and every labelled open face the burst rule reads closed (the eyes it reads closed)."""
    assert photo.judged is not None
    out = []
    for index, labels in enumerate(photo.labels):
        judged = photo.judged.faces[index]
        if "closed" in labels:
            out.append((index, closed_sides(labels), "closed"))
        elif labels == ("open", "open") and judged.closed_sides():
            out.append((index, tuple(judged.closed_sides()), "open"))
    return out


def fix_sets(photos: list[Photo]) -> list[Photo]:
    """Photos of a pair set with a fix target, where another frame of the set holds a
    labelled open eye."""
    out = []
    for photo in photos:
        donors = [p for p in partners_of(photo, photos)
                  if any("open" in lab for lab in p.labels)]
        if photo.group == "pairs" and fix_targets(photo) and donors:
            out.append(photo)
    return out


def outside_change(base: np.ndarray, after: np.ndarray, results: list[EyeTransferResult]) -> int:
    """Largest channel difference between ``base`` and ``after`` outside every blend mask."""
    inside = np.zeros(base.shape[:2], bool)
    for r in results:
        x0, y0, x1, y1 = r.box
        inside[y0:y1, x0:x1] |= r.mask > 0
    diff = np.abs(base.astype(np.int16) - after.astype(np.int16)).max(axis=2)
    return int(diff[~inside].max()) if (~inside).any() else 0


def fix_photo(photo: Photo, photos: list[Photo], toolkit: EyeToolkit,
              blend: str) -> list[Attempt]:
    """Every labelled closed face of one photo, in order, as FixStage.run applies them."""
    assert photo.judged is not None
    donors = donor_frames(photo, photos)
    after, attempts = load_rgb(photo.path, LIMITS).pixels, []
    for index, sides, truth in fix_targets(photo):
        face = photo.judged.faces[index]
        attempt = Attempt(photo, index, sides, truth, bool(face.closed_sides()), "no_donor")
        baselines = photo.baselines.get(index)
        candidates = _candidates(photo.judged, index, donors, baselines)
        target = _target(index, face)
        choices = choose_donors(target, candidates, sides=sides)
        attempts.append(attempt)
        if isinstance(choices, NoDonor):
            attempt.reason = choices.reason
            continue
        changed = transplant(attempt, choices, photos, donors, after, toolkit, baselines, blend)
        retry = with_fallback(choices, fallback_donors(target, candidates, choices),
                              attempt.refused_sides)
        if attempt.outcome == "check_failed" and retry is not None:
            # As FixStage.run: the refused eyes once more from the plan's fallback donors.
            attempt.first_refusal = attempt.reason
            changed = transplant(attempt, retry, photos, donors, after, toolkit, baselines,
                                 blend)
        after = changed
    return attempts


def with_fallback(choices: list[DonorChoice], fallbacks: dict[tuple[Side, ...],
                  list[DonorChoice]], refused: tuple[str, ...]) -> list[DonorChoice] | None:
    """``choices`` with the refused eyes taken from their fallback donors, as the fix stage's
    ``_fallback_items`` does with plan items; None when there is nothing to try."""
    key = tuple(s for s in SIDES if s in refused)
    if not key or key not in fallbacks:
        return None
    kept = [dataclasses.replace(c, sides=tuple(s for s in c.sides if s not in key))
            for c in choices]
    return [c for c in kept if c.sides] + fallbacks[key]


def open_in_burst(fixed: np.ndarray, attempt: Attempt, donors: list[DonorFrame],
                  toolkit: EyeToolkit) -> bool | None:
    """Analyse the fixed photo as the pipeline would, judge it in its burst, and say whether
    the replaced eyes read open there; None when the face is not found again."""
    target = attempt.photo.analysis.faces[attempt.face].face
    frame, _ = rejudge_in_burst(analyse(fixed, "fixed", toolkit), donors)
    want = np.stack([target.eyes[s].centre for s in SIDES])
    for face in frame.faces:
        have = np.stack([face.face.eyes[s].centre for s in SIDES])
        if np.linalg.norm(have - want, axis=1).max() < 0.5 * target.interocular:
            return all(face.state(s) is EyeState.OPEN for s in attempt.sides)
    return None


def transplant(attempt: Attempt, choices: list[DonorChoice], photos: list[Photo],
               donors: list[DonorFrame], after: np.ndarray, toolkit: EyeToolkit,
               baselines: dict[Side, float | None] | None, blend: str) -> np.ndarray:
    """transfer_face + apply per donor (one, or one per eye) and the fix stage's check for
    one face; returns the new pixels (unchanged when the check fails, as in the fix stage)."""
    target = attempt.photo.analysis.faces[attempt.face].face
    attempt.donor = "+".join(c.candidate.key for c in choices)
    attempt.donor_closed_in_burst = ()
    for choice in choices:
        donor_photo = next(p for p in photos if f"eval:{p.file}" == choice.candidate.key)
        assert donor_photo.judged is not None
        donor_face = donor_photo.judged.faces[choice.candidate.face_index]
        attempt.donor_closed_in_burst += tuple(
            s for s in choice.sides if donor_face.state(s) is not EyeState.OPEN)
    candidate, results, donor_openings = after, [], {}
    for choice in choices:
        donor = next(d for d in donors if d.key == choice.candidate.key)
        donor_analysis = donor.analysis.faces[choice.candidate.face_index]
        donor_pixels = load_rgb(donor.image_path, LIMITS).pixels
        try:
            more = transfer_face(candidate, target, donor_pixels, donor_analysis.face,
                                 sides=choice.sides, method=blend)  # type: ignore[arg-type]
        except ValueError as exc:
            attempt.outcome, attempt.reason = "error", f"transfer_face: {exc}"
            return after
        candidate, results = apply(candidate, more), results + more
        donor_openings |= {s: donor_analysis.assessment.measurements[s].opening
                           for s in choice.sides}
    seams = {r.side: float(r.seam) for r in results}
    check = verify_fixed_face(toolkit, candidate, target, list(seams), seams,
                              baselines=baselines,  # type: ignore[arg-type]
                              donor_openings=donor_openings, before=after)
    attempt.outcome = "fixed" if check.ok else "check_failed"
    attempt.reason, attempt.refused_sides = check.reason, check.sides
    attempt.opening_vs_donor = check.details.get("opening_vs_donor", {})
    attempt.seams = [float(r.seam) for r in results]
    attempt.outside_change = outside_change(after, candidate, results)
    first_donor = next(d for d in donors if d.key == choices[0].candidate.key)
    donor_face = first_donor.analysis.faces[choices[0].candidate.face_index].face
    if donor_face.descriptor is not None:
        fixed_vec = toolkit.identity.describe(candidate, target)
        attempt.identity_after = toolkit.identity.distance(fixed_vec, donor_face.descriptor)
        if target.descriptor is not None:
            attempt.identity_before = toolkit.identity.distance(target.descriptor,
                                                                donor_face.descriptor)
    attempt.tile = preview(after, candidate, target, height=SHEET_TILE_HEIGHT)
    attempt.open_after_in_burst = open_in_burst(candidate, attempt, donors, toolkit)
    return candidate if check.ok else after


# -- contact sheet ------------------------------------------------------------------------------


def labelled_tile(attempt: Attempt) -> np.ndarray:
    assert attempt.tile is not None
    tile = attempt.tile
    strip = np.full((40, max(tile.shape[1], 360), 3), 255, np.uint8)
    colour = (0, 128, 0) if attempt.outcome == "fixed" else (200, 0, 0)
    seam = max(attempt.seams) if attempt.seams else float("nan")
    ident = attempt.identity_after if attempt.identity_after is not None else float("nan")
    head = f"{attempt.photo.file.split('/')[-1][:34]} #{attempt.face}"
    cv2.putText(strip, head, (4, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
    text = f"{attempt.outcome} seam {seam:.2f} id {ident:.2f} {attempt.reason[:30]}"
    cv2.putText(strip, text, (4, 33), cv2.FONT_HERSHEY_SIMPLEX, 0.42, colour, 1, cv2.LINE_AA)
    body = np.full((tile.shape[0], strip.shape[1], 3), 255, np.uint8)
    body[:, :tile.shape[1]] = tile
    return np.vstack([strip, body])


def contact_sheet(attempts: list[Attempt], path: Path) -> int:
    """Before | after of every transplanted face, in a grid; returns the tile count."""
    tiles = [labelled_tile(a) for a in attempts if a.tile is not None]
    if not tiles:
        return 0
    width = max(t.shape[1] for t in tiles)
    height = max(t.shape[0] for t in tiles)
    rows = -(-len(tiles) // SHEET_COLUMNS)
    sheet = np.full((rows * (height + 8), SHEET_COLUMNS * (width + 8), 3), 255, np.uint8)
    for k, tile in enumerate(tiles):
        top, left = (k // SHEET_COLUMNS) * (height + 8), (k % SHEET_COLUMNS) * (width + 8)
        sheet[top:top + tile.shape[0], left:left + tile.shape[1]] = tile
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet).save(path)
    return len(tiles)


# -- report -------------------------------------------------------------------------------------


def fix_summary(every: list[Attempt]) -> dict[str, Any]:
    """Figures over the labelled closed faces; open faces read closed are counted apart."""
    attempts = [a for a in every if a.truth == "closed"]
    tried = [a for a in attempts if a.outcome in ("fixed", "check_failed")]
    fixed = [a for a in tried if a.outcome == "fixed"]
    seams = [s for a in tried for s in a.seams]
    after = [a.identity_after for a in tried if a.identity_after is not None]
    before = [a.identity_before for a in tried if a.identity_before is not None]
    false_alarms = [a for a in every if a.truth == "open"]
    return {
        "closed_faces_in_sets": len(attempts),
        "classified_closed": sum(a.classified_closed for a in attempts),
        "fix_attempts": len(tried), "fixed": len(fixed),
        "fixed_with_fallback_donor": sum(bool(a.first_refusal) for a in fixed),
        "fix_success_rate": round(len(fixed) / max(len(tried), 1), 3),
        "fixed_and_open_in_burst": sum(a.open_after_in_burst is True for a in fixed),
        "fix_success_rate_burst_rule": round(
            sum(a.open_after_in_burst is True for a in fixed) / max(len(tried), 1), 3),
        "donor_eye_closed_in_burst": sum(bool(a.donor_closed_in_burst) for a in tried),
        "no_donor": dict(Counter(a.reason for a in attempts if a.outcome == "no_donor")),
        "errors": [f"{a.photo.file} #{a.face}: {a.reason}" for a in attempts
                   if a.outcome == "error"],
        "check_failures": dict(Counter(a.reason for a in tried if a.outcome == "check_failed")),
        "seam_median": round(median(seams), 3) if seams else None,
        "seam_max": round(max(seams), 3) if seams else None,
        "identity_after_median": round(median(after), 3) if after else None,
        "identity_after_max": round(max(after), 3) if after else None,
        "identity_before_median": round(median(before), 3) if before else None,
        "max_outside_change": max((a.outside_change for a in every), default=0),
        "open_faces_read_closed_in_sets": len(false_alarms),
        "open_faces_changed": sum(a.outcome == "fixed" for a in false_alarms),
    }


def print_attempts(attempts: list[Attempt]) -> None:
    print("\nfix attempts (same-person sets; truth 'open' = an open face read closed):")
    for a in attempts:
        seam = "/".join(f"{s:.2f}" for s in a.seams) or "-"
        ident = "-" if a.identity_after is None else f"{a.identity_after:.3f}"
        was = "-" if a.identity_before is None else f"{a.identity_before:.3f}"
        burst = {True: "open", False: "CLOSED", None: "-"}[a.open_after_in_burst]
        shut = "+".join(a.donor_closed_in_burst) or "no"
        vs_donor = "/".join(f"{v:.2f}" for v in a.opening_vs_donor.values()) or "-"
        print(f"  {a.outcome:12s} {a.truth:6s} {a.photo.file.split('/')[-1][:36]:36s} #{a.face} "
              f"{'+'.join(a.sides):10s} read {'closed' if a.classified_closed else 'not   '} "
              f"donor {a.donor.split('/')[-1][:20]:20s} donor eye shut in burst: {shut:5s} "
              f"seam {seam:9s} vs donor {vs_donor:9s} id {was}->{ident} "
              f"outside {a.outside_change} after, in burst: "
              f"{burst}; {a.reason}"
              + (f" (first donor refused: {a.first_refusal})" if a.first_refusal else ""))


def report(photos: list[Photo], skipped: list[str], attempts: list[Attempt],
           sheet: tuple[Path, int], seconds: float) -> dict[str, Any]:
    burst, single, errors = assessment_scores(photos)
    labels = label_summary(photos)
    recall, found, labelled = detection_recall(photos)
    fixes = fix_summary(attempts)
    with_partners = sum(p.judged is not p.analysis for p in photos)
    print(f"{len(photos)} photos ({with_partners} judged with partner frames), "
          f"{sum(len(p.analysis.faces) for p in photos)} faces found")
    print("photos left out (unreadable or failed analysis): "
          + ("; ".join(skipped) if skipped else "none"))
    print(f"labels placed: photos {labels['photos_by_way']}; "
          f"{labels['faces_placed_by_count']} faces matched to a count by lid opening"
          + (f"; words not understood (faces left out as ambiguous): {labels['not_understood']}"
             if labels["not_understood"] else ""))
    print(f"detection recall {recall:.3f} ({found}/{labelled} labelled faces)")
    print("with the burst rule: " + burst.line())
    print("single photo only:   " + single.line())
    print("errors (burst rule):\n" + ("\n".join("  " + e for e in errors) or "  none"))
    print_attempts(attempts)
    print(f"\nfix: {fixes['closed_faces_in_sets']} labelled closed faces, "
          f"{fixes['fix_attempts']} attempts, {fixes['fixed']} fixed by FixStage.check "
          f"(success rate {fixes['fix_success_rate']:.3f}; "
          f"{fixes['fixed_with_fallback_donor']} after a fallback donor); of those, open when "
          f"judged in the "
          f"burst {fixes['fixed_and_open_in_burst']} (rate "
          f"{fixes['fix_success_rate_burst_rule']:.3f}); donor eye closed in its burst "
          f"{fixes['donor_eye_closed_in_burst']}; no donor {fixes['no_donor']}; errors "
          f"{len(fixes['errors'])}; check failures {fixes['check_failures']}")
    print(f"open faces read closed in the sets: {fixes['open_faces_read_closed_in_sets']}, "
          f"of which changed by the fix: {fixes['open_faces_changed']}")
    print(f"seam median {fixes['seam_median']} max {fixes['seam_max']}; identity fixed->donor "
          f"median {fixes['identity_after_median']} max {fixes['identity_after_max']} (before "
          f"the fix: median {fixes['identity_before_median']}); max pixel change outside the "
          f"blend masks {fixes['max_outside_change']} (must be 0)")
    print(f"contact sheet: {sheet[0]} ({sheet[1]} faces); {seconds:.1f} s")
    return {
        "available": True, "photos": len(photos),
        "faces": sum(len(p.analysis.faces) for p in photos), "labelled_faces": labelled,
        "face_recall": round(recall, 3), "closed_precision": round(burst.as_dict()["precision"], 3),
        "closed_recall": round(burst.as_dict()["recall"], 3), "open_faces_altered": burst.fp,
        "single_photo": single.as_dict(), "burst_rule": burst.as_dict(), **fixes,
        "labels": labels, "photos_left_out": skipped,
        "contact_sheet": str(sheet[0]), "seconds": round(seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--sheet", type=Path, default=DEFAULT_SHEET)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not (args.data / "MANIFEST.tsv").exists():
        print(f"no evaluation set at {args.data} (MANIFEST.tsv missing); nothing to evaluate")
        if args.json:
            emit_json({"available": False, "data": str(args.data)})
        return
    cv2.setNumThreads(1)
    started = time.perf_counter()
    config, toolkit = default_toolkit()
    print(f"evaluation set {args.data}; OpenCV at 1 thread; blend {config.eyes.blend}")
    photos, skipped = load_photos(args.data, toolkit)
    judge_in_bursts(photos)
    attempts = [a for photo in fix_sets(photos)
                for a in fix_photo(photo, photos, toolkit, str(config.eyes.blend))]
    sheet = (args.sheet, contact_sheet(attempts, args.sheet))
    payload = report(photos, skipped, attempts, sheet, time.perf_counter() - started)
    if args.json:
        emit_json({"bench": "eval_eyes", **payload})


if __name__ == "__main__":
    main()
