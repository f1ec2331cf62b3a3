"""What `openeyesctl jobs show` says per face, from the sidecar's face record."""

from __future__ import annotations

from openeyesd.cli import face_row


def test_a_face_fixed_from_one_donor_names_it() -> None:
    face = {"index": 0, "outcome": "fixed", "eyes": {"left": {"state": "closed"},
                                                     "right": {"state": "closed"}},
            "donor": {"kind": "burst", "key": "job:7", "sides": ["left", "right"]},
            "check": {"ok": True, "reason": "eyes read open after the fix; seam not visible"}}
    row = face_row(face)
    assert row == {"index": 0, "outcome": "fixed", "left eye": "closed", "right eye": "closed",
                   "donor": "burst job:7",
                   "check": "eyes read open after the fix; seam not visible"}


def test_a_face_fixed_from_two_donors_says_which_eye_came_from_where() -> None:
    face = {"index": 1, "outcome": "fixed",
            "donor": {"kind": "burst", "key": "job:7", "sides": ["left"]},
            "second_donor": {"kind": "reference", "key": "ref:/refs/anna.jpg",
                             "sides": ["right"]}}
    assert face_row(face)["donor"] == ("burst job:7 (left) + reference ref:/refs/anna.jpg "
                                       "(right)")


def test_no_donor_gives_the_reason() -> None:
    face = {"index": 2, "outcome": "no_donor", "donor": {"outcome": "no_donor",
                                                        "reason": "eyes_closed"}}
    assert face_row(face)["donor"] == "none: eyes_closed"
