"""The small-face evidence script's bookkeeping, on hand-made measurements (no eval photos)."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from bench.calibrate_small_eyes import Fit, by_width, main, refound, shrunk, width_bins
from openeyesd.eyes.assess import EyeMeasurement
from openeyesd.eyes.types import Side


def _eye(side: Side, width: float, opening: float) -> EyeMeasurement:
    return EyeMeasurement(side=side, width_px=width, yaw=0.0, opening=opening,
                          iris_visible=0.5, contrast=0.4, outside=0.0)


def _fit(truth: str, right: tuple[float, float], left: tuple[float, float],
         quality: int | None = None) -> Fit:
    return Fit(truth, {"right": _eye("right", *right), "left": _eye("left", *left)}, quality)


def test_reading_says_which_rule_read_the_face_closed() -> None:
    assert _fit("closed", (8.0, 0.0), (8.2, 0.0)).reading() == "small"
    assert _fit("open", (8.0, 0.0), (8.2, 0.04)).reading() == ""
    # Both eyes 10 px or more: the per-eye rules judge them, and that is counted apart ...
    assert _fit("open", (12.0, 0.2), (11.0, 0.05)).reading() == "per_eye"
    assert _fit("open", (12.0, 0.2), (11.0, 0.30)).reading() == ""
    # ... but with one eye under 10 px the other is not judged alone.
    assert _fit("open", (9.0, 0.2), (11.0, 0.05)).reading() == ""
    # With eyeBlink, as the pipeline judges: a judgeable eye it closes counts as per-eye too.
    blinked = Fit("open", _fit("open", (12.0, 0.2), (12.0, 0.2)).measures, None,
                  {"right": 0.9, "left": 0.1})
    assert blinked.reading() == "per_eye"
    assert Fit("open", blinked.measures, None, {"right": 0.1, "left": 0.1}).reading() == ""


def test_rows_count_each_rule_per_measured_width() -> None:
    fits = [_fit("closed", (7.5, 0.0), (7.9, 0.0)), _fit("closed", (7.2, 0.05), (7.4, 0.02)),
            _fit("open", (7.1, 0.06), (7.3, 0.1)), _fit("open", (10.5, 0.3), (10.4, 0.05), 40)]
    assert width_bins((6.5, 9.5)) == [(5.0, 6.0), (6.0, 7.0), (7.0, 8.0), (8.0, 9.0), (9.0, 10.0)]
    bins = width_bins((6.5, 10.5))
    rows = {row["eye_px"]: row for row in by_width(fits, bins)}
    assert rows["7-8"]["closed"] == 2 and rows["7-8"]["closed_read_closed_small"] == 1
    assert rows["7-8"]["open"] == 1 and rows["7-8"]["open_read_closed_small"] == 0
    assert rows["7-8"]["open_wider_opening_min"] == pytest.approx(0.1)
    assert rows["10-11"]["open_read_closed_per_eye"] == 1
    assert rows["5-6"]["open"] == 0


@dataclass
class _Boxed:
    """All of a Face that ``refound`` reads."""

    box: tuple[float, float, float, float]


def test_a_shrunk_face_is_found_again_only_where_it_was() -> None:
    original = _Boxed((100.0, 100.0, 200.0, 200.0))
    near, far = _Boxed((49.0, 52.0, 99.0, 101.0)), _Boxed((150.0, 150.0, 200.0, 200.0))
    assert refound([far, near], original, 0.5) is near  # type: ignore[arg-type]
    assert refound([far], original, 0.5) is None  # type: ignore[arg-type]
    assert refound([], original, 0.5) is None  # type: ignore[arg-type]


def test_shrunk_copy_has_the_asked_size_and_is_re_encoded() -> None:
    image = np.random.default_rng(3).integers(0, 255, (100, 80, 3), np.uint8)
    plain, jpeg = shrunk(image, 0.5, None), shrunk(image, 0.5, 40)
    assert plain.shape == jpeg.shape == (50, 40, 3)
    assert not np.array_equal(plain, jpeg)


def test_without_the_set_it_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "argv", ["calibrate_small_eyes.py", "--eval", str(tmp_path), "--json"])
    main()
    lines = capsys.readouterr().out.strip().splitlines()
    assert "no evaluation set" in lines[0]
    assert json.loads(lines[-1]) == {"available": False, "bench": "calibrate_small_eyes"}
