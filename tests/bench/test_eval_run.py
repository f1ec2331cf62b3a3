"""The evaluation on a folder it has never seen: every readable photo analysed and labelled
from the manifest's words, a photo that cannot be read listed and left out, not fatal."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from PIL import Image
from skimage import data

from bench.eval_labels import OPEN


@pytest.mark.slow
def test_a_photo_that_cannot_be_read_is_left_out_and_the_rest_evaluated(tmp_path: Path) -> None:
    from bench.eval_eyes import default_toolkit, load_photos

    (tmp_path / "open").mkdir()
    Image.fromarray(data.astronaut()).save(tmp_path / "open" / "portrait.jpg", quality=95)
    (tmp_path / "open" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut off here")
    with (tmp_path / "MANIFEST.tsv").open("w", newline="") as manifest:
        rows = csv.writer(manifest, delimiter="\t")
        rows.writerow(["local_file", "group", "pair_id", "n_faces", "eyes"])
        rows.writerow(["open/broken.jpg", "open", "", "1", "open"])
        rows.writerow(["open/portrait.jpg", "open", "", "1", "open"])

    _, toolkit = default_toolkit()
    photos, left_out = load_photos(tmp_path, toolkit)

    assert [p.file for p in photos] == ["open/portrait.jpg"]
    assert photos[0].labels == [OPEN] and photos[0].placed.how == "one face"
    assert len(left_out) == 1 and left_out[0].startswith("open/broken.jpg: ")
