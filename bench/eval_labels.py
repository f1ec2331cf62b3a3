"""The evaluation manifest's human labels, placed onto the faces the product detected.

The manifest (``MANIFEST.tsv``) labels eyes in words, one ``eyes`` cell per photo: "closed
(both)", "one eye closed (left), other open", "4th from left closed (smiling); others open",
"3 closed, 1 half-open". The evaluation scripts need one label per detected face, per eye:
(subject's right, subject's left), each "open", "closed" or "amb" (half-closed, squinting, not
judgeable: left out of precision and recall, counted on their own).

How a photo's words become face labels, in this order:

1. **The hand-made table** (``MULTI``): multi-face photos of ``../shared/eval`` whose words were
   placed once, by looking at the photos, onto face-centre positions. An entry applies only to
   the file it names *and* the words it was made from, so another folder of the same layout
   (``--data``, e.g. the held-back set) is never labelled from a table made for this one.
2. **One labelled face** (``n_faces`` 1): the biggest detected face gets the words' label
   (``parse_single``), any other face "amb".
3. **Any other photo: the words themselves** (``parse_words``), split into clauses:
   * a whole-photo clause: "open", "all 4 closed", "others open", "rest open", "mostly open";
   * placed clauses: "right man closed", "4th from left closed", "2 of 3 closed (left woman,
     right man)", placed on the faces sorted left to right, only when as many faces were
     detected as the manifest counts and they stand in one row (else they are counted, below);
   * counted clauses: "3 closed", "1 half-open", "1-2 ambiguous" (the upper bound), and placed
     clauses that cannot be placed ("bottom-right woman", a name). Counted faces are matched to
     the faces left over by measured lid opening: the most shut get the "closed" counts, the
     next the "amb" counts. That is an assumption (the product's own measurement picks which
     face the words mean) and the report says how many faces were placed that way.
   * an unknown number of doubtful faces ("some squinting", "not every eye judgeable",
     "mostly open" with no count) makes every face of the photo not otherwise placed "amb".
   Words none of these rules understand make the photo's faces "amb", and the report lists
   them: never a crash, never a guess.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from openeyesd.eyes import assess
from openeyesd.eyes.types import Face

#: Per-eye label: "open", "closed", "amb" (half-closed, squinting, not judgeable).
EyeLabels = tuple[str, str]  # (subject's right, subject's left)
OPEN, CLOSED, AMB = ("open", "open"), ("closed", "closed"), ("amb", "amb")

#: Multi-face photos of ../shared/eval: (substring of the file name, the manifest's words the
#: entry was made from, default label, [(cx, cy, label)]) with face centres as fractions of the
#: (upright) image size, read off the photos.
MULTI: list[tuple[str, str, EyeLabels, list[tuple[float, float, EyeLabels]]]] = [
    ("P04_closed", "2 of 3 closed (left woman, right man); middle open",
     OPEN, [(0.25, 0.43, CLOSED), (0.78, 0.35, CLOSED)]),
    ("P05_a", "4th from left closed (smiling); others open", OPEN, [(0.56, 0.21, CLOSED)]),
    ("P05_b", "all open", OPEN, []),
    ("P06_a", "right man closed; others open", OPEN, [(0.85, 0.40, CLOSED)]),
    ("P06_b", "left man (cap) closed; others open", OPEN, [(0.19, 0.34, CLOSED)]),
    ("P07_closed", "all 4 closed", CLOSED, []),
    ("P07_open", "all open", OPEN, []),
    ("P08_a", "bottom-right woman closed (laughing); others open/looking sideways",
     OPEN, [(0.66, 0.31, CLOSED)]),
    ("P08_b", "all open", OPEN, []),
    ("P09_111000", "all open", OPEN, []),
    ("P09_111007", "3 closed, 1 half-open", CLOSED, [(0.22, 0.49, AMB)]),
    ("P09_111022", "2 closed, 1 half-closed, 1 open (glasses)",
     AMB, [(0.22, 0.45, CLOSED), (0.38, 0.43, CLOSED), (0.54, 0.44, OPEN), (0.78, 0.39, AMB)]),
    # "open (2 narrow/half-open)": the smiling man and the man in the blue hoodie, whose lids
    # hang half way; "half-open" is ambiguous here as in P09_111007.
    ("P09_111035", "open (2 narrow/half-open; people re-ordered)",
     OPEN, [(0.34, 0.42, AMB), (0.70, 0.46, AMB)]),
    ("selfie-many-people", "open (all visible faces)", OPEN, []),
    ("two_people", "open", OPEN, []),
    ("obama_and_biden", "open; Biden narrow-eyed smile (hard negative)", OPEN, []),
    ("kit_with_rose", "open", OPEN, []),
    ("2007_007763", "mostly open (faces ~40 px, not every eye judgeable)", OPEN, []),
    ("2008_002079", "mostly open; 1 possibly closed/squinting (faces ~40-50 px)",
     OPEN, [(0.28, 0.40, AMB), (0.73, 0.40, AMB)]),
    ("2008_002470", "open (faces ~40-50 px)", OPEN, []),
    ("2008_004176", "mostly open (faces ~37 px, blurry; not every eye judgeable)", OPEN, []),
    ("2008_007676", "1 closed (centre, lace top), 1 squinting; rest open",
     OPEN, [(0.43, 0.41, CLOSED), (0.49, 0.23, AMB)]),
    ("pexels-photo-93490", "mostly open; some squinting/occluded", OPEN, []),
    ("image10", "mostly open; 1-2 ambiguous (glasses glare, small faces)",
     OPEN, [(0.24, 0.26, AMB), (0.86, 0.28, AMB)]),
    ("Hurricane", "open", OPEN, []),
]
_MATCH_RADIUS = 0.04  # of the image size; faces in these photos are further apart than that
#: Faces whose centres lie within this many face heights of the median centre stand in one row.
ROW_TOLERANCE = 0.75


@dataclass(frozen=True)
class PlacedLabels:
    """One label per detected face, and how they were placed (for the report)."""

    labels: list[EyeLabels]
    #: "table", "one face", "words", or "not understood".
    how: str
    #: Faces whose label came from a count matched by lid opening (see the module docstring).
    by_count: int = 0


def parse_single(text: str) -> EyeLabels | None:
    """The words for a one-face photo as per-eye labels; None when no rule understands them."""
    t = text.lower().strip()
    if t.startswith("open"):
        return OPEN
    if re.match(r"(nearly closed|half-closed|near-closed|half-open)", t):
        return AMB
    wink = re.match(r"one eye closed(/squinting)? \((wink, )?(subject )?(right|left)", t)
    if wink:
        other = "amb" if wink.group(1) else "open"  # "closed/squinting": other eye half shut
        return ("closed", other) if wink.group(4) == "right" else (other, "closed")
    if t.startswith("closed"):
        return CLOSED
    return clause_state(t)


_DOUBT = re.compile(r"half|squint|narrow|ambiguous|possibly|nearly|near-closed|mid-blink|"
                    r"occluded|judgeable")


def clause_state(text: str) -> EyeLabels | None:
    """The label one clause states, or None for a clause that states none ("blurry")."""
    t = text.lower()
    if "hard negative" in t:  # a face that looks shut but is open, listed to be kept open
        return OPEN
    if _DOUBT.search(t):
        return AMB
    if re.search(r"\bclosed\b|\bblink", t):
        return CLOSED
    if re.search(r"\bopen\b", t):
        return OPEN
    return None


def split_clauses(text: str) -> list[str]:
    """``text`` split at ';' and ',' outside parentheses."""
    clauses, depth, current = [], 0, []
    for char in text:
        depth += (char == "(") - (char == ")")
        if char in ";," and depth == 0:
            clauses.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    clauses.append("".join(current).strip())
    return [c for c in clauses if c]


def _outside_and_inside(clause: str) -> tuple[str, str]:
    inside = " ; ".join(re.findall(r"\(([^()]*)\)", clause))
    return re.sub(r"\([^()]*\)", " ", clause).strip().lower(), inside.lower()


_POSITION = re.compile(
    r"\b(\d+)(?:st|nd|rd|th) from (left|right)\b|\b(?:top|bottom|upper|lower)[- ](?:left|right)\b"
    r"|\b(left|right|middle|centre|center)\b")


def positions_in(text: str) -> list[str]:
    """Horizontal positions named in ``text``: "left", "right", "middle", "3 from left"; a
    position that also needs the vertical ("bottom-right") comes back as "?"."""
    out = []
    for m in _POSITION.finditer(text):
        if m.group(1):
            out.append(f"{m.group(1)} from {m.group(2)}")
        elif m.group(3):
            out.append("middle" if m.group(3) in ("centre", "center") else m.group(3))
        else:
            out.append("?")
    return out


@dataclass
class PhotoWords:
    """What a multi-face photo's words say (``parse_words``)."""

    default: EyeLabels | None = None
    #: (position, label): see ``positions_in``.
    placed: list[tuple[str, EyeLabels]] = field(default_factory=list)
    #: (how many faces, label), place not given.
    counted: list[tuple[int, EyeLabels]] = field(default_factory=list)
    #: Some faces of unknown number are not the default ("some squinting", "mostly open").
    doubtful: bool = False
    mostly: bool = False


def parse_words(text: str) -> PhotoWords:
    words = PhotoWords()
    for index, clause in enumerate(split_clauses(text)):
        outside, inside = _outside_and_inside(clause)
        # The words outside the parentheses say the state ("closed (smiling)"), except for a
        # listed hard negative ("Biden narrow-eyed smile (hard negative)").
        state = (clause_state(clause) if "hard negative" in clause.lower()
                 else clause_state(outside) or clause_state(clause))
        if state is None:
            continue  # descriptive ("people re-ordered", "blurry")
        number = re.match(r"(\d+)(?:-(\d+))?(?: of \d+)?\b", outside)
        if re.match(r"(all|rest|others|mostly)\b", outside):
            words.default = state
            words.mostly |= outside.startswith("mostly")
            _take_inner_counts(words, inside, state)
        elif number:
            count = int(number.group(2) or number.group(1))
            where = positions_in(f"{outside} {inside}")
            if len(where) == count and "?" not in where:
                words.placed += [(w, state) for w in where]
            else:
                words.counted.append((count, state))
        elif re.match(r"some\b", outside):
            words.doubtful |= state != words.default
        elif where := positions_in(outside):
            words.placed += [(w, state) for w in where]
        elif index == 0:
            words.default = state
            _take_inner_counts(words, inside, state)
        elif state != words.default:
            words.counted.append((1, state))  # "Biden closed": one face, place unknown
    return words


def _take_inner_counts(words: PhotoWords, inside: str, state: EyeLabels) -> None:
    """Counts in the parentheses of a whole-photo clause: "open (2 narrow/half-open)"."""
    for sub in split_clauses(inside):
        inner = clause_state(sub)
        if inner is None or inner == state:
            continue
        number = re.match(r"(\d+)(?:-(\d+))?\b", sub.strip())
        if number:
            words.counted.append((int(number.group(2) or number.group(1)), inner))
        else:
            words.doubtful = True


def _rank(position: str, n: int) -> int | None:
    """Index into the faces sorted left to right, or None when ``position`` does not say."""
    if position == "left":
        return 0
    if position == "right":
        return n - 1
    if position == "middle":
        return n // 2 if n % 2 else None
    m = re.match(r"(\d+) from (left|right)", position)
    if m and 1 <= int(m.group(1)) <= n:
        k = int(m.group(1))
        return k - 1 if m.group(2) == "left" else n - k
    return None


def place_words(
    words: PhotoWords, faces: Sequence[Face], labelled: int
) -> tuple[list[EyeLabels], int]:
    """Labels for ``faces`` from ``words`` (see the module docstring) and how many came from
    a count. ``labelled``: how many faces the manifest counts."""
    labels: list[EyeLabels | None] = [None] * len(faces)
    counted = list(words.counted)
    left_to_right = sorted(range(len(faces)), key=lambda i: faces[i].box[0] + faces[i].box[2])
    by_rank = len(faces) == labelled and one_row(faces)
    for position, state in words.placed:
        rank = _rank(position, len(faces)) if by_rank else None
        if rank is None or labels[left_to_right[rank]] is not None:
            counted.append((1, state))
        else:
            labels[left_to_right[rank]] = state
    by_count = _place_counts(labels, faces, counted)
    no_count = words.mostly and not words.counted
    doubt = words.doubtful or no_count
    rest = AMB if doubt or words.default is None else words.default
    return [label or rest for label in labels], by_count


def one_row(faces: Sequence[Face]) -> bool:
    """Whether the faces stand in one row, so "left", "middle" and "4th from left" name one
    face each. In a group of rows "centre" may be any of several faces."""
    if len(faces) < 2:
        return True
    centres = np.array([(f.box[1] + f.box[3]) / 2 for f in faces])
    height = float(np.median([f.box[3] - f.box[1] for f in faces]))
    return float(np.max(np.abs(centres - np.median(centres)))) < ROW_TOLERANCE * height


def _place_counts(
    labels: list[EyeLabels | None], faces: Sequence[Face], counted: list[tuple[int, EyeLabels]]
) -> int:
    """Give counted labels to unlabelled faces, most shut first for "closed" then "amb", most
    open first for "open"; returns how many faces got one."""
    def opening(i: int) -> float:
        return min(assess.lid_opening(faces[i].eyes[s]) for s in ("right", "left"))

    free = sorted((i for i, lab in enumerate(labels) if lab is None), key=opening)
    given = 0
    for state in (CLOSED, AMB, OPEN):
        n = sum(count for count, s in counted if s == state)
        take = free[-n:][::-1] if state == OPEN and n else free[:n]
        for i in take:
            labels[i] = state
            given += 1
        free = [i for i in free if i not in take]
    return given


def labels_for(
    row: dict[str, str], faces: Sequence[Face], size: tuple[int, int], *, use_table: bool = True
) -> PlacedLabels:
    """Labels for the detected ``faces`` of one manifest row (see the module docstring);
    ``size``: the upright image's (width, height). ``use_table=False`` skips ``MULTI``, to
    check the words' rules against it."""
    text = row["eyes"]
    spec = next((m for m in MULTI if m[0] in row["local_file"] and m[1] == text), None)
    if spec is not None and use_table:
        return PlacedLabels(_from_table(spec[2], spec[3], faces, size), "table")
    labelled = labelled_count(row.get("n_faces", "1"))
    if labelled == 1:
        label = parse_single(text)
        biggest = max(range(len(faces)), key=lambda i: faces[i].width) if faces else -1
        return PlacedLabels([(label or AMB) if i == biggest else AMB for i in range(len(faces))],
                            "one face" if label else "not understood")
    words = parse_words(text)
    if words.default is None and not words.placed and not words.counted:
        return PlacedLabels([AMB] * len(faces), "not understood")
    labels, by_count = place_words(words, faces, labelled)
    return PlacedLabels(labels, "words", by_count)


def _from_table(
    default: EyeLabels, placed: list[tuple[float, float, EyeLabels]], faces: Sequence[Face],
    size: tuple[int, int],
) -> list[EyeLabels]:
    out = []
    for face in faces:
        cx = (face.box[0] + face.box[2]) / 2 / size[0]
        cy = (face.box[1] + face.box[3]) / 2 / size[1]
        near = [lab for x, y, lab in placed if abs(x - cx) < _MATCH_RADIUS
                and abs(y - cy) < _MATCH_RADIUS]
        out.append(near[0] if near else default)
    return out


def labelled_count(text: str) -> int:
    """The manifest's ``n_faces``: "3", "~10 (several partial)", "10+ (crowd)"."""
    found = re.search(r"\d+", text)
    return int(found.group()) if found else 1
