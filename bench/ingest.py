"""Seconds from a burst of photos landing in a watched folder until all are queued.

N small, distinct real images (Pillow PNGs) are made once in a staging folder on the same file
system, a ``Watcher`` is started on an empty watched folder, and then the files are moved in
with ``os.rename`` (one rename per file by default, or one rename of the whole folder with
``--drop dir``). The ledger is polled every ~50 ms with ``Ledger.stats()`` until N jobs exist.
The result is printed in seconds and as a multiple of the stability window: the window is the
floor (nothing may be taken before it passes), the rest is the watcher's own cost.

    .venv/bin/python bench/ingest.py [--files 1000] [--window 2.0] [--mode poll] [--json]
    .venv/bin/python bench/ingest.py --profile   # tick() in this thread, under cProfile
"""

from __future__ import annotations

import argparse
import cProfile
import io
import logging
import os
import pstats
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import structlog
from _common import emit_json, filesystem_of
from PIL import Image

from openeyesd.config import Config, WatchFolder, WatchMode, parse_config
from openeyesd.ledger import Ledger, create_ledger_engine, migrate
from openeyesd.watcher import Watcher

POLL_S = 0.05
DEFAULT_POLL_INTERVAL_S = WatchFolder.model_fields["poll_interval_s"].default


@dataclass
class Timeline:
    drop_s: float  # how long the renames took
    first_queued_s: float | None
    all_queued_s: float | None
    queued: int
    threads_left: list[str] = field(default_factory=list)


def make_images(folder: Path, count: int, size: int) -> None:
    """``count`` distinct PNGs (seeded noise, so every file has its own SHA-256)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(7)
    for index in range(count):
        pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"IMG_{index:05d}.png")


def build_config(root: Path, args: argparse.Namespace) -> Config:
    raw: dict[str, Any] = {
        "watch": [{
            "path": str(root / "incoming"),
            "mode": args.mode,
            "stability_window_s": args.window,
            "poll_interval_s": args.poll_interval,
        }],
        "output": {"path": str(root / "outgoing")},
        "state": {"dir": str(root / "state"), "min_free_mb": 1},
        "log": {"format": "console", "level": "warning"},
    }
    config = parse_config(raw, base_dir=root)
    config.watch[0].path.mkdir(parents=True)
    return config


def quiet_logger() -> Any:
    """Warnings and errors to stderr; the per-file info lines would drown the figures."""
    return structlog.wrap_logger(
        structlog.PrintLogger(file=sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        processors=[structlog.processors.add_log_level, structlog.dev.ConsoleRenderer()],
    )


@contextmanager
def open_ledger(config: Config) -> Iterator[Ledger]:
    engine = create_ledger_engine(config.ledger_url, busy_timeout_s=config.ledger.busy_timeout_s)
    try:
        migrate.upgrade(engine)
        yield Ledger(engine)
    finally:
        engine.dispose()


def job_count(ledger: Ledger) -> int:
    return sum(ledger.stats().counts.values())


def wait_attached(watcher: Watcher, timeout_s: float) -> None:
    """Until the startup scan is done and the observer runs: a drop before would be found
    by the scan instead of by events, which is not what we measure."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        health = watcher.folder_health()
        if all(f["attached"] and f["last_scan_at"] is not None for f in health):
            return
        time.sleep(POLL_S)
    raise RuntimeError(f"watcher did not attach within {timeout_s} s: {watcher.folder_health()}")


def drop(staging: Path, target: Path, how: str) -> float:
    """Move the staged files in; returns how long the renames took."""
    started = time.perf_counter()
    if how == "dir":
        os.rename(staging, target / staging.name)
    else:
        for name in sorted(os.listdir(staging)):
            os.rename(staging / name, target / name)
    return time.perf_counter() - started


def follow(ledger: Ledger, files: int, dropped_at: float, timeout_s: float) -> Timeline:
    """Poll the ledger until ``files`` jobs exist (or the timeout); times from ``dropped_at``."""
    first: float | None = None
    queued = 0
    while (elapsed := time.perf_counter() - dropped_at) < timeout_s:
        queued = job_count(ledger)
        if queued and first is None:
            first = elapsed
        if queued >= files:
            return Timeline(0.0, first, elapsed, queued)
        time.sleep(POLL_S)
    return Timeline(0.0, first, None, queued)


def run_threaded(
    config: Config, ledger: Ledger, staging: Path, args: argparse.Namespace
) -> Timeline:
    watcher = Watcher(config, ledger, logger=quiet_logger())
    watcher.start()
    try:
        wait_attached(watcher, timeout_s=30.0)
        dropped_at = time.perf_counter()
        drop_s = drop(staging, config.watch[0].path, args.drop)
        timeline = follow(ledger, args.files, dropped_at, args.timeout)
    finally:
        watcher.stop()
    timeline.drop_s = drop_s
    timeline.threads_left = lingering_threads()
    return timeline


def lingering_threads() -> list[str]:
    """Threads still alive shortly after ``Watcher.stop()`` (there should be none)."""
    deadline = time.monotonic() + 2.0
    while True:
        alive = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(POLL_S)


def run_profiled(config: Config, ledger: Ledger, staging: Path, args: argparse.Namespace) -> None:
    """Drive ``tick`` from this thread under cProfile: the ledger writes happen here (hashing
    runs in the watcher's pool threads, which cProfile does not see)."""
    watcher = Watcher(config, ledger, logger=quiet_logger())
    try:
        watcher.rescan()
        drop(staging, config.watch[0].path, args.drop)
        profiler = cProfile.Profile()
        started = time.perf_counter()
        profiler.enable()
        while job_count(ledger) < args.files and time.perf_counter() - started < args.timeout:
            watcher.tick()
            time.sleep(POLL_S)
        profiler.disable()
    finally:
        watcher.stop()
    print(f"{job_count(ledger)} queued in {time.perf_counter() - started:.2f} s (profiled)")
    for key in ("tottime", "cumulative"):
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).strip_dirs().sort_stats(key).print_stats(args.top)
        print(out.getvalue())


def report(timeline: Timeline, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    window = args.window
    total = timeline.all_queued_s
    multiple = None if total is None or window == 0 else total / window
    print(f"{args.files} PNGs {args.size}x{args.size}, mode={args.mode}"
          f"{f' (poll every {args.poll_interval} s)' if args.mode == 'poll' else ''}, "
          f"drop={args.drop}, stability window {window} s, on {filesystem_of(root)}")
    print(f"renames took {timeline.drop_s * 1000:.0f} ms")
    if timeline.threads_left:
        print(f"WARNING: threads still alive after Watcher.stop(): {timeline.threads_left}")
    if timeline.first_queued_s is not None:
        print(f"first job queued after {timeline.first_queued_s:.2f} s")
    if total is None:
        print(f"NOT all queued after {args.timeout} s: {timeline.queued}/{args.files}")
    else:
        rate = args.files / max(total - (timeline.first_queued_s or 0.0), 1e-9)
        print(f"all {args.files} queued after {total:.2f} s = {multiple:.2f} x the window "
              f"({rate:.0f} files/s once the window had passed)")
    return {
        "files": args.files, "mode": args.mode, "drop": args.drop,
        "poll_interval_s": args.poll_interval if args.mode == "poll" else None,
        "stability_window_s": window, "seconds_to_all_queued": total,
        "multiple_of_window": multiple, "seconds_to_first_queued": timeline.first_queued_s,
        "queued": timeline.queued, "rename_s": timeline.drop_s,
        "threads_left_after_stop": timeline.threads_left,
        "filesystem": filesystem_of(root),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1000, help="images dropped (default 1000)")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    parser.add_argument("--window", type=float, default=2.0, help="stability window s (2.0)")
    parser.add_argument("--mode", choices=[m.value for m in WatchMode], default="inotify")
    parser.add_argument("--poll-interval", type=float, default=DEFAULT_POLL_INTERVAL_S,
                        help=f"poll mode only (default {DEFAULT_POLL_INTERVAL_S}, as in config)")
    parser.add_argument("--drop", choices=["files", "dir"], default="files",
                        help="rename each file in, or the whole folder at once (default files)")
    parser.add_argument("--timeout", type=float, default=120.0, help="give up after (s)")
    parser.add_argument("--dir", type=Path, default=None, help="parent of the temp folder")
    parser.add_argument("--profile", action="store_true", help="cProfile tick() instead")
    parser.add_argument("--top", type=int, default=25, help="rows per profile table")
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="openeyes-ingest-", dir=args.dir))
    try:
        config = build_config(root, args)
        staging = root / "staging" / "session"
        make_images(staging, args.files, args.size)
        with open_ledger(config) as ledger:
            if args.profile:
                run_profiled(config, ledger, staging, args)
                return 0
            timeline = run_threaded(config, ledger, staging, args)
        payload = report(timeline, args, root)
        if args.json:
            emit_json(payload)
        return 0 if timeline.all_queued_s is not None else 1
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
