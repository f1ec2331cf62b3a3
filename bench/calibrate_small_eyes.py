"""Evidence for the small-face rule (``assess.judge_small_face``): shrink real faces, judge again.

The evaluation set has few small faces (eyes under 10 px) and only four closed ones, too few to
set a limit on. So every labelled face whose eyes are at least 16 px wide is shrunk (the whole
photo, ``INTER_AREA``) until its eyes are 6.5-9.5 px wide, optionally saved as JPEG at a low
quality as small faces in group photos usually are, and found and fitted again by the product's
own landmark backend and blink model. Each fit is judged by the shipped single-photo rule
(``analysis.judge``: lid opening, eyeBlink, then the two-eye rules), and the figures are
printed per measured eye width:

* faces read closed by the small-face rule: open ones (must be 0) and closed ones;
* faces read closed by the per-eye rules (lid opening, eyeBlink), where one eye of the shrunk
  face still measured 10 px or more: the rules that have always applied there, shown apart so
  the two are not confused;
* the opening of the wider eye on open faces, lowest and 1st percentile: the margin the rule
  (both eyes at opening 0) keeps;
* the small-face rule on the photos' own small faces.

The shrunk copies of one face are not independent samples; the figures say how often the rule
fires on faces like these, not a confidence bound. Reads ``../shared/eval`` at run time only.
Usage::

    .venv/bin/python bench/calibrate_small_eyes.py [--eval DIR] [--cache FILE.pkl] [--json]
"""

from __future__ import annotations

import argparse
import io
import os
import pickle
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import emit_json  # noqa: E402
from bench.calibrate_assess import LabelledFace, load_faces, read_photo  # noqa: E402
from bench.eval_eyes import default_toolkit  # noqa: E402
from openeyesd.eyes import assess  # noqa: E402
from openeyesd.eyes.analysis import EyeToolkit, judge  # noqa: E402
from openeyesd.eyes.types import SIDES, EyeState, Face, Side  # noqa: E402

#: Eye widths (px) the faces are shrunk to, and the JPEG qualities (None: not re-encoded).
TARGET_EYE_PX = (6.5, 7.0, 7.5, 8.0, 8.5, 9.0, 9.5)
JPEG_QUALITIES: tuple[int | None, ...] = (None, 75, 40)
#: Faces must start at least this wide (eye px) to be shrunk: their labels are reliable.
SOURCE_MIN_EYE_PX = 16.0
#: Width bins (px) for the report: whole pixels from the smallest target to the largest.


@dataclass(frozen=True)
class Fit:
    truth: str
    measures: dict[Side, assess.EyeMeasurement]
    #: JPEG quality of the shrunk copy; None: not re-encoded.
    quality: int | None = None
    #: eyeBlink per eye, as the pipeline has it; None without the blink model.
    blink: dict[Side, float] | None = None

    @property
    def eye_px(self) -> float:
        return min(m.width_px for m in self.measures.values())

    @property
    def wider_opening(self) -> float:
        return max(m.opening for m in self.measures.values())

    def reading(self) -> str:
        """Which shipped single-photo rule reads the face closed: "small" (the face has an eye
        under ``min_eye_px``, so only the shut-lids rule can), "per_eye" or ""."""
        judged = judge(self.measures, self.blink)
        if not any(v.state is EyeState.CLOSED for v in judged.values()):
            return ""
        smallest = min(m.width_px for m in self.measures.values())
        return "small" if smallest < assess.DEFAULT_THRESHOLDS.min_eye_px else "per_eye"


def eye_px(face: Face) -> float:
    return min(face.eyes[side].width for side in SIDES)


def measured(image: np.ndarray, face: Face) -> dict[Side, assess.EyeMeasurement]:
    return {side: assess.measure_eye(image, face, side) for side in SIDES}


def shrunk(image: np.ndarray, factor: float, quality: int | None) -> np.ndarray:
    small = cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
    if quality is None:
        return small
    buffer = io.BytesIO()
    Image.fromarray(small).save(buffer, "JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("RGB"))


def refound(faces: list[Face], original: Face, factor: float) -> Face | None:
    """The face found in the shrunk photo where ``original`` was, if any."""
    centre = _centre(original) * factor
    best = min(faces, key=lambda f: np.linalg.norm(_centre(f) - centre), default=None)
    if best is None:
        return None
    size = (original.box[2] - original.box[0]) * factor
    close = np.linalg.norm(_centre(best) - centre) < 0.3 * size
    return best if close else None


def _centre(face: Face) -> np.ndarray:
    box = np.asarray(face.box, np.float64)
    return (box[:2] + box[2:]) / 2


def shrink_and_judge(faces: list[LabelledFace], eval_dir: Path, toolkit: EyeToolkit,
                     targets: tuple[float, ...] = TARGET_EYE_PX,
                     source_min_px: float = SOURCE_MIN_EYE_PX) -> tuple[list[Fit], int]:
    fits: list[Fit] = []
    lost = 0
    by_file: dict[str, list[LabelledFace]] = defaultdict(list)
    for lf in faces:
        if lf.truth != "amb" and eye_px(lf.face) >= source_min_px:
            by_file[lf.file].append(lf)
    for file, chosen in by_file.items():
        image = read_photo(eval_dir / file)
        for lf in chosen:
            for target in targets:
                factor = target / eye_px(lf.face)
                for quality in JPEG_QUALITIES:
                    small = shrunk(image, factor, quality)
                    face = refound(toolkit.landmarks.detect(small), lf.face, factor)
                    if face is None:
                        lost += 1
                        continue
                    fits.append(Fit(lf.truth, measured(small, face), quality,
                                    toolkit.blink_scores(face)))
    return fits, lost


def width_bins(targets: tuple[float, ...]) -> list[tuple[float, float]]:
    """Whole-pixel bins covering the targets, one pixel more below (fits measure narrower)."""
    low, high = int(min(targets)) - 1, int(max(targets)) + 1
    return [(float(w), float(w + 1)) for w in range(max(low, 1), high)]


Row = dict[str, float | int | str]


def by_width(fits: list[Fit], bins: list[tuple[float, float]]) -> list[Row]:
    rows: list[Row] = []
    for low, high in bins:
        inside = [f for f in fits if low <= f.eye_px < high]
        opened = [f for f in inside if f.truth == "open"]
        closed = [f for f in inside if f.truth == "closed"]
        openings = np.array([f.wider_opening for f in opened]) if opened else np.array([np.nan])
        rows.append({
            "eye_px": f"{low:g}-{high:g}",
            "open": len(opened), "closed": len(closed),
            "open_read_closed_small": sum(f.reading() == "small" for f in opened),
            "closed_read_closed_small": sum(f.reading() == "small" for f in closed),
            "open_read_closed_per_eye": sum(f.reading() == "per_eye" for f in opened),
            "closed_read_closed_per_eye": sum(f.reading() == "per_eye" for f in closed),
            "open_wider_opening_min": round(float(np.min(openings)), 3),
            "open_wider_opening_p1": round(float(np.percentile(openings, 1)), 3),
        })
    return rows


def real_small_faces(faces: list[LabelledFace], eval_dir: Path,
                     toolkit: EyeToolkit) -> dict[str, int]:
    """The rule on the photos' own faces with eyes under ``min_eye_px``."""
    counts: dict[str, int] = defaultdict(int)
    images: dict[str, np.ndarray] = {}
    for lf in faces:
        if lf.truth == "amb" or eye_px(lf.face) >= assess.DEFAULT_THRESHOLDS.min_eye_px:
            continue
        if lf.file not in images:
            images.clear()
            images[lf.file] = read_photo(eval_dir / lf.file)
        fit = Fit(lf.truth, measured(images[lf.file], lf.face), None,
                  toolkit.blink_scores(lf.face))
        counts[lf.truth] += 1
        counts[f"{lf.truth}_read_closed_small"] += fit.reading() == "small"
    return dict(counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--eval", type=Path,
                        default=Path(__file__).resolve().parents[2] / "shared" / "eval")
    parser.add_argument("--cache", type=Path, help="pickle of detections, reused when present")
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    parser.add_argument("--fits", type=Path, help="also save the shrunk faces' measurements")
    parser.add_argument("--targets", default=",".join(f"{t:g}" for t in TARGET_EYE_PX),
                        help="eye widths (px) to shrink to, comma-separated")
    parser.add_argument("--source-min-eye-px", type=float, default=SOURCE_MIN_EYE_PX,
                        help="only faces whose eyes are at least this wide are shrunk")
    args = parser.parse_args()
    if not (args.eval / "MANIFEST.tsv").exists():
        print(f"no evaluation set at {args.eval} (MANIFEST.tsv missing); nothing to measure")
        if args.json:
            emit_json({"bench": "calibrate_small_eyes", "available": False})
        return
    started = time.perf_counter()
    cv2.setNumThreads(1)
    faces = load_faces(args.eval, args.cache)
    targets = tuple(float(t) for t in args.targets.split(","))
    _, toolkit = default_toolkit()
    fits, lost = shrink_and_judge(faces, args.eval, toolkit, targets, args.source_min_eye_px)
    if args.fits:
        args.fits.write_bytes(pickle.dumps(fits))
    rows = by_width(fits, width_bins(targets))
    by_quality = {str(q): sum(f.truth == "open" and f.reading() != "" for f in fits
                              if f.quality == q) for q in JPEG_QUALITIES}
    real = real_small_faces(faces, args.eval, toolkit)
    print(f"{len(fits)} fits of shrunk faces ({lost} not found again); per measured eye width:")
    print("(read closed by the small-face rule | by the per-eye rules, both eyes >= 10 px)")
    print(f"{'eye px':>8} {'open':>5} {'read closed':>13} {'closed':>6} {'read closed':>13} "
          f"{'open: wider eye min':>19} {'p1':>6}")
    for r in rows:
        print(f"{r['eye_px']:>8} {r['open']:>5} "
              f"{r['open_read_closed_small']:>6} | {r['open_read_closed_per_eye']:<4} "
              f"{r['closed']:>6} {r['closed_read_closed_small']:>6} | "
              f"{r['closed_read_closed_per_eye']:<4} {r['open_wider_opening_min']:>19} "
              f"{r['open_wider_opening_p1']:>6}")
    print(f"open fits read closed (either rule) by JPEG quality: {by_quality}")
    print(f"the photos' own faces with eyes under 10 px: {real}")
    if args.json:
        emit_json({"bench": "calibrate_small_eyes", "available": True, "fits": len(fits),
                   "lost": lost, "by_width": rows, "real_small_faces": real,
                   "open_read_closed_by_quality": by_quality,
                   "seconds": round(time.perf_counter() - started, 1)})


if __name__ == "__main__":
    main()
