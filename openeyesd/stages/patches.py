"""Pixel changes travel between stages as patches: PNG crops of final pixels.

A stage that changes pixels lists ``{"file", "box", "face_index"}`` entries under ``"patches"``
in its artifact. The photo as it stands after any stage is the decoded private copy with the
patches of the stages before it pasted in stage order, so a resumed job rebuilds it exactly.

In memory a change is an ``imageio.Patch`` (box + pixels). Stages work on the shared decoded
frame plus such crops: a 24 MP frame is copied only when an earlier stage changed it and a
later one needs the whole composed photo.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from openeyesd.eyes import quality
from openeyesd.files import atomic_write_with
from openeyesd.imageio import Box, Patch
from openeyesd.stages.base import StageContext
from openeyesd.stages.ingest import load_ingested


def collect_patches(ctx: StageContext) -> list[dict[str, Any]]:
    """Every patch recorded so far, in stage order."""
    patches: list[dict[str, Any]] = []
    for artifact in ctx.artifacts.values():
        patches.extend(artifact.get("patches", []))
    return patches


def load_patches(ctx: StageContext) -> list[Patch]:
    """The recorded patches with their pixels read back, in stage order."""
    loaded = []
    for entry in collect_patches(ctx):
        with Image.open(ctx.path(entry["file"])) as crop:
            pixels = np.asarray(crop.convert("RGB"))
        loaded.append(Patch(tuple(entry["box"]), pixels))  # type: ignore[arg-type]
    return loaded


def current_pixels(ctx: StageContext) -> np.ndarray:
    """The upright photo with every earlier stage's patches applied, **read-only**.

    With no earlier patches this is the decoded frame shared through ``ctx.memo`` itself, not a
    copy: callers must not write into it (numpy refuses), and copy the part they change (see
    ``compose``). With earlier patches it is one composed copy, read-only all the same."""
    pixels = load_ingested(ctx).pixels
    patches = load_patches(ctx)
    if patches:
        pixels = compose_frame(pixels, patches)
    view = pixels.view()
    view.flags.writeable = False
    return view


def compose(base: np.ndarray, box: Box, patches: Iterable[Patch]) -> np.ndarray:
    """A writable copy of ``base`` inside ``box`` with the patches that reach into it pasted
    in order: the changed photo in that box, without composing the whole frame."""
    x0, y0, x1, y1 = box
    out = base[y0:y1, x0:x1].copy()
    for patch in patches:
        px0, py0, px1, py1 = patch.box
        cx0, cy0, cx1, cy1 = max(x0, px0), max(y0, py0), min(x1, px1), min(y1, py1)
        if cx0 < cx1 and cy0 < cy1:
            out[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0] = \
                patch.pixels[cy0 - py0:cy1 - py0, cx0 - px0:cx1 - px0]
    return out


def compose_frame(base: np.ndarray, patches: Sequence[Patch]) -> np.ndarray:
    """The whole changed photo: one full copy, for code that needs the frame as a whole."""
    height, width = base.shape[:2]
    return compose(base, (0, 0, width, height), patches)


def overlaps(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def changed_box(before: np.ndarray, after: np.ndarray, origin: tuple[int, int] = (0, 0)) -> Box:
    """The smallest box around the pixels that differ between two same-sized crops, in photo
    coordinates (``origin`` = the photo position of the crops' top-left pixel)."""
    x0, y0 = origin
    box = quality.changed_box(before, after)
    if box is None:
        return x0, y0, x0, y0
    return x0 + box[0], y0 + box[1], x0 + box[2], y0 + box[3]


def union(boxes: Any) -> Box:
    x0s, y0s, x1s, y1s = zip(*boxes, strict=True)
    return min(x0s), min(y0s), max(x1s), max(y1s)


def save_png(path: Path, pixels: np.ndarray) -> None:
    """Lossless and quick: these are working files, read back once by later stages."""
    atomic_write_with(
        path, lambda handle: Image.fromarray(pixels).save(handle, format="PNG", compress_level=1)
    )


def save_preview(path: Path, pixels: np.ndarray) -> None:
    """For operators' eyes only, never read back: JPEG, which writes a 384 px before/after
    preview in ~3 ms where PNG took ~20 ms, at a sixth of the size."""
    atomic_write_with(
        path, lambda handle: Image.fromarray(pixels).save(handle, format="JPEG", quality=90)
    )


def write_patch(
    ctx: StageContext, stage: str, face_index: int, before: np.ndarray,
    changes: Sequence[Patch], region: Box,
) -> dict[str, Any]:
    """Save the changed part of ``region`` (``before`` with ``changes`` pasted) as this stage's
    patch for one face."""
    x0, y0, x1, y1 = region
    after = compose(before, region, changes)
    bx0, by0, bx1, by1 = changed_box(before[y0:y1, x0:x1], after, (x0, y0))
    path = ctx.stage_dir(stage) / f"face{face_index}.png"
    save_png(path, after[by0 - y0:by1 - y0, bx0 - x0:bx1 - x0])
    return {"face_index": face_index, "box": [bx0, by0, bx1, by1], "file": ctx.relative(path)}
