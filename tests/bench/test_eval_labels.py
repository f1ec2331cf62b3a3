"""The evaluation's label placement (bench/eval_labels.py): the manifest's words become one
label per detected face, on any folder of the same layout, without a crash or a guess."""

from __future__ import annotations

import numpy as np
import pytest

from bench.eval_labels import (
    AMB,
    CLOSED,
    OPEN,
    PhotoWords,
    labels_for,
    one_row,
    parse_single,
    parse_words,
    place_words,
    split_clauses,
)
from openeyesd.eyes.types import Eye, Face, HeadPose


def _eye(side: str, cx: float, cy: float, opening: float) -> Eye:
    """An eye 20 px wide whose lids stand ``opening`` eye widths apart in the middle."""
    t = np.linspace(0, np.pi, 9)
    upper = np.stack([cx - 10 * np.cos(t), cy - 10 * opening * np.sin(t)], 1)
    lower = np.stack([cx + 10 * np.cos(t[1:-1]), cy + 10 * opening * np.sin(t[1:-1])], 1)
    if side == "left":  # outer corner on the image right
        upper[:, 0], lower[:, 0] = 2 * cx - upper[:, 0], 2 * cx - lower[:, 0]
    brow = np.stack([np.linspace(cx - 10, cx + 10, 5), np.full(5, cy - 15)], 1)
    return Eye(side, np.vstack([upper, lower]), brow)  # type: ignore[arg-type]


def _face(x: float, y: float = 100.0, opening: float = 0.3) -> Face:
    eyes = {"right": _eye("right", x - 20, y, opening), "left": _eye("left", x + 20, y, opening)}
    return Face(box=(x - 40, y - 40, x + 40, y + 60), score=0.9, eyes=eyes,  # type: ignore[arg-type]
                pose=HeadPose(0, 0, 0), landmarks=np.zeros((0, 2)), backend="test")


def _row(eyes: str, n_faces: str, name: str = "held/new_photo.jpg") -> dict[str, str]:
    return {"local_file": name, "eyes": eyes, "n_faces": n_faces}


@pytest.mark.parametrize(("text", "label"), [
    ("open", OPEN),
    ("closed (both)", CLOSED),
    ("one eye closed (wink, subject right eye)", ("closed", "open")),
    ("one eye closed/squinting (subject left eye)", ("amb", "closed")),
    ("half-closed (mid-blink)", AMB),
    ("eyes shut tight", None),  # no rule: the caller leaves the face out, nothing raises
])
def test_one_face_words(text: str, label: tuple[str, str] | None) -> None:
    assert parse_single(text) == label


def test_clauses_split_outside_parentheses_only() -> None:
    assert split_clauses("open (2 narrow/half-open; people re-ordered), x; y") == [
        "open (2 narrow/half-open; people re-ordered)", "x", "y"]


def test_words_of_the_kinds_the_manifest_uses() -> None:
    w = parse_words("4th from left closed (smiling); others open")
    assert (w.default, w.placed, w.counted) == (OPEN, [("4 from left", CLOSED)], [])
    w = parse_words("2 of 3 closed (left woman, right man); middle open")
    assert w.placed == [("left", CLOSED), ("right", CLOSED), ("middle", OPEN)]
    assert parse_words("3 closed, 1 half-open").counted == [(3, CLOSED), (1, AMB)]
    w = parse_words("open (2 narrow/half-open; people re-ordered)")
    assert (w.default, w.counted) == (OPEN, [(2, AMB)])
    assert parse_words("mostly open; 1-2 ambiguous (glare)").counted == [(2, AMB)]
    assert parse_words("mostly open; some squinting/occluded").doubtful
    w = parse_words("open; Biden narrow-eyed smile (hard negative)")
    assert (w.default, w.counted, w.doubtful) == (OPEN, [], False)
    # A position that needs the vertical is counted, not guessed.
    assert parse_words("bottom-right woman closed; others open").placed == [("?", CLOSED)]


def test_positions_place_faces_left_to_right() -> None:
    faces = [_face(x) for x in (500, 100, 300)]
    labels, by_count = place_words(parse_words("right man closed; others open"), faces, 3)
    assert labels == [CLOSED, OPEN, OPEN] and by_count == 0


def test_positions_are_counted_when_the_faces_found_differ_from_the_manifest() -> None:
    faces = [_face(100, opening=0.05), _face(300), _face(500), _face(700)]
    labels, by_count = place_words(parse_words("right man closed; others open"), faces, 3)
    assert labels == [CLOSED, OPEN, OPEN, OPEN] and by_count == 1  # the most shut face


def test_positions_in_a_group_of_rows_are_counted() -> None:
    faces = [_face(100, 100), _face(300, 400, opening=0.05), _face(500, 100)]
    assert not one_row(faces) and one_row([faces[0], faces[2]])
    labels, by_count = place_words(parse_words("middle man closed; others open"), faces, 3)
    assert labels == [OPEN, CLOSED, OPEN] and by_count == 1


def test_counts_go_to_the_most_shut_faces_and_doubt_makes_the_rest_ambiguous() -> None:
    faces = [_face(100, opening=0.3), _face(300, opening=0.02), _face(500, opening=0.1)]
    labels, _ = place_words(parse_words("1 closed, 1 half-open; rest open"), faces, 3)
    assert labels == [OPEN, CLOSED, AMB]
    labels, _ = place_words(PhotoWords(default=OPEN, doubtful=True), faces, 3)
    assert labels == [AMB, AMB, AMB]
    labels, _ = place_words(parse_words("mostly open"), faces, 3)  # how many are not: unknown
    assert labels == [AMB, AMB, AMB]


def test_the_hand_made_table_applies_only_to_the_photo_and_words_it_was_made_for() -> None:
    faces = [_face(x) for x in (100, 300, 500)]
    mine = _row("right man closed; others open", "3", "pairs/P06_a__x.jpg")
    assert labels_for(mine, faces, (600, 400)).how == "table"
    other_words = dict(mine, eyes="all open")
    placed = labels_for(other_words, faces, (600, 400))
    assert (placed.how, placed.labels) == ("words", [OPEN, OPEN, OPEN])


def test_words_no_rule_understands_leave_the_photo_out() -> None:
    faces = [_face(100), _face(300)]
    placed = labels_for(_row("see the photographer's notes", "2"), faces, (600, 400))
    assert (placed.how, placed.labels) == ("not understood", [AMB, AMB])
    single = labels_for(_row("eyes shut tight", "1"), faces[:1], (600, 400))
    assert (single.how, single.labels) == ("not understood", [AMB])
