"""Small helpers shared by the benchmarks: where the data lives and how results are printed."""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path
from typing import Any


def filesystem_of(path: Path) -> str:
    """File-system type and device of the mount holding ``path`` (from /proc/self/mounts)."""
    target = os.path.realpath(path)
    best = ("", "unknown", "unknown")
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return "unknown"
    for line in lines:
        device, mount_point, fs_type, *_ = line.split()
        inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) > len(best[0]):
            best = (mount_point, fs_type, device)
    return f"{best[1]} ({best[2]} on {best[0]})"


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def emit_json(payload: dict[str, Any]) -> None:
    """Exactly one JSON object, on the last line of stdout."""
    print(json.dumps(payload, sort_keys=True, default=str), flush=True)
