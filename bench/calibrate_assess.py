"""Calibrate and check the open/closed eye assessment on the evaluation photos.

Reads ``../shared/eval/MANIFEST.tsv`` (override with ``--eval``) at run time only: nothing of it
is copied anywhere. Runs the CPU landmark backend and ``openeyesd.eyes.assess`` on every photo,
matches detected faces to the human labels, and prints:

* per-face closed-eye recall and precision, open faces that would be altered, unknown counts;
* the same figures with the burst baseline (``assess_relative``) over each pair group;
* leave-one-group-out figures: thresholds refitted without the group, then scored on it;
* each feature's distribution for open and closed eyes, so thresholds can be chosen.

Labels: ``bench/eval_labels.py`` places the manifest's words on the detected faces (its hand-made
table for this folder's multi-face photos, else the words' own rules). Half-closed, squinting and
not-judgeable faces are "ambiguous": left out of recall and precision and listed on their own.
Usage::

    .venv/bin/python bench/calibrate_assess.py [--eval DIR] [--cache FILE.pkl] [--dump FILE.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import pickle
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import emit_json
from bench.eval_labels import OPEN, EyeLabels, labels_for
from openeyesd.eyes import assess
from openeyesd.eyes.types import SIDES, EyeState, Face


@dataclass
class LabelledFace:
    file: str
    group: str
    pair: str
    index: int
    face: Face
    labels: EyeLabels
    measures: dict[str, assess.EyeMeasurement]

    @property
    def truth(self) -> str:
        """Face-level truth: closed if any eye is, open if both are, else ambiguous."""
        if "closed" in self.labels:
            return "closed"
        return "open" if self.labels == OPEN else "amb"


def read_photo(path: Path) -> np.ndarray:
    """The photo upright (EXIF orientation applied), as RGB uint8."""
    return np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))


def load_faces(eval_dir: Path, cache: Path | None) -> list[LabelledFace]:
    from openeyesd.eyes.landmarks import FaceMeshBackend

    detected: dict[str, list[Face]] = {}
    if cache and cache.exists():
        detected = pickle.loads(cache.read_bytes())
    backend = None
    rows = list(csv.DictReader((eval_dir / "MANIFEST.tsv").open(), delimiter="\t"))
    out: list[LabelledFace] = []
    for row in rows:
        name = row["local_file"]
        if row["group"] == "video":
            continue
        try:
            image = read_photo(eval_dir / name)
        except OSError as exc:  # missing, cut off or not an image: one photo, not the run
            print(f"  left out, cannot read {name}: {exc}")
            continue
        if name not in detected:
            backend = backend or FaceMeshBackend()
            detected[name] = backend.detect(image)
        faces = detected[name]
        labels = labels_for(row, faces, (image.shape[1], image.shape[0])).labels
        for i, (face, lab) in enumerate(zip(faces, labels, strict=True)):
            measures = {side: assess.measure_eye(image, face, side) for side in ("right", "left")}
            out.append(LabelledFace(name, row["group"], row["pair_id"], i, face, lab, measures))
        if not faces:
            print(f"  no face found: {name} ({row['eyes']})")
    if cache:
        cache.write_bytes(pickle.dumps(detected))
    return out


def burst_partners(faces: list[LabelledFace], eval_dir: Path) -> dict[int, list[int]]:
    """For each face of a pair group, the same person in the group's other photos (dlib
    descriptor, best match per photo under the identity threshold), as indexes into ``faces``."""
    from openeyesd.eyes.identity import DlibIdentity

    identity = DlibIdentity()
    cache: dict[str, np.ndarray] = {}
    vectors: dict[int, np.ndarray] = {}
    for i, lf in enumerate(faces):
        if not lf.pair:
            continue
        if lf.file not in cache:
            cache.clear()
            cache[lf.file] = read_photo(eval_dir / lf.file)
        vectors[i] = identity.describe(cache[lf.file], lf.face)
    partners: dict[int, list[int]] = {}
    for i, vec in vectors.items():
        by_file: dict[str, tuple[float, int]] = {}
        for j, other in vectors.items():
            if faces[j].pair != faces[i].pair or faces[j].file == faces[i].file:
                continue
            dist = identity.distance(vec, other)
            if identity.same_person(dist) and dist < by_file.get(faces[j].file, (9.0, -1))[0]:
                by_file[faces[j].file] = (dist, j)
        partners[i] = [j for _, j in by_file.values()]
    return partners


def face_state(lf: LabelledFace, t: assess.Thresholds,
               baseline: dict[str, float | None] | None = None) -> str:
    """The face's verdict: closed if any eye is, unknown if no eye is closed but one is unknown."""
    verdicts = {s: assess.classify(lf.measures[s], baseline=(baseline or {}).get(s), thresholds=t)
                for s in SIDES}
    states = [v.state for v in assess.judge_both_eyes(lf.measures, verdicts, baseline, t).values()]
    if EyeState.CLOSED in states:
        return "closed"
    return "unknown" if EyeState.UNKNOWN in states else "open"


def baselines_for(faces: list[LabelledFace], partners: dict[int, list[int]],
                  t: assess.Thresholds) -> list[dict[str, float | None] | None]:
    out: list[dict[str, float | None] | None] = []
    for i, lf in enumerate(faces):
        others = partners.get(i, [])
        frames = [lf.measures] + [faces[j].measures for j in others]
        out.append(assess.burst_baselines(frames, t) if others else None)  # type: ignore[arg-type]
    return out


@dataclass
class Score:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    unknown_closed: int = 0
    unknown_open: int = 0
    open_total: int = 0
    closed_total: int = 0
    amb_closed: int = 0
    amb_total: int = 0

    def add(self, truth: str, pred: str) -> None:
        if truth == "amb":
            self.amb_total += 1
            self.amb_closed += pred == "closed"
            return
        if truth == "closed":
            self.closed_total += 1
            self.tp += pred == "closed"
            self.fn += pred != "closed"
            self.unknown_closed += pred == "unknown"
        else:
            self.open_total += 1
            self.fp += pred == "closed"
            self.unknown_open += pred == "unknown"

    def line(self) -> str:
        recall = self.tp / max(self.closed_total, 1)
        precision = self.tp / max(self.tp + self.fp, 1)
        judged = self.closed_total - self.unknown_closed
        return (f"closed faces {self.closed_total}: recall {recall:.3f} ({self.tp}/"
                f"{self.closed_total}; {self.tp}/{judged} of those not 'unknown'), precision "
                f"{precision:.3f}; open faces {self.open_total}: {self.fp} read as closed, "
                f"{self.unknown_open} unknown; closed faces unknown {self.unknown_closed}; "
                f"ambiguous {self.amb_total} ({self.amb_closed} read as closed)")

    def as_dict(self) -> dict[str, float]:
        return {"recall": self.tp / max(self.closed_total, 1),
                "precision": self.tp / max(self.tp + self.fp, 1), **self.__dict__}


def evaluate(faces: list[LabelledFace], t: assess.Thresholds,
             baselines: list[dict[str, float | None] | None] | None = None,
             only: set[int] | None = None) -> tuple[Score, list[str]]:
    score, errors = Score(), []
    for i, lf in enumerate(faces):
        if only is not None and i not in only:
            continue
        pred = face_state(lf, t, baselines[i] if baselines else None)
        score.add(lf.truth, pred)
        harmless = pred == "unknown" and lf.truth == "open"
        if lf.truth != "amb" and pred != lf.truth and not harmless:
            ops = "/".join(f"{lf.measures[s].opening:.3f}" for s in ("right", "left"))
            errors.append(f"{lf.truth:6s} read {pred:7s} opening r/l {ops} "
                          f"w {lf.measures['right'].width_px:.0f}px {lf.file[:60]} #{lf.index}")
    return score, errors


#: Altering an open face costs more than leaving a closed one: the fitted rule maximises
#: closed faces found - FP_COST x open faces read as closed (then takes the middle of the best
#: plateau, for margin).
FP_COST = 5
ABS_GRID = np.round(np.arange(0.08, 0.2001, 0.005), 3)
REL_GRID = np.round(np.arange(0.50, 0.9001, 0.01), 2)


def _plateau_middle(grid: np.ndarray, gains: list[float]) -> float:
    """The middle of the longest run of best values: the threshold with the most margin."""
    best = max(gains)
    runs, start = [], None
    for k, g in enumerate([*gains, -np.inf]):
        if g == best and start is None:
            start = k
        elif g != best and start is not None:
            runs.append((k - start, start, k - 1))
            start = None
    _, lo, hi = max(runs)
    return float(grid[(lo + hi) // 2])


def fit(faces: list[LabelledFace], train: set[int],
        baselines: list[dict[str, float | None] | None]) -> assess.Thresholds:
    """Refit the two thresholds that matter on ``train``: the absolute opening limit (on
    faces without a burst), then the relative one (on faces with a baseline)."""
    base = assess.DEFAULT_THRESHOLDS
    no_burst = {i for i in train if baselines[i] is None}
    gains = []
    for value in ABS_GRID:
        sc, _ = evaluate(faces, replace(base, closed_opening=float(value)), only=no_burst)
        gains.append(sc.tp - FP_COST * sc.fp)
    t = replace(base, closed_opening=_plateau_middle(ABS_GRID, gains))
    burst = {i for i in train if baselines[i] is not None}
    gains = []
    for value in REL_GRID:
        sc, _ = evaluate(faces, replace(t, relative_closed=float(value)), baselines, burst)
        gains.append(sc.tp - FP_COST * sc.fp)
    return replace(t, relative_closed=_plateau_middle(REL_GRID, gains))


def leave_one_group_out(faces: list[LabelledFace],
                        baselines: list[dict[str, float | None] | None]) -> Score:
    """Each pair group (or lone photo) scored with thresholds fitted on all the others."""
    groups: dict[str, set[int]] = {}
    for i, lf in enumerate(faces):
        groups.setdefault(lf.pair or lf.file, set()).add(i)
    total = Score()
    for held in groups.values():
        t = fit(faces, set(range(len(faces))) - held, baselines)
        sc, _ = evaluate(faces, t, baselines, held)
        for key, value in sc.__dict__.items():
            setattr(total, key, getattr(total, key) + value)
    return total


def distributions(faces: list[LabelledFace], t: assess.Thresholds) -> None:
    """Percentiles of each feature per eye label (eyes that pass the size/pose guards)."""
    print("\nfeature distributions per eye (eyes >= min_eye_px, |yaw| <= max_yaw)")
    print(f"{'feature':13s} {'label':6s}  n   p0     p5     p25    p50    p75    p95    p100")
    for feature in ("opening", "iris_visible", "contrast", "width_px"):
        for label in ("open", "closed", "amb"):
            values = [getattr(lf.measures[s], feature) for lf in faces
                      for k, s in enumerate(("right", "left"))
                      if lf.labels[k] == label and lf.measures[s].width_px >= t.min_eye_px
                      and abs(lf.measures[s].yaw) <= t.max_yaw]
            values = [v for v in values if v is not None]
            if values:
                q = np.percentile(values, [0, 5, 25, 50, 75, 95, 100])
                cells = " ".join(f"{v:6.3f}" for v in q)
                print(f"{feature:13s} {label:6s} {len(values):3d} {cells}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--eval", type=Path,
                        default=Path(__file__).resolve().parents[2] / "shared" / "eval")
    parser.add_argument("--cache", type=Path, help="pickle of detections, reused when present")
    parser.add_argument("--dump", type=Path, help="write every face's measurements as JSON")
    args = parser.parse_args()
    if not (args.eval / "MANIFEST.tsv").exists():
        print(f"no evaluation set at {args.eval} (MANIFEST.tsv missing); nothing to calibrate")
        return
    started = time.perf_counter()
    faces = load_faces(args.eval, args.cache)
    partners = burst_partners(faces, args.eval)
    t = assess.DEFAULT_THRESHOLDS
    baselines = baselines_for(faces, partners, t)
    print(f"{len(faces)} faces from {len({f.file for f in faces})} photos; "
          f"{sum(b is not None for b in baselines)} have burst partners; thresholds {t}")
    single, errors_single = evaluate(faces, t)
    burst, errors_burst = evaluate(faces, t, baselines)
    print("\nsingle photo (no baseline):  " + single.line())
    print("with burst baselines:        " + burst.line())
    paired = {i for i, base in enumerate(baselines) if base is not None}
    in_bursts, _ = evaluate(faces, t, baselines, paired)
    print("  of which faces with a partner frame: " + in_bursts.line())
    print("\nerrors with burst baselines:")
    print("\n".join("  " + e for e in errors_burst) or "  none")
    refit = fit(faces, set(range(len(faces))), baselines)
    print(f"\nfitted on all faces: closed_opening {refit.closed_opening}, "
          f"relative_closed {refit.relative_closed}")
    held = leave_one_group_out(faces, baselines)
    print("leave-one-group-out:         " + held.line())
    distributions(faces, t)
    if args.dump:
        args.dump.write_text(json.dumps([
            {"file": f.file, "face": f.index, "labels": f.labels, "truth": f.truth,
             "baseline": b, **{s: f.measures[s].to_dict() for s in ("right", "left")}}
            for f, b in zip(faces, baselines, strict=True)], indent=1))
    emit_json({"bench": "calibrate_assess", "faces": len(faces),
               "seconds": round(time.perf_counter() - started, 1),
               "single": single.as_dict(), "burst": burst.as_dict(),
               "burst_faces_with_partner": in_bursts.as_dict(),
               "leave_one_group_out": held.as_dict(), "errors_single": len(errors_single)})


if __name__ == "__main__":
    main()
