"""Bursts: which frames were shot moments apart, so one can lend its open eyes to another.

A *session* is a run of frames from the same folder whose capture times follow each other with
no gap longer than ``gap_s`` (single linkage on time: a 10-frame burst at 0.3 s intervals is one
session even though its ends are 3 s apart). Capture time comes from the camera's EXIF clock where
there is one and from the file's modification time otherwise; the two clocks are never chained
together (see :func:`group_sessions`).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from pathlib import Path
from typing import Literal

from PIL import Image

TimeSource = Literal["exif", "file"]

_EXIF_IFD = 0x8769
# (date/time, sub-second, UTC offset) tags, preferred first. DateTimeDigitized is the same instant
# as DateTimeOriginal on every digital camera; it is only a second chance when Original is absent.
_TIME_TAGS: tuple[tuple[int, int, int], ...] = (
    (0x9003, 0x9291, 0x9011),  # DateTimeOriginal, SubSecTimeOriginal, OffsetTimeOriginal
    (0x9004, 0x9292, 0x9012),  # DateTimeDigitized, SubSecTimeDigitized, OffsetTimeDigitized
)
_EXIF_FORMAT = "%Y:%m:%d %H:%M:%S"

#: A suggested ``gap_s`` for :func:`group_sessions`. Camera bursts are 0.1–1 s apart, but the
#: poses of one group series come 6–16 s apart (the eval set's P09 series: 6.3, 15.7, 13.3 s),
#: and those are the frames where a blinker has open eyes. A larger session only costs matching
#: time; identity and position decide who can lend eyes to whom.
DEFAULT_GAP_S = 20.0


@dataclass(frozen=True)
class CaptureTime:
    #: POSIX seconds.
    timestamp: float
    #: "exif": the camera's clock; "file": the file's mtime (upload or copy time, a weak proxy).
    source: TimeSource


def capture_time(path: str | os.PathLike[str], naive_tz: tzinfo = UTC) -> CaptureTime:
    """When the photo was taken: EXIF DateTimeOriginal + SubSecTimeOriginal (+ OffsetTimeOriginal).

    Without an offset tag the camera's wall clock is read in ``naive_tz``. Only differences
    between frames of one camera matter for bursts, so UTC is a deterministic default; pass the
    studio's zone when EXIF times must be compared with file times. Files Pillow cannot open
    (RAW, damaged) and photos without a usable date fall back to the file's mtime. A missing file
    raises ``FileNotFoundError``: that is the caller's problem, not a missing timestamp.
    """
    path = Path(path)
    mtime = path.stat().st_mtime
    try:
        with Image.open(path) as img:
            exif_ifd = img.getexif().get_ifd(_EXIF_IFD)
    except (OSError, SyntaxError, ValueError):
        # OSError covers UnidentifiedImageError; a corrupt EXIF block raises SyntaxError or
        # ValueError inside Pillow's TIFF parser. The photo still has a time: its mtime.
        return CaptureTime(mtime, "file")
    for date_tag, subsec_tag, offset_tag in _TIME_TAGS:
        stamp = _exif_timestamp(
            exif_ifd.get(date_tag), exif_ifd.get(subsec_tag), exif_ifd.get(offset_tag), naive_tz
        )
        if stamp is not None:
            return CaptureTime(stamp, "exif")
    return CaptureTime(mtime, "file")


def _exif_timestamp(date: object, subsec: object, offset: object, naive_tz: tzinfo) -> float | None:
    """POSIX seconds from EXIF strings, or None when the date is absent or unparseable.

    Cameras write blanks or "0000:00:00 00:00:00" when the clock was never set; some pad with
    NULs. SubSecTime is the *digits* of the fraction ("05" is 0.05 s, not 0.5 s or 5 ms).
    """
    text = _exif_text(date)
    if not text:
        return None
    try:
        when = datetime.strptime(text[:19], _EXIF_FORMAT)
    except ValueError:
        return None
    when = when.replace(tzinfo=_parse_offset(_exif_text(offset)) or naive_tz)
    digits = "".join(ch for ch in _exif_text(subsec) if ch.isdigit())
    fraction = int(digits) / 10 ** len(digits) if digits else 0.0
    return when.timestamp() + fraction


def _exif_text(value: object) -> str:
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return str(value).strip("\x00 ").strip() if value is not None else ""


def _parse_offset(text: str) -> tzinfo | None:
    """ "+02:00" / "-05:30" → a fixed zone; anything else (blank, "   :  ") → None."""
    if len(text) != 6 or text[0] not in "+-" or text[3] != ":":
        return None
    try:
        hours, minutes = int(text[1:3]), int(text[4:6])
    except ValueError:
        return None
    if hours > 14 or minutes >= 60:
        return None
    sign = 1 if text[0] == "+" else -1
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


@dataclass(frozen=True)
class FrameRef:
    #: The caller's identifier of the frame (a job id, a path): returned untouched.
    key: str
    #: Frames of different folders never share a session (different shoots, different studios).
    folder: str
    captured: CaptureTime


@dataclass(frozen=True)
class Session:
    folder: str
    source: TimeSource
    #: Sorted by capture time (ties by key, so the order never depends on the input order).
    frames: tuple[FrameRef, ...]

    @property
    def start(self) -> float:
        return self.frames[0].captured.timestamp

    @property
    def end(self) -> float:
        return self.frames[-1].captured.timestamp

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(f.key for f in self.frames)

    def __contains__(self, key: object) -> bool:
        return any(f.key == key for f in self.frames)


def group_sessions(frames: Iterable[FrameRef], gap_s: float) -> list[Session]:
    """Chain frames into sessions: same folder, same clock, consecutive times ≤ ``gap_s`` apart.

    EXIF times and file mtimes are kept apart: a camera clock and an upload time are unrelated,
    and a folder copied in one go has all its mtimes within a second, so chaining across the two
    would merge a blink with any frame that happened to be copied alongside it. Sessions come back
    ordered by folder, then clock, then start time. A key given twice is an error.
    """
    if gap_s < 0:
        raise ValueError(f"gap_s must be >= 0, got {gap_s}")
    groups: dict[tuple[str, TimeSource], list[FrameRef]] = {}
    seen: set[str] = set()
    for frame in frames:
        if frame.key in seen:
            raise ValueError(f"frame key {frame.key!r} given twice")
        seen.add(frame.key)
        groups.setdefault((frame.folder, frame.captured.source), []).append(frame)
    sessions: list[Session] = []
    for (folder, source), members in sorted(groups.items()):
        members.sort(key=lambda f: (f.captured.timestamp, f.key))
        run = [members[0]]
        for prev, frame in itertools.pairwise(members):
            if frame.captured.timestamp - prev.captured.timestamp > gap_s:
                sessions.append(Session(folder, source, tuple(run)))
                run = []
            run.append(frame)
        sessions.append(Session(folder, source, tuple(run)))
    return sessions


def session_of(sessions: Sequence[Session], key: str) -> Session | None:
    """The session holding frame ``key``, or None."""
    return next((s for s in sessions if key in s), None)


def session_is_quiet(
    session: Session, arrived: Mapping[str, float], now: float, quiet_s: float
) -> bool:
    """Whether the session can no longer grow: its newest frame *arrived* ≥ ``quiet_s`` ago.

    Arrival (when the file appeared in the watched folder, as the caller recorded it) is what
    matters, not capture time: a burst uploaded an hour after the shoot still trickles in frame by
    frame, and a frame still on its way could be the only open-eyed donor. ``arrived`` maps frame
    keys to POSIX arrival times; every frame of the session must be in it.
    """
    missing = [k for k in session.keys if k not in arrived]
    if missing:
        raise KeyError(f"no arrival time for frames {missing}")
    return now - max(arrived[k] for k in session.keys) >= quiet_s
