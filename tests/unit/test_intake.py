"""Name filters and taking single files into the ledger (no threads, real SQLite)."""

from __future__ import annotations

import io
import os
from pathlib import Path, PurePath

import pytest
from PIL import Image

from openeyesd import intake
from openeyesd.files import placeholder_identity, sha256_file
from openeyesd.intake import (
    IntakeStatus,
    enqueue_file,
    enqueue_tree,
    is_image_name,
    is_junk,
    junk_reason,
    name_filter_reason,
)
from openeyesd.ledger import Ledger

VERSION = "1"


def png_bytes(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (seed % 256, (seed * 7) % 256, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "drop"
    folder.mkdir()
    return folder


def take(ledger: Ledger, path: Path, root: Path, **kwargs: bool) -> intake.IntakeResult:
    return enqueue_file(ledger, path, watch_root=root, pipeline_version=VERSION, **kwargs)


# -- name filters -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "relative",
    [
        "@eaDir/IMG_1.jpg/SYNOFILE_THUMB_M.jpg",
        "shoot/@eaDir/x.jpg",
        ".@__thumb/IMG_1.jpg",
        "#recycle/IMG_1.jpg",
        "@Recycle/IMG_1.jpg",
        "$RECYCLE.BIN/S-1-5/IMG_1.jpg",
        ".Trash-1000/files/IMG_1.jpg",
        "._IMG_1.jpg",
        "shoot/._IMG_1.JPG",
        ".DS_Store",
        "shoot/.ds_store",
        "Thumbs.db",
        "THUMBS.DB",
        "desktop.ini",
        "IMG_1.jpg.part",
        "IMG_1.jpg.partial",
        "IMG_1.jpg.filepart",
        "IMG_1.jpg.crdownload",
        "IMG_1.TMP",
        "~$report.docx",
        "~IMG_1.jpg",
        ".IMG_1.jpg.a1B2c3",  # rsync temp
        ".openeyes-tmp-abc123",
        ".hidden.jpg",
        ".cache/IMG_1.jpg",
        "System Volume Information/IMG_1.jpg",
    ],
)
def test_junk(relative: str) -> None:
    assert is_junk(PurePath(relative)), relative


@pytest.mark.parametrize(
    "relative",
    [
        "IMG_1.jpg",
        "shoot 2024/IMG_1.JPG",
        "a/b/c/portrait.png",
        "eaDir/IMG_1.jpg",  # only the exact NAS names are junk
        "recycle/IMG_1.jpg",
        "IMG_1.jpg.jpg",
        "my.photo.with.dots.tif",
        "part/IMG_1.jpg",  # a folder called "part" is not a partial upload
    ],
)
def test_not_junk(relative: str) -> None:
    assert not is_junk(PurePath(relative)), relative


def test_junk_reasons_are_specific() -> None:
    assert junk_reason(PurePath(".IMG_1.jpg.a1B2c3")) == "rsync_temp"
    assert junk_reason(PurePath("x/@eaDir/y.jpg")) == "nas_metadata"
    assert junk_reason(PurePath("IMG.jpg.part")) == "partial_upload"
    assert junk_reason(PurePath("._IMG.jpg")) == "appledouble"
    assert junk_reason(PurePath("IMG.jpg")) is None


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.jpg", True),
        ("a.JPG", True),
        ("a.jpeg", True),
        ("a.jpe", True),
        ("a.png", True),
        ("a.tif", True),
        ("a.TIFF", True),
        ("a.webp", True),
        ("a.gif", True),
        ("a.bmp", True),
        ("a.heic", False),
        ("a.HEIF", False),
        ("a.cr2", False),
        ("a.json", False),
        ("a", False),
        ("jpg", False),
        ("a.jpg.txt", False),
    ],
)
def test_is_image_name(name: str, expected: bool) -> None:
    assert is_image_name(name) is expected
    assert is_image_name(PurePath("dir") / name) is expected


# -- enqueue_file -------------------------------------------------------------------------------


def test_new_file_is_enqueued_with_its_hash(ledger: Ledger, root: Path) -> None:
    photo = root / "shoot" / "IMG_1.png"
    photo.parent.mkdir()
    photo.write_bytes(png_bytes(1))

    result = take(ledger, photo, root)

    assert result.status is IntakeStatus.ENQUEUED
    assert result.sha256 == sha256_file(photo)
    job = ledger.get_job(result.job_id)
    assert job is not None
    assert job.sha256 == sha256_file(photo)
    assert job.relative_path == "shoot/IMG_1.png"
    assert job.watch_root == str(root)
    assert job.source_path == str(photo)
    assert job.pipeline_version == VERSION


def test_same_bytes_at_second_path_is_a_duplicate(ledger: Ledger, root: Path) -> None:
    first, second = root / "a.png", root / "b.png"
    first.write_bytes(png_bytes(2))
    second.write_bytes(png_bytes(2))

    one = take(ledger, first, root)
    two = take(ledger, second, root)

    assert two.status is IntakeStatus.DUPLICATE
    assert two.job_id == one.job_id
    assert ledger.source_paths(one.job_id) == sorted([str(first), str(second)])


def test_renamed_file_is_a_duplicate(ledger: Ledger, root: Path) -> None:
    photo = root / "a.png"
    photo.write_bytes(png_bytes(3))
    one = take(ledger, photo, root)
    renamed = photo.rename(root / "renamed.png")

    two = take(ledger, renamed, root)

    assert two.status is IntakeStatus.DUPLICATE
    assert two.job_id == one.job_id


def test_known_file_is_not_hashed_again(
    ledger: Ledger, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    photo = root / "a.png"
    photo.write_bytes(png_bytes(4))
    take(ledger, photo, root)

    def no_hashing(path: Path) -> int:
        raise AssertionError(f"{path} was opened again")

    monkeypatch.setattr(intake, "open_for_hashing", no_hashing)
    assert take(ledger, photo, root).status is IntakeStatus.KNOWN


def test_changed_file_is_hashed_again(ledger: Ledger, root: Path) -> None:
    photo = root / "a.png"
    photo.write_bytes(png_bytes(5))
    first = take(ledger, photo, root)
    photo.write_bytes(png_bytes(6))
    os.utime(photo, ns=(1, photo.stat().st_mtime_ns + 1_000_000))

    second = take(ledger, photo, root)

    assert second.status is IntakeStatus.ENQUEUED
    assert second.job_id != first.job_id


def test_force_requeues_a_known_file(ledger: Ledger, root: Path) -> None:
    photo = root / "a.png"
    photo.write_bytes(png_bytes(7))
    first = take(ledger, photo, root)

    again = take(ledger, photo, root, force=True)

    assert again.status is IntakeStatus.DUPLICATE
    assert again.job_id == first.job_id


def test_junk_and_non_images_are_ignored_with_a_reason(ledger: Ledger, root: Path) -> None:
    (root / "@eaDir").mkdir()
    thumb = root / "@eaDir" / "x.jpg"
    notes = root / "notes.txt"
    heic = root / "IMG_1.HEIC"
    for path in (thumb, notes, heic):
        path.write_bytes(b"data")

    results = {path: take(ledger, path, root) for path in (thumb, notes, heic)}

    assert results[thumb].status is IntakeStatus.IGNORED
    assert results[thumb].reason == "junk:nas_metadata"
    assert results[notes].reason == "not_an_image"
    assert results[heic].reason == "not_an_image"
    assert ledger.list_jobs() == []


def test_permission_denied_gets_a_placeholder_job(
    ledger: Ledger, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    photo = root / "locked.png"
    photo.write_bytes(png_bytes(8))
    photo.chmod(0)
    if os.access(photo, os.R_OK):
        # Running as root: chmod does not stop us, so make the open fail as it would.
        def denied(path: Path) -> int:
            raise PermissionError(13, "Permission denied", str(path))

        monkeypatch.setattr(intake, "open_for_hashing", denied)

    result = take(ledger, photo, root)

    st = os.lstat(photo)
    expected = placeholder_identity("permission_denied", str(photo), st.st_size, st.st_mtime_ns)
    assert result.status is IntakeStatus.ENQUEUED
    assert result.reason == "permission_denied"
    job = ledger.get_job(result.job_id)
    assert job is not None
    assert job.sha256 == expected
    # Recorded as a source: the next rescan does not try again until the file changes.
    assert take(ledger, photo, root).status is IntakeStatus.KNOWN


def test_symlink_outside_root_is_not_read(
    ledger: Ledger, root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "secret.png"
    secret.write_bytes(png_bytes(9))
    link = root / "innocent.png"
    link.symlink_to(secret)

    def no_reading(path: Path) -> int:
        raise AssertionError(f"{path} outside the watched folder was opened")

    monkeypatch.setattr(intake, "open_for_hashing", no_reading)
    result = take(ledger, link, root)

    st = os.lstat(link)
    assert result.status is IntakeStatus.ENQUEUED
    assert result.reason == "unsafe_path"
    job = ledger.get_job(result.job_id)
    assert job is not None
    assert job.sha256 == placeholder_identity("unsafe_path", str(link), st.st_size, st.st_mtime_ns)
    assert job.sha256 != sha256_file(secret)


def test_folder_symlink_leading_outside_is_unsafe(
    ledger: Ledger, root: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "a.png").write_bytes(png_bytes(10))
    (root / "linked").symlink_to(outside, target_is_directory=True)

    result = take(ledger, root / "linked" / "a.png", root)

    assert result.reason == "unsafe_path"


def test_symlink_inside_root_is_hashed(ledger: Ledger, root: Path) -> None:
    target = root / "originals" / "a.png"
    target.parent.mkdir()
    target.write_bytes(png_bytes(11))
    link = root / "selects" / "a.png"
    link.parent.mkdir()
    link.symlink_to(target)

    result = take(ledger, link, root)

    assert result.status is IntakeStatus.ENQUEUED
    assert result.reason is None
    assert result.sha256 == sha256_file(target)


def test_vanished_file_is_retried_not_recorded(ledger: Ledger, root: Path) -> None:
    result = take(ledger, root / "gone.png", root)

    assert result.status is IntakeStatus.RETRY_LATER
    assert result.reason == "vanished"
    assert ledger.list_jobs() == []


def test_file_vanishing_mid_hash_is_retried(
    ledger: Ledger, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    photo = root / "a.png"
    photo.write_bytes(png_bytes(12))

    def vanish(path: Path) -> int:
        os.unlink(path)
        raise FileNotFoundError(2, "No such file or directory", str(path))

    monkeypatch.setattr(intake, "open_for_hashing", vanish)
    result = take(ledger, photo, root)

    assert result.status is IntakeStatus.RETRY_LATER
    assert not result.settled
    assert ledger.list_jobs() == []


def test_io_error_is_retried(ledger: Ledger, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    photo = root / "a.png"
    photo.write_bytes(png_bytes(13))

    def eio(path: Path) -> int:
        raise OSError(5, "Input/output error", str(path))

    monkeypatch.setattr(intake, "open_for_hashing", eio)
    result = take(ledger, photo, root)

    assert result.status is IntakeStatus.RETRY_LATER
    assert result.reason == "EIO"
    assert ledger.list_jobs() == []


def test_file_growing_while_hashed_is_retried(
    ledger: Ledger, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    photo = root / "a.png"
    photo.write_bytes(png_bytes(14))
    real_open = intake.open_for_hashing

    def append_then_open(path: Path) -> int:
        with open(path, "ab") as handle:
            handle.write(b"more bytes arriving")
        return real_open(path)

    monkeypatch.setattr(intake, "open_for_hashing", append_then_open)
    result = take(ledger, photo, root)

    assert result.status is IntakeStatus.RETRY_LATER
    assert result.reason == "changed_while_reading"
    assert ledger.list_jobs() == []


def test_fifo_named_like_a_photo_is_ignored_without_blocking(ledger: Ledger, root: Path) -> None:
    fifo = root / "trap.jpg"
    os.mkfifo(fifo)

    result = take(ledger, fifo, root)

    assert result.status is IntakeStatus.IGNORED
    assert result.reason == "not_a_regular_file"


def test_path_outside_watch_root_is_a_caller_error(
    ledger: Ledger, root: Path, tmp_path: Path
) -> None:
    with pytest.raises(ValueError):
        take(ledger, tmp_path / "a.png", root)


# -- enqueue_tree -------------------------------------------------------------------------------


def test_enqueue_tree_takes_a_folder(ledger: Ledger, root: Path) -> None:
    (root / "shoot" / "@eaDir").mkdir(parents=True)
    (root / "shoot" / "@eaDir" / "thumb.jpg").write_bytes(b"thumb")
    (root / "shoot" / "a.png").write_bytes(png_bytes(20))
    (root / "shoot" / "b.png").write_bytes(png_bytes(21))
    (root / "shoot" / "copy of a.png").write_bytes(png_bytes(20))
    (root / "shoot" / ".DS_Store").write_bytes(b"junk")
    (root / "top.png").write_bytes(png_bytes(22))

    results = enqueue_tree(ledger, root / "shoot", watch_root=root, pipeline_version=VERSION)

    by_name = {result.path.name: result for result in results}
    assert set(by_name) == {"a.png", "b.png", "copy of a.png", ".DS_Store"}  # @eaDir not entered
    assert by_name["a.png"].status is IntakeStatus.ENQUEUED
    assert by_name["b.png"].status is IntakeStatus.ENQUEUED
    assert by_name["copy of a.png"].status is IntakeStatus.DUPLICATE
    assert by_name[".DS_Store"].status is IntakeStatus.IGNORED
    assert len(ledger.list_jobs()) == 2


def test_enqueue_tree_not_recursive_and_single_file(ledger: Ledger, root: Path) -> None:
    (root / "sub").mkdir()
    (root / "sub" / "deep.png").write_bytes(png_bytes(30))
    (root / "top.png").write_bytes(png_bytes(31))

    flat = enqueue_tree(ledger, root, watch_root=root, pipeline_version=VERSION, recursive=False)
    single = enqueue_tree(ledger, root / "sub" / "deep.png", watch_root=root, pipeline_version="1")

    assert [result.path.name for result in flat] == ["top.png"]
    assert [(r.path.name, r.status) for r in single] == [("deep.png", IntakeStatus.ENQUEUED)]


def test_reference_portraits_are_never_queued() -> None:
    assert name_filter_reason(PurePath("session1/references/anna.jpg")) == "reference_portrait"
    assert name_filter_reason(PurePath("References/anna.jpg")) == "reference_portrait"
    assert name_filter_reason(PurePath("session1/references.jpg")) is None
