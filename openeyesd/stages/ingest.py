"""ingest: take a private copy of the original, then prove it is an image we can handle.

The copy comes first so the NAS may move or delete its file as soon as we have it; every later
stage reads the copy, never the watched folder. The decode check is complete (every pixel), so
a truncated file fails here, with its reason, and not halfway through the eye stages.
"""

from __future__ import annotations

import errno
import os
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from openeyesd.config import Config
from openeyesd.errors import (
    DiskFull,
    DuplicateImage,
    NotAnImage,
    SourceBusy,
    SourceMissing,
    SourcePermissionDenied,
    UnsafePath,
)
from openeyesd.eyes.sessions import capture_time
from openeyesd.files import atomic_copy
from openeyesd.imageio import LoadedImage, load_rgb
from openeyesd.stages.base import Artifact, StageContext

#: Key under which the decoded photo is shared with later stages of the same run.
IMAGE_MEMO = "image"


class IngestStage:
    name = "ingest"
    version = "2"

    def settings(self, config: Config) -> dict[str, Any]:
        return {"limits": config.limits.model_dump(mode="json")}

    def run(self, ctx: StageContext) -> Artifact:
        source = Path(ctx.job.source_path)
        copy_path = ctx.stage_dir(self.name) / f"original{source.suffix.lower()}"
        sha256 = _private_copy(source, Path(ctx.job.watch_root), copy_path)
        if sha256 != ctx.job.sha256:
            _adopt_real_hash(ctx, sha256)
        loaded = load_rgb(copy_path, ctx.config.limits)
        ctx.memo[IMAGE_MEMO] = loaded
        captured = capture_time(copy_path)  # the copy keeps the original's mtime
        if ctx.ledger is not None:
            ctx.ledger.record_capture_time(
                datetime.fromtimestamp(captured.timestamp, UTC), captured.source
            )
        return {
            "captured_at": datetime.fromtimestamp(captured.timestamp, UTC).isoformat(),
            "capture_time_source": captured.source,
            "original": ctx.relative(copy_path),
            "sha256": sha256,
            "size_bytes": copy_path.stat().st_size,
            "image": describe_image(loaded),
            "notes": list(loaded.notes),
            "files": [ctx.relative(copy_path)],
        }


def describe_image(loaded: LoadedImage) -> dict[str, Any]:
    info = loaded.info
    return {
        "format": info.format,
        "width": info.width,
        "height": info.height,
        "mode": info.mode,
        "orientation": info.orientation,
        "frames": info.n_frames,
        "has_exif": info.exif is not None,
        "has_icc_profile": info.icc_profile is not None,
    }


def load_ingested(ctx: StageContext) -> LoadedImage:
    """The decoded private copy: from this run's memo, or decoded again after a resume."""
    if IMAGE_MEMO not in ctx.memo:
        original = ctx.path(ctx.artifact("ingest")["original"])
        ctx.memo[IMAGE_MEMO] = load_rgb(original, ctx.config.limits)
    return ctx.memo[IMAGE_MEMO]


def _refuse_unsafe_path(source: Path, fd: int, watch_root: Path) -> None:
    """A symlink may point anywhere the daemon can read; only follow it inside the folder the
    studio shares with us. The check is made on the file actually opened (/proc/self/fd), so
    swapping the file for a link after the watcher looked at it does not get around it, and
    nothing is read from a file that leads outside."""
    real = Path(os.readlink(f"/proc/self/fd/{fd}"))
    root = Path(os.path.realpath(watch_root))
    if not real.is_relative_to(root):
        raise UnsafePath(
            f"{source} leads outside the watched folder {root} (to {real}); it was not read. "
            "Copy the photo into the watched folder instead of linking to it."
        )
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        raise NotAnImage(f"{source} is not a regular file (a pipe, device or folder)")


def _private_copy(source: Path, watch_root: Path, target: Path) -> str:
    """Copy the original and keep its timestamps (the output inherits them from the copy).
    O_NONBLOCK: a FIFO named like a photo must not hang the worker."""
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as handle:
            _refuse_unsafe_path(source, fd, watch_root)
            opened = os.fstat(fd)
            sha256 = atomic_copy(handle, target)
        os.utime(target, ns=(opened.st_atime_ns, opened.st_mtime_ns))
        return sha256
    except FileNotFoundError:
        raise SourceMissing(
            f"{source} was removed before it could be copied; drop it again to process it"
        ) from None
    except PermissionError:
        raise SourcePermissionDenied(
            f"cannot read {source}: permission denied. Let the openeyes service user read it "
            "(e.g. chmod o+r or add the user to the share's group), then run "
            "`openeyesctl retry ID`"
        ) from None
    except IsADirectoryError:
        raise SourceMissing(f"{source} is now a directory, not a photo") from None
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise DiskFull(f"no space left to copy {source} into the state folder") from None
        raise SourceBusy(f"could not read {source} now ({exc.strerror}); will retry") from None


def _adopt_real_hash(ctx: StageContext, sha256: str) -> None:
    """The job was queued under a placeholder identity (unreadable at the time) or the file
    changed after it was queued: the content we copied is what this job now processes."""
    twin = ctx.job_ledger().adopt_content_hash(sha256)
    if twin is not None:
        raise DuplicateImage(twin)
