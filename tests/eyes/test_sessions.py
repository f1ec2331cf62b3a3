"""Capture times from EXIF written here with Pillow, and bursts grouped from them."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from PIL import Image

from openeyesd.eyes.sessions import (
    CaptureTime,
    FrameRef,
    capture_time,
    group_sessions,
    session_is_quiet,
    session_of,
)

DATE_ORIGINAL, SUBSEC_ORIGINAL, OFFSET_ORIGINAL = 0x9003, 0x9291, 0x9011
DATE_DIGITIZED = 0x9004
MTIME = 1_700_000_000.25


def _jpeg(path: Path, tags: dict[int, str] | None = None) -> Path:
    """A tiny JPEG with the given Exif-IFD tags, and a known mtime far from any EXIF date."""
    exif = Image.Exif()
    ifd = exif.get_ifd(0x8769)
    for tag, value in (tags or {}).items():
        ifd[tag] = value
    Image.new("RGB", (8, 8), (120, 90, 60)).save(path, "JPEG", exif=exif)
    os.utime(path, (MTIME, MTIME))
    return path


def _utc(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()


def test_exif_date_with_subseconds(tmp_path: Path) -> None:
    path = _jpeg(tmp_path / "a.jpg", {DATE_ORIGINAL: "2024:05:01 10:00:00", SUBSEC_ORIGINAL: "372"})
    assert capture_time(path) == CaptureTime(_utc(2024, 5, 1, 10, 0, 0) + 0.372, "exif")


def test_subseconds_are_the_digits_of_a_fraction(tmp_path: Path) -> None:
    # "05" is five hundredths; reading it as an integer of milliseconds would give 0.005.
    path = _jpeg(tmp_path / "a.jpg", {DATE_ORIGINAL: "2024:05:01 10:00:00", SUBSEC_ORIGINAL: "05"})
    assert capture_time(path).timestamp == pytest.approx(_utc(2024, 5, 1, 10) + 0.05, abs=1e-6)


def test_offset_tag_places_the_wall_clock(tmp_path: Path) -> None:
    path = _jpeg(
        tmp_path / "a.jpg",
        {DATE_ORIGINAL: "2024:05:01 10:00:00", SUBSEC_ORIGINAL: "5", OFFSET_ORIGINAL: "+02:00"},
    )
    assert capture_time(path).timestamp == pytest.approx(_utc(2024, 5, 1, 8) + 0.5)


def test_naive_time_read_in_the_given_zone(tmp_path: Path) -> None:
    path = _jpeg(tmp_path / "a.jpg", {DATE_ORIGINAL: "2024:05:01 10:00:00"})
    zone = timezone(timedelta(hours=-5))
    assert capture_time(path, naive_tz=zone).timestamp == _utc(2024, 5, 1, 15)
    assert capture_time(path).timestamp == _utc(2024, 5, 1, 10)


def test_digitized_time_when_original_is_missing(tmp_path: Path) -> None:
    path = _jpeg(tmp_path / "a.jpg", {DATE_DIGITIZED: "2024:05:01 10:00:03"})
    assert capture_time(path) == CaptureTime(_utc(2024, 5, 1, 10, 0, 3), "exif")


@pytest.mark.parametrize(
    "tags",
    [
        None,
        {DATE_ORIGINAL: "0000:00:00 00:00:00"},  # camera clock never set
        {DATE_ORIGINAL: "    :  :     :  :  "},
        {SUBSEC_ORIGINAL: "120"},  # sub-seconds without a date are no time at all
    ],
)
def test_file_time_when_exif_has_no_usable_date(tmp_path: Path, tags: dict[int, str]) -> None:
    assert capture_time(_jpeg(tmp_path / "a.jpg", tags)) == CaptureTime(MTIME, "file")


def test_file_time_for_files_pillow_cannot_read(tmp_path: Path) -> None:
    path = tmp_path / "raw.cr3"
    path.write_bytes(b"not an image Pillow knows")
    os.utime(path, (MTIME, MTIME))
    assert capture_time(path) == CaptureTime(MTIME, "file")


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        capture_time(tmp_path / "gone.jpg")


def _frame(key: str, t: float, folder: str = "shoot", source: str = "exif") -> FrameRef:
    return FrameRef(key, folder, CaptureTime(t, source))  # type: ignore[arg-type]


def test_consecutive_frames_chain_into_one_session() -> None:
    # Single linkage: the ends are 4.5 s apart but no step exceeds the 2 s gap.
    frames = [_frame("d", 4.5), _frame("a", 0.0), _frame("c", 3.0), _frame("b", 1.5)]
    (session,) = group_sessions(frames, gap_s=2.0)
    assert session.keys == ("a", "b", "c", "d")
    assert (session.start, session.end) == (0.0, 4.5)


def test_gap_splits_sessions_and_equal_gap_still_chains() -> None:
    frames = [_frame(k, t) for k, t in [("a", 0.0), ("b", 2.0), ("c", 4.01), ("d", 4.5)]]
    sessions = group_sessions(frames, gap_s=2.0)
    assert [s.keys for s in sessions] == [("a", "b"), ("c", "d")]
    assert session_of(sessions, "d") is sessions[1]
    assert session_of(sessions, "zz") is None


def test_folders_and_clocks_never_share_a_session() -> None:
    frames = [
        _frame("a", 0.0, "studio1"),
        _frame("b", 0.5, "studio2"),
        _frame("c", 1.0, "studio1"),
        _frame("d", 0.7, "studio1", source="file"),  # an upload time, not a camera time
    ]
    sessions = group_sessions(frames, gap_s=5.0)
    assert [(s.folder, s.source, s.keys) for s in sessions] == [
        ("studio1", "exif", ("a", "c")),
        ("studio1", "file", ("d",)),
        ("studio2", "exif", ("b",)),
    ]


def test_grouping_is_independent_of_input_order() -> None:
    frames = [_frame(k, t) for k, t in [("a", 0.0), ("b", 0.0), ("c", 9.0), ("d", 1.0)]]
    expected = group_sessions(frames, gap_s=1.0)
    assert group_sessions(frames[::-1], gap_s=1.0) == expected
    assert [s.keys for s in expected] == [("a", "b", "d"), ("c",)]


def test_bad_input_is_refused() -> None:
    assert group_sessions([], gap_s=1.0) == []
    with pytest.raises(ValueError, match="twice"):
        group_sessions([_frame("a", 0.0), _frame("a", 1.0)], gap_s=1.0)
    with pytest.raises(ValueError, match="gap_s"):
        group_sessions([_frame("a", 0.0)], gap_s=-1.0)


def test_session_is_quiet_after_its_newest_arrival() -> None:
    (session,) = group_sessions([_frame("a", 0.0), _frame("b", 0.4)], gap_s=1.0)
    # Capture times are irrelevant here: arrivals are what tell whether more frames may come.
    arrived = {"a": 1000.0, "b": 1030.0}
    assert not session_is_quiet(session, arrived, now=1040.0, quiet_s=30.0)
    assert session_is_quiet(session, arrived, now=1060.0, quiet_s=30.0)
    with pytest.raises(KeyError, match="b"):
        session_is_quiet(session, {"a": 1000.0}, now=2000.0, quiet_s=30.0)
