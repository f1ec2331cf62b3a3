"""End-to-end pipeline time and peak memory on 12 and 24 megapixel JPEGs, against the floor.

For each size the benchmark makes a two-frame burst (once, in a temp folder): a studio-like
canvas (smooth backdrop, fabric texture, sensor noise) with two people (scikit-image's
astronaut, scaled up, the second mirrored), saved as JPEG quality 92 with EXIF orientation 1
and capture times one second apart; in the second frame every eye is painted shut
(``close_eyes``: skin colour over the eye, a lid line, Gaussian softening; the idea of
/tmp/e2e/make.py). Then, per round and per size, each measurement runs in its own
subprocess (so its RSS high-water mark is its own), side by side in one run:

* **floor** - the same decode and encode the pipeline's I/O does: ``imageio.load_rgb`` of the
  closed frame, one changed 8x8 block handed over as a ``Patch``, ``imageio.write_output``
  (which re-reads the original, pastes the changed pixels inside the patch box, encodes with
  the original's tables and decodes the result at 1/8 scale to check it). Also ``io_min``: one
  plain Pillow decode + one Pillow JPEG encode, for scale.
* **pipeline** - the real stages (``pipeline.stages_for(config)``) driven by the real worker
  (``Worker.run_once``) on a fresh state folder with a SQLite ledger, as a running daemon
  meets a burst: the worker first takes the burst partner (open frame: ingest, detect, assess;
  its plan waits for the burst), untimed, then the measured job, the closed frame: ingest →
  detect → assess → plan (donor from the partner's cached analysis) → fix → write. The fix
  takes the donor's eyes from the regions the partner's assess stage left in memory
  (``eyes.donor_regions``). Model loading is outside the timed part.
* **pipeline_cold** - the same with ``eyes.donor_regions_mb = 0``: the fix decodes the donor
  photo, as after a restart of the daemon or when the partner's regions were dropped.

Reported: seconds (median over rounds), ratio pipeline / floor (target <= 2.0), the pipeline
child's peak RSS (whole process, from ``os.wait4``) and the job's own peak above the RSS it
started from (``/proc/self/clear_refs`` + ``VmHWM``), each against the decoded image size
W x H x 3 bytes (target <= 4x). OpenCV runs with one thread (``cv2.setNumThreads(1)``) and
OMP/OpenBLAS with one, in every child, so figures compare across machines of any core count.

    .venv/bin/python bench/pipeline_speed.py [--rounds 3] [--sizes 12mp,24mp] [--json]
    .venv/bin/python bench/pipeline_speed.py --profile 24mp   # cProfile the pipeline child
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import ctypes
import io
import json
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import emit_json, median  # noqa: E402

SIZES: dict[str, tuple[int, int]] = {"12mp": (4000, 3000), "24mp": (6000, 4000)}
JPEG_QUALITY = 92
BURST = "session1"
OPEN_NAME, CLOSED_NAME = "a_open.jpg", "b_closed.jpg"
RATIO_TARGET, MEMORY_TARGET = 2.0, 4.0
CONFIG_TOML = """\
[[watch]]
path = "incoming"
stability_window_s = 0.3
[output]
path = "outgoing"
[state]
dir = "state"
min_free_mb = 1
[eyes]
session_quiet_s = 0
donor_regions_mb = {regions_mb}
[log]
format = "console"
level = "warning"
"""


# -- the photos ---------------------------------------------------------------------------------


def close_eyes(image: np.ndarray, face: Any) -> np.ndarray:
    """Paint every eye of ``face`` shut: skin from below the eye over the eye, a dark lid line
    along the lower lid, then a Gaussian softening over the painted area."""
    out = image.copy()
    for eye in face.eyes.values():
        below = eye.centre + np.array([0, 0.6 * eye.width])
        x, y = int(below[0]), int(below[1])
        skin = out[y - 3:y + 3, x - 3:x + 3].reshape(-1, 3).mean(axis=0)
        mask = np.zeros(out.shape[:2], np.uint8)
        cv2.fillPoly(mask, [eye.contour.astype(np.int32)], 255)
        mask = cv2.dilate(mask, np.ones((5, 5), np.uint8))
        out[mask > 0] = skin.astype(np.uint8)
        cv2.polylines(out, [eye.lower_lid.astype(np.int32)], False, (90, 60, 55), 2)
        soft = cv2.GaussianBlur(out, (0, 0), 2.0)
        region = cv2.dilate(mask, np.ones((9, 9), np.uint8)) > 0
        out[region] = soft[region]
    return out


def astronaut_frames() -> tuple[np.ndarray, np.ndarray]:
    """scikit-image's astronaut (public domain, ships in its wheel), open and painted shut."""
    from skimage import data

    from openeyesd.eyes.landmarks import FaceMeshBackend

    image = np.ascontiguousarray(data.astronaut())
    faces = FaceMeshBackend().detect(image)
    if not faces:
        raise RuntimeError("no face found on skimage.data.astronaut(); cannot build the burst")
    return image, close_eyes(image, faces[0])


def backdrop(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth colour field with a fabric-like mid-frequency texture."""
    coarse = rng.integers(70, 190, size=(height // 400 + 2, width // 400 + 2, 3), dtype=np.uint8)
    field = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.int16)
    weave = rng.normal(0.0, 10.0, size=(height // 6, width // 6, 1)).astype(np.float32)
    field += cv2.resize(weave, (width, height), interpolation=cv2.INTER_LINEAR)[..., None].astype(
        np.int16)
    return np.clip(field, 0, 255).astype(np.uint8)


def add_noise(pixels: np.ndarray, rng: np.random.Generator, sigma: float = 4.0) -> None:
    """Sensor noise, in place, by bands of rows (bounded memory at 24 MP)."""
    for top in range(0, pixels.shape[0], 512):
        band = pixels[top:top + 512]
        noise = rng.standard_normal(band.shape, dtype=np.float32) * sigma
        band[...] = np.clip(band.astype(np.float32) + noise, 0, 255).astype(np.uint8)


def compose(size: tuple[int, int], person: np.ndarray, seed: int) -> np.ndarray:
    """Two people side by side, each 0.6 of the frame height, the second one mirrored."""
    width, height = size
    rng = np.random.default_rng(seed)
    canvas = backdrop(width, height, np.random.default_rng(7))  # same backdrop in every frame
    side = int(0.6 * height)
    tile = cv2.resize(person, (side, side), interpolation=cv2.INTER_CUBIC)
    top, gap = (height - side) // 2, width // 20
    left = width // 2 - side - gap // 2
    canvas[top:top + side, left:left + side] = tile
    canvas[top:top + side, left + side + gap:left + 2 * side + gap] = tile[:, ::-1]
    add_noise(canvas, rng)
    return canvas


def save_jpeg(path: Path, pixels: np.ndarray, when: str) -> None:
    exif = Image.Exif()
    exif[0x0112] = 1  # orientation: upright
    exif[0x8769] = {0x9003: when, 0x9291: "00"}  # DateTimeOriginal, SubSecTimeOriginal
    Image.fromarray(pixels).save(path, quality=JPEG_QUALITY, exif=exif.tobytes())


def make_burst(folder: Path, size: tuple[int, int], frames: tuple[np.ndarray, np.ndarray]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    opened, shut = frames
    save_jpeg(folder / OPEN_NAME, compose(size, opened, seed=1), "2026:11:20 10:00:00")
    save_jpeg(folder / CLOSED_NAME, compose(size, shut, seed=2), "2026:11:20 10:00:01")


# -- one fresh state folder per round -----------------------------------------------------------


def prepare_state(root: Path, burst: Path, regions_mb: float = 128) -> None:
    """config.toml, a migrated ledger, the burst in the watched folder, both frames queued."""
    from openeyesd.config import load_config
    from openeyesd.intake import enqueue_file
    from openeyesd.ledger import Ledger, create_ledger_engine, migrate

    root.mkdir(parents=True)
    (root / "config.toml").write_text(CONFIG_TOML.format(regions_mb=regions_mb))
    target = root / "incoming" / BURST
    target.mkdir(parents=True)
    for name in (OPEN_NAME, CLOSED_NAME):
        shutil.copy2(burst / name, target / name)
    config = load_config(root / "config.toml")
    config.state.dir.mkdir(parents=True, exist_ok=True)
    engine = create_ledger_engine(config.ledger_url)
    migrate.upgrade(engine)
    ledger = Ledger(engine)
    for name in (OPEN_NAME, CLOSED_NAME):  # the open frame first: it is claimed first
        enqueue_file(ledger, target / name, watch_root=root / "incoming",
                     pipeline_version=config.pipeline.version)
    engine.dispose()


# -- children -----------------------------------------------------------------------------------


def _proc_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def reset_peak() -> int:
    """Reset this process's RSS high-water mark to its current RSS; returns that RSS in KiB.
    Without the reset (not permitted), VmHWM includes imports and model loading: reported so."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    return _proc_kib("VmRSS")


def release_freed_heap() -> None:
    """Hand the heap the partner's job freed back to the system (glibc keeps freed blocks
    below its adaptive mmap threshold), so the closed frame's peak is measured from what the
    process really holds: interpreter, libraries, models and the partner's eye regions."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def start_measuring() -> dict[str, int]:
    """The process's peak so far (imports, models), then the mark reset for the job."""
    before = _proc_kib("VmHWM")
    return {"setup_peak_kib": before, "start_kib": reset_peak()}


def child_floor(root: Path) -> dict[str, Any]:
    from openeyesd.config import LimitsConfig
    from openeyesd.imageio import Patch, load_rgb, write_output

    source = root / "incoming" / BURST / CLOSED_NAME
    out = root / "floor" / CLOSED_NAME
    out.parent.mkdir(parents=True, exist_ok=True)
    marks = start_measuring()
    started = time.perf_counter()
    loaded = load_rgb(source, LimitsConfig())
    block = loaded.pixels[:8, :8] ^ 1  # a changed block, so write_output must re-encode
    write_output(source, loaded, out, patches=[Patch((0, 0, 8, 8), block)])
    return {"seconds": time.perf_counter() - started, "peak_kib": _proc_kib("VmHWM"), **marks}


def child_io_min(root: Path) -> dict[str, Any]:
    """One Pillow decode and one Pillow encode with the original's tables: nothing else."""
    source = root / "incoming" / BURST / CLOSED_NAME
    marks = start_measuring()
    started = time.perf_counter()
    with Image.open(source) as image:
        pixels = np.asarray(image.convert("RGB"))
        tables = image.quantization
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", qtables=tables, subsampling=2)
    return {"seconds": time.perf_counter() - started, "peak_kib": _proc_kib("VmHWM"), **marks}


class PeakPerStage:
    """A stage as it is, plus its RSS high-water mark: the mark is reset before ``run`` and
    read after it. Name, version and settings are the stage's own, so input hashes match."""

    def __init__(self, stage: Any, start_kib: list[int], peaks: dict[str, int]) -> None:
        self.stage, self.name, self.version = stage, stage.name, stage.version
        self.start_kib, self.peaks = start_kib, peaks

    def settings(self, config: Any) -> dict[str, Any]:
        return self.stage.settings(config)  # type: ignore[no-any-return]

    def run(self, ctx: Any) -> dict[str, Any]:
        reset_peak()
        try:
            return self.stage.run(ctx)  # type: ignore[no-any-return]
        finally:
            self.peaks[self.name] = _proc_kib("VmHWM") - self.start_kib[0]


def child_worker(root: Path, profile_to: Path | None) -> dict[str, Any]:
    """Build the real stages and worker, run the partner frame's job to its burst wait, then
    time one ``run_once``: the closed frame's job."""
    import structlog

    from openeyesd.config import load_config
    from openeyesd.ledger import Ledger, create_ledger_engine
    from openeyesd.pipeline import stages_for
    from openeyesd.worker import Worker

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    config = load_config(root / "config.toml")
    ledger = Ledger(create_ledger_engine(config.ledger_url))
    start: list[int] = [0]
    peaks: dict[str, int] = {}
    stages = [PeakPerStage(stage, start, peaks) for stage in stages_for(config)]
    worker = Worker(config=config, ledger=ledger, stages=stages)
    partner_started = time.perf_counter()
    if not worker.run_once():
        raise RuntimeError("the partner frame was not claimed")
    partner_s = time.perf_counter() - partner_started
    peaks.clear()
    release_freed_heap()
    profiler = cProfile.Profile() if profile_to else None
    marks = start_measuring()
    start_kib = start[0] = marks["start_kib"]
    started = time.perf_counter()
    if profiler:
        profiler.enable()
    claimed = worker.run_once()
    if profiler:
        profiler.disable()
    seconds = time.perf_counter() - started
    peak_kib = max([_proc_kib("VmHWM"), *(start_kib + p for p in peaks.values())])
    if profiler and profile_to:
        profiler.dump_stats(profile_to)
    jobs = {Path(j.relative_path).name: j for j in ledger.list_jobs(limit=10)}
    closed = jobs[CLOSED_NAME]
    stages = {run.stage: run.duration_s for run in ledger.stage_runs(closed.id)
              if run.duration_s is not None}
    return {"seconds": seconds, "peak_kib": peak_kib, **marks, "claimed": claimed,
            "partner_s": partner_s,
            "states": {n: str(j.state) for n, j in jobs.items()},
            "outcome": closed.outcome, "error": closed.error_message, "stages": stages,
            "stage_peaks_kib": peaks}


def child_main(mode: str, root: Path, profile_to: Path | None) -> None:
    cv2.setNumThreads(1)
    if mode == "floor":
        result = child_floor(root)
    elif mode == "io_min":
        result = child_io_min(root)
    else:
        result = child_worker(root, profile_to)
    print(json.dumps(result, default=str), flush=True)


def run_child(mode: str, root: Path, profile_to: Path | None = None) -> dict[str, Any]:
    """Run this file as a child and return its result. Peaks come from the child's own
    /proc/self/status: ``ru_maxrss`` of a child (``os.wait4``, ``RUSAGE_CHILDREN``) starts
    from the parent's RSS at fork time on Linux, and this parent holds the 24 MP bursts."""
    command = [sys.executable, __file__, "--child", mode, "--root", str(root)]
    if profile_to:
        command += ["--profile-to", str(profile_to)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"child {mode} failed (rc {done.returncode}):\n"
                           f"{(done.stdout + done.stderr)[-3000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    result["process_peak_kib"] = max(result["setup_peak_kib"], result["peak_kib"])
    return result


# -- the parent ---------------------------------------------------------------------------------


def one_round(
    work: Path, burst: Path, label: str, index: int, pipeline_first: bool
) -> dict[str, dict[str, Any]]:
    roots = {"pipeline": work / f"{label}-round{index}",
             "pipeline_cold": work / f"{label}-round{index}-cold"}
    prepare_state(roots["pipeline"], burst)
    prepare_state(roots["pipeline_cold"], burst, regions_mb=0)
    out: dict[str, dict[str, Any]] = {}
    order = (["pipeline", "pipeline_cold", "floor", "io_min"] if pipeline_first
             else ["floor", "io_min", "pipeline_cold", "pipeline"])
    for name in order:
        if name in roots:
            out[name] = run_child("worker", roots[name])
        else:
            out[name] = run_child(name, roots["pipeline"])
    for root in roots.values():
        shutil.rmtree(root, ignore_errors=True)
    return out


def summarise(size: tuple[int, int], rounds: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    decoded_mb = size[0] * size[1] * 3 / 2**20
    pick = {name: [r[name] for r in rounds] for name in rounds[0]}
    secs = {name: median([m["seconds"] for m in runs]) for name, runs in pick.items()}
    pipe = pick["pipeline"]
    peak = max(m["process_peak_kib"] for m in pipe) / 1024
    job_peak = max((m["peak_kib"] - m["start_kib"]) for m in pipe) / 1024
    floor_peak = max(m["process_peak_kib"] for m in pick["floor"]) / 1024
    floor_job = max((m["peak_kib"] - m["start_kib"]) for m in pick["floor"]) / 1024
    stage_names = pipe[0]["stages"].keys()
    return {
        "floor_s": round(secs["floor"], 3), "pipeline_s": round(secs["pipeline"], 3),
        "ratio": round(secs["pipeline"] / secs["floor"], 2),
        "ratio_per_round": [round(p["seconds"] / f["seconds"], 2)
                            for p, f in zip(pick["pipeline"], pick["floor"], strict=True)],
        "ratio_to_io_min": round(secs["pipeline"] / secs["io_min"], 2),
        "io_min_s": round(secs["io_min"], 3),
        "partner_s": round(median([m["partner_s"] for m in pipe]), 3),
        "pipeline_cold_s": round(secs["pipeline_cold"], 3),
        "ratio_cold": round(secs["pipeline_cold"] / secs["floor"], 2),
        "peak_rss_mb": round(peak, 1), "decoded_mb": round(decoded_mb, 1),
        "peak_rss_x_decoded": round(peak / decoded_mb, 2),
        "job_peak_over_start_mb": round(job_peak, 1),
        "job_peak_x_decoded": round(job_peak / decoded_mb, 2),
        "baseline_rss_mb": round(max(m["start_kib"] for m in pipe) / 1024, 1),
        "floor_peak_rss_mb": round(floor_peak, 1), "floor_job_peak_mb": round(floor_job, 1),
        "io_min_job_peak_mb": round(
            max(m["peak_kib"] - m["start_kib"] for m in pick["io_min"]) / 1024, 1),
        "stages_s": {s: round(median([m["stages"].get(s, 0.0) for m in pipe]), 3)
                     for s in stage_names},
        "stages_cold_s": {s: round(median([m["stages"].get(s, 0.0)
                                           for m in pick["pipeline_cold"]]), 3)
                          for s in stage_names},
        "stage_peak_over_start_mb": {
            s: round(max(m["stage_peaks_kib"].get(s, 0) for m in pipe) / 1024, 1)
            for s in stage_names},
        "outcomes": sorted({str(m["outcome"]) for m in pipe}),
        "states": pipe[-1]["states"], "rounds": len(rounds),
        "pipeline_runs_s": [round(m["seconds"], 3) for m in pipe],
        "floor_runs_s": [round(m["seconds"], 3) for m in pick["floor"]],
    }


def print_size(label: str, size: tuple[int, int], s: dict[str, Any]) -> None:
    print(f"\n{label}: {size[0]}x{size[1]}, decoded {s['decoded_mb']} MB; "
          f"{s['rounds']} round(s), medians; closed frame outcome {s['outcomes']}")
    print(f"  floor (load_rgb + write_output)  {s['floor_s']:7.2f} s   runs {s['floor_runs_s']}")
    print(f"  pipeline (closed frame job)      {s['pipeline_s']:7.2f} s   runs "
          f"{s['pipeline_runs_s']}")
    verdict = "met" if s["ratio"] <= RATIO_TARGET else "MISSED"
    print(f"  ratio pipeline / floor           {s['ratio']:7.2f}     target <= {RATIO_TARGET}: "
          f"{verdict}; per round {s['ratio_per_round']}")
    print(f"  one Pillow decode + encode       {s['io_min_s']:7.2f} s   (scale only; job peak "
          f"{s['io_min_job_peak_mb']} MB = {s['io_min_job_peak_mb'] / s['decoded_mb']:.2f} x)")
    print(f"  pipeline, donor decoded (cold)   {s['pipeline_cold_s']:7.2f} s   ratio "
          f"{s['ratio_cold']:.2f}: the donor's eye regions not in memory (after a restart)")
    print(f"  partner frame job (to plan wait) {s['partner_s']:7.2f} s   (not in the ratio)")
    for key, which in (("stages_s", ""), ("stages_cold_s", ", cold")):
        print(f"  stages of the closed frame job{which}: " + ", ".join(
            f"{k} {v:.2f}" for k, v in s[key].items()))
    print("  peak MB above the job's start, per stage: " + ", ".join(
        f"{k} {v:.0f}" for k, v in s["stage_peak_over_start_mb"].items()))
    mem_ok = "met" if s["peak_rss_x_decoded"] <= MEMORY_TARGET else "MISSED"
    job_ok = "met" if s["job_peak_x_decoded"] <= MEMORY_TARGET else "MISSED"
    print(f"  peak RSS, pipeline process       {s['peak_rss_mb']:7.1f} MB = "
          f"{s['peak_rss_x_decoded']:.2f} x decoded   target <= {MEMORY_TARGET}x: {mem_ok}")
    print(f"    of which the job above its start {s['job_peak_over_start_mb']:5.1f} MB = "
          f"{s['job_peak_x_decoded']:.2f} x decoded (start {s['baseline_rss_mb']} MB: "
          f"interpreter, libraries, models): {job_ok}")
    print(f"  peak RSS, floor process          {s['floor_peak_rss_mb']:7.1f} MB "
          f"(job {s['floor_job_peak_mb']} MB)")


def profile(work: Path, burst: Path, label: str, top: int = 30) -> None:
    root = work / f"{label}-profile"
    prepare_state(root, burst)
    stats_path = work / "pipeline.prof"
    result = run_child("worker", root, profile_to=stats_path)
    print(f"\ncProfile of the closed frame job ({label}, outcome {result['outcome']}, "
          f"{result['seconds']:.2f} s under the profiler); stages: "
          + ", ".join(f"{k} {v:.2f}" for k, v in result["stages"].items())
          + "; peak MB above start: "
          + ", ".join(f"{k} {v / 1024:.0f}" for k, v in result["stage_peaks_kib"].items()))
    for key, only in (("cumulative", "openeyesd/"), ("tottime", "")):
        text = io.StringIO()
        pstats.Stats(str(stats_path), stream=text).sort_stats(key).print_stats(only, top)
        title = f"by {key}" + (f", {only} only" if only else "")
        print(f"\n--- {title} ---\n" + text.getvalue().split("\n\n", 1)[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", default="12mp,24mp", help="comma-separated: 12mp, 24mp")
    parser.add_argument("--dir", type=Path, help="parent of the temp folder (default: $TMPDIR)")
    parser.add_argument("--profile", metavar="SIZE", help="cProfile one pipeline job, no timing")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--profile-to", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args.child, args.root, args.profile_to)
        return
    labels = [args.profile] if args.profile else [s.strip() for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="openeyes-speed-", dir=args.dir) as tmp:
        run_all(Path(tmp), labels, args)


def run_all(work: Path, labels: list[str], args: argparse.Namespace) -> None:
    cv2.setNumThreads(1)
    started = time.perf_counter()
    frames = astronaut_frames()
    for label in labels:
        make_burst(work / "burst" / label, SIZES[label], frames)
    print(f"bursts made in {time.perf_counter() - started:.1f} s under {work}; OpenCV, OMP and "
          "OpenBLAS at 1 thread in every child; each measurement in its own subprocess")
    if args.profile:
        profile(work, work / "burst" / args.profile, args.profile)
        return
    rounds: dict[str, list[dict[str, dict[str, Any]]]] = {label: [] for label in labels}
    for index in range(args.rounds):
        for label in labels:  # interleaved; the order inside a round alternates
            rounds[label].append(one_round(work, work / "burst" / label, label, index,
                                           pipeline_first=index % 2 == 1))
    payload: dict[str, Any] = {"bench": "pipeline_speed", "opencv_threads": 1,
                               "cpu_count": os.cpu_count(), "ratio_target": RATIO_TARGET,
                               "memory_target_x_decoded": MEMORY_TARGET}
    for label in labels:
        payload[label] = summarise(SIZES[label], rounds[label])
        print_size(label, SIZES[label], payload[label])
    payload["seconds"] = round(time.perf_counter() - started, 1)
    print(f"\ntotal {payload['seconds']} s")
    if args.json:
        emit_json(payload)


if __name__ == "__main__":
    main()
