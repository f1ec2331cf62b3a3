"""The watcher on real folders with a real SQLite ledger.

Windows are small (0.2-0.4 s). Waits are functional time-outs that only stop a hang; nothing
asserts how fast anything was.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from openeyesd import intake
from openeyesd import watcher as watcher_module
from openeyesd.config import Config
from openeyesd.files import sha256_file
from openeyesd.ledger import EnqueueItem, EnqueueResult, Job, Ledger
from openeyesd.watcher import Watcher

WINDOW_S = 0.3
POLL_S = 0.05
TIMEOUT_S = 10.0


def png_bytes(seed: int, size: int = 16) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (seed % 256, (seed * 13) % 256, 90)).save(buffer, "PNG")
    return buffer.getvalue()


def wait_until(predicate: Callable[[], Any], *, timeout: float = TIMEOUT_S) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.02)
    raise AssertionError(f"condition not met within {timeout} s")


def jobs(ledger: Ledger) -> list[Job]:
    return ledger.list_jobs(limit=10_000)


def folder_spec(path: Path, mode: str = "inotify", **extra: Any) -> dict[str, Any]:
    return {
        "path": str(path),
        "mode": mode,
        "poll_interval_s": POLL_S,
        "stability_window_s": WINDOW_S,
        **extra,
    }


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def incoming(tmp_path: Path) -> Path:
    return tmp_path / "incoming"


@pytest.fixture
def watchers() -> Iterator[list[Watcher]]:
    """Every watcher a test makes is stopped, even when the test fails."""
    made: list[Watcher] = []
    yield made
    for watcher in made:
        watcher.stop()


@pytest.fixture
def make_watcher(
    make_config: Callable[..., Config], ledger: Ledger, watchers: list[Watcher]
) -> Callable[..., Watcher]:
    def build(*folders: dict[str, Any], **kwargs: Any) -> Watcher:
        watcher = Watcher(make_config(watch=list(folders)), ledger, **kwargs)
        watchers.append(watcher)
        return watcher

    return build


@pytest.fixture
def count_hashes(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How many times each file was opened for hashing."""
    counts: dict[str, int] = {}
    lock = threading.Lock()
    real_open = intake.open_for_hashing

    def counting(path: Path) -> int:
        with lock:
            counts[Path(path).name] = counts.get(Path(path).name, 0) + 1
        return real_open(path)

    monkeypatch.setattr(intake, "open_for_hashing", counting)
    return counts


# -- running watchers (threads, observers) -------------------------------------------------------


@pytest.mark.parametrize("mode", ["inotify", "poll"])
def test_file_at_startup_and_file_arriving_later(
    mode: str, incoming: Path, ledger: Ledger, make_watcher: Callable[..., Watcher]
) -> None:
    watcher = make_watcher(folder_spec(incoming, mode))
    (incoming / "before.png").write_bytes(png_bytes(1))

    watcher.start()
    wait_until(lambda: len(jobs(ledger)) == 1)
    wait_until(lambda: watcher.folder_health()[0]["attached"])
    (incoming / "shoot").mkdir()
    later = incoming / "shoot" / "later.png"
    later.write_bytes(png_bytes(2))
    wait_until(lambda: len(jobs(ledger)) == 2)

    by_path = {job.relative_path: job for job in jobs(ledger)}
    assert set(by_path) == {"before.png", "shoot/later.png"}
    assert by_path["shoot/later.png"].sha256 == sha256_file(later)
    health = watcher.folder_health()[0]
    assert health["mode"] == mode
    assert health["exists"] and health["readable"]
    assert health["last_scan_at"] is not None
    wait_until(lambda: watcher.pending_count == 0)


@pytest.mark.parametrize("mode", ["inotify", "poll"])
def test_slow_copy_is_enqueued_once_after_it_stops_growing(
    mode: str,
    incoming: Path,
    ledger: Ledger,
    make_watcher: Callable[..., Watcher],
    count_hashes: dict[str, int],
) -> None:
    # Pauses longer than the poll interval but shorter than the window: every poll sees a
    # change, and the file must not be taken until the window passes with no change.
    watcher = make_watcher(folder_spec(incoming, mode, stability_window_s=0.5))
    watcher.start()
    wait_until(lambda: watcher.folder_health()[0]["attached"])
    data = png_bytes(3, size=64) + os.urandom(60_000)
    target = incoming / "slow.png"
    chunks = [data[i : i + 8_000] for i in range(0, len(data), 8_000)]
    with open(target, "wb") as handle:
        for chunk in chunks:
            handle.write(chunk)
            handle.flush()
            time.sleep(0.15)
            assert jobs(ledger) == [], "taken while still growing"

    job = wait_until(lambda: jobs(ledger))[0]
    assert job.sha256 == sha256_file(target)
    assert job.size_bytes == len(data)
    wait_until(lambda: watcher.pending_count == 0)
    assert len(jobs(ledger)) == 1
    assert count_hashes == {"slow.png": 1}


@pytest.mark.parametrize("mode", ["inotify", "poll"])
def test_rsync_style_rename_into_place_gives_one_job(
    mode: str,
    incoming: Path,
    ledger: Ledger,
    make_watcher: Callable[..., Watcher],
    count_hashes: dict[str, int],
) -> None:
    watcher = make_watcher(folder_spec(incoming, mode))
    watcher.start()
    wait_until(lambda: watcher.folder_health()[0]["attached"])
    temp = incoming / ".IMG_0001.png.Xy12Ab"
    with open(temp, "wb") as handle:
        handle.write(png_bytes(4))
        handle.flush()
        time.sleep(0.1)
        handle.write(b"\0" * 100)
    final = temp.rename(incoming / "IMG_0001.png")

    job = wait_until(lambda: jobs(ledger))[0]
    wait_until(lambda: watcher.pending_count == 0)
    assert len(jobs(ledger)) == 1
    assert ledger.source_paths(job.id) == [str(final)]
    assert count_hashes == {"IMG_0001.png": 1}


def test_same_photo_under_two_names_is_one_job(
    incoming: Path, ledger: Ledger, make_watcher: Callable[..., Watcher]
) -> None:
    watcher = make_watcher(folder_spec(incoming))
    watcher.start()
    wait_until(lambda: watcher.folder_health()[0]["attached"])
    (incoming / "IMG_1.png").write_bytes(png_bytes(5))
    (incoming / "IMG_1 (copy).png").write_bytes(png_bytes(5))

    wait_until(lambda: len(jobs(ledger)) == 1 and len(ledger.source_paths(jobs(ledger)[0].id)) == 2)
    wait_until(lambda: watcher.pending_count == 0)
    assert len(jobs(ledger)) == 1


def test_junk_is_never_enqueued(
    incoming: Path,
    ledger: Ledger,
    make_watcher: Callable[..., Watcher],
    count_hashes: dict[str, int],
) -> None:
    (incoming / "@eaDir" / "IMG_1.png").mkdir(parents=True)
    (incoming / "@eaDir" / "IMG_1.png" / "SYNOPHOTO_THUMB_M.jpg").write_bytes(png_bytes(6))
    watcher = make_watcher(folder_spec(incoming))
    watcher.start()
    wait_until(lambda: watcher.folder_health()[0]["attached"])
    junk = {
        "._IMG_1.png": png_bytes(7),
        ".DS_Store": b"\0\0\0\1Bud1",
        "Thumbs.db": b"thumbs",
        "IMG_2.png.part": png_bytes(8),
        "~IMG_3.png": png_bytes(9),
        "notes.txt": b"call the client",
        "IMG_4.heic": b"heic",
    }
    for name, data in junk.items():
        (incoming / name).write_bytes(data)
    (incoming / "#recycle").mkdir()
    (incoming / "#recycle" / "old.png").write_bytes(png_bytes(10))
    (incoming / "IMG_1.png").write_bytes(png_bytes(11))

    listing = sorted(incoming.rglob("*"))

    wait_until(lambda: jobs(ledger))
    # One more full window and a rescan: still nothing else.
    time.sleep(WINDOW_S * 2)
    watcher.rescan()
    wait_until(lambda: watcher.pending_count == 0)
    assert [job.relative_path for job in jobs(ledger)] == ["IMG_1.png"]
    assert count_hashes == {"IMG_1.png": 1}
    assert sorted(incoming.rglob("*")) == listing  # nothing written into the watched folder


def test_missing_folder_is_attached_when_it_appears(
    tmp_path: Path, ledger: Ledger, make_watcher: Callable[..., Watcher]
) -> None:
    present, mount = tmp_path / "incoming", tmp_path / "nas" / "photos"
    watcher = make_watcher(folder_spec(present), folder_spec(mount, "poll"))
    shutil.rmtree(tmp_path / "nas")  # make_config creates watched folders; a NAS is not there
    watcher.start()
    wait_until(lambda: watcher.folder_health()[1]["error"])  # logged, and the watcher goes on

    missing = watcher.folder_health()[1]
    assert missing["exists"] is False
    assert missing["attached"] is False
    assert "No such file" in missing["error"]
    assert watcher.folder_health()[0]["attached"] is True

    mount.mkdir(parents=True)
    (mount / "IMG_1.png").write_bytes(png_bytes(12))
    watcher.rescan()  # the daemon's scheduler does this periodically

    assert watcher.folder_health()[1]["attached"] is True
    assert watcher.folder_health()[1]["error"] is None
    wait_until(lambda: len(jobs(ledger)) == 1)
    (mount / "IMG_2.png").write_bytes(png_bytes(13))  # seen by its observer, no rescan
    wait_until(lambda: len(jobs(ledger)) == 2)


def test_inotify_out_of_watches_falls_back_to_polling(
    incoming: Path,
    ledger: Ledger,
    make_watcher: Callable[..., Watcher],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class ExhaustedObserver(watcher_module.Observer):
        def schedule(self, *args: Any, **kwargs: Any) -> Any:
            raise OSError(errno.ENOSPC, "inotify watch limit reached")

    monkeypatch.setattr(watcher_module, "Observer", ExhaustedObserver)
    watcher = make_watcher(folder_spec(incoming))
    watcher.start()
    wait_until(lambda: watcher.folder_health()[0]["attached"])

    assert watcher.folder_health()[0]["active_mode"] == "poll"
    (incoming / "IMG_1.png").write_bytes(png_bytes(20))
    wait_until(lambda: len(jobs(ledger)) == 1)


def test_folder_recreated_is_reattached(
    incoming: Path, ledger: Ledger, make_watcher: Callable[..., Watcher]
) -> None:
    watcher = make_watcher(folder_spec(incoming))
    watcher.start()
    wait_until(lambda: watcher.folder_health()[0]["attached"])
    shutil.rmtree(incoming)
    watcher.rescan()
    assert watcher.folder_health()[0]["attached"] is False

    incoming.mkdir()
    watcher.rescan()
    assert watcher.folder_health()[0]["attached"] is True
    (incoming / "IMG_1.png").write_bytes(png_bytes(14))
    wait_until(lambda: len(jobs(ledger)) == 1)


def test_folder_moved_in_is_picked_up(
    tmp_path: Path, incoming: Path, ledger: Ledger, make_watcher: Callable[..., Watcher]
) -> None:
    watcher = make_watcher(folder_spec(incoming))
    watcher.start()
    wait_until(lambda: watcher.folder_health()[0]["attached"])
    staging = tmp_path / "staging" / "session 12"
    staging.mkdir(parents=True)
    for index in range(5):
        (staging / f"IMG_{index}.png").write_bytes(png_bytes(100 + index))

    staging.rename(incoming / "session 12")

    wait_until(lambda: len(jobs(ledger)) == 5)
    assert {job.relative_path for job in jobs(ledger)} == {
        f"session 12/IMG_{index}.png" for index in range(5)
    }


def test_burst_of_files_each_hashed_once(
    incoming: Path,
    ledger: Ledger,
    make_watcher: Callable[..., Watcher],
    count_hashes: dict[str, int],
) -> None:
    watcher = make_watcher(folder_spec(incoming))
    watcher.start()
    wait_until(lambda: watcher.folder_health()[0]["attached"])
    base = png_bytes(15)
    for index in range(300):
        # Distinct content: a small PNG plus a unique trailer.
        (incoming / f"IMG_{index:04}.png").write_bytes(base + index.to_bytes(4, "big"))

    wait_until(lambda: len(jobs(ledger)) == 300, timeout=30)
    wait_until(lambda: watcher.pending_count == 0)
    assert len(count_hashes) == 300
    assert set(count_hashes.values()) == {1}


def test_stop_ends_the_thread(incoming: Path, make_watcher: Callable[..., Watcher]) -> None:
    watcher = make_watcher(folder_spec(incoming), folder_spec(incoming.parent / "p", "poll"))
    watcher.start()
    wait_until(lambda: all(h["attached"] for h in watcher.folder_health()))

    watcher.stop()

    alive = {t.name for t in threading.enumerate() if t.name == "openeyes-watcher"}
    assert alive == set()
    assert not any(h["attached"] for h in watcher.folder_health())


# -- driven by hand (no background thread; fake clock for the stability rules) ---------------------


def test_rescan_of_known_files_reads_nothing(
    incoming: Path,
    ledger: Ledger,
    make_watcher: Callable[..., Watcher],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for index in range(50):
        (incoming / f"IMG_{index}.png").write_bytes(png_bytes(index))
    intake.enqueue_tree(ledger, incoming, watch_root=incoming, pipeline_version="1")

    def no_hashing(path: Path) -> int:
        raise AssertionError(f"{path} was hashed again")

    monkeypatch.setattr(intake, "open_for_hashing", no_hashing)
    # A fresh watcher (a daemon restart): the ledger knows every file by path, size and mtime.
    watcher = make_watcher(folder_spec(incoming))
    watcher.rescan()
    assert watcher.pending_count == 0
    watcher.rescan()
    watcher.tick()
    assert watcher.pending_count == 0
    assert len(jobs(ledger)) == 50


def test_rescan_after_a_restart_asks_the_ledger_once_per_batch(
    incoming: Path,
    ledger: Ledger,
    make_watcher: Callable[..., Watcher],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for index in range(30):
        (incoming / f"IMG_{index}.png").write_bytes(png_bytes(index))
    intake.enqueue_tree(ledger, incoming, watch_root=incoming, pipeline_version="1")
    for index in range(30, 33):  # arrived while the daemon was down
        (incoming / f"IMG_{index}.png").write_bytes(png_bytes(index))
    asked = spy_known_sources(ledger, monkeypatch)

    clock = FakeClock()
    watcher = make_watcher(folder_spec(incoming, "poll", stability_window_s=1.0), clock=clock)
    watcher.rescan()
    assert [len(paths) for paths in asked] == [33]
    assert watcher.pending_count == 3
    clock.advance(1.5)
    watcher.tick()  # the scan already asked about these three: no second question
    assert len(asked) == 1
    assert len(jobs(ledger)) == 33 and watcher.pending_count == 0


def test_known_files_arriving_by_event_are_checked_in_one_query(
    tmp_path: Path,
    incoming: Path,
    ledger: Ledger,
    make_watcher: Callable[..., Watcher],
    monkeypatch: pytest.MonkeyPatch,
    count_hashes: dict[str, int],
) -> None:
    """After a restart, a file moved back in unchanged is known by path, size and mtime."""
    away = tmp_path / "away"
    away.mkdir()
    for index in range(5):
        (incoming / f"IMG_{index}.png").write_bytes(png_bytes(index))
    intake.enqueue_tree(ledger, incoming, watch_root=incoming, pipeline_version="1")
    count_hashes.clear()
    for photo in list(incoming.iterdir()):
        photo.rename(away / photo.name)
    asked = spy_known_sources(ledger, monkeypatch)
    watcher = make_watcher(folder_spec(incoming))
    watcher.start()
    wait_until(lambda: watcher.folder_health()[0]["last_scan_at"] is not None)
    asked.clear()

    for photo in sorted(away.iterdir()):
        photo.rename(incoming / photo.name)  # a rename keeps size and mtime
    wait_until(lambda: sum(len(paths) for paths in asked) == 5)
    wait_until(lambda: watcher.pending_count == 0)
    assert count_hashes == {}
    assert len(jobs(ledger)) == 5


def test_files_stable_together_are_recorded_together(
    incoming: Path,
    ledger: Ledger,
    make_watcher: Callable[..., Watcher],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    batches = spy_enqueue_many(ledger, monkeypatch, first_call_delay_s=0.5)
    clock = FakeClock()
    watcher = make_watcher(folder_spec(incoming, "poll", stability_window_s=1.0), clock=clock)
    for index in range(20):
        (incoming / f"IMG_{index}.png").write_bytes(png_bytes(index))
    watcher.rescan()
    clock.advance(1.5)
    watcher.tick()
    # The first write is slow, so every other hash has finished when it ends: one more write.
    assert sum(batches) == 20 and len(batches) <= 2
    assert len(jobs(ledger)) == 20 and watcher.pending_count == 0


def test_a_file_the_ledger_refuses_does_not_hold_back_its_batch(
    incoming: Path,
    ledger: Ledger,
    make_watcher: Callable[..., Watcher],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = ledger.enqueue_many

    def refusing(items: Sequence[EnqueueItem]) -> list[EnqueueResult]:
        if any(item.source_path.endswith("IMG_0.png") for item in items):
            raise RuntimeError("the ledger refuses IMG_0.png")
        return real(items)

    monkeypatch.setattr(ledger, "enqueue_many", refusing)
    clock = FakeClock()
    watcher = make_watcher(folder_spec(incoming, "poll", stability_window_s=1.0), clock=clock)
    for index in range(10):
        (incoming / f"IMG_{index}.png").write_bytes(png_bytes(index))
    watcher.rescan()
    clock.advance(1.5)
    watcher.tick()
    assert sorted(job.relative_path for job in jobs(ledger)) == [
        f"IMG_{index}.png" for index in range(1, 10)
    ]
    assert watcher.pending_count == 1  # IMG_0.png: retried later


def spy_known_sources(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Records every ``known_sources`` question; ``is_known_source`` must not be asked."""
    asked: list[list[str]] = []
    real = ledger.known_sources

    def known_sources(paths: Sequence[str]) -> dict[str, tuple[int, int]]:
        asked.append(list(paths))
        return real(paths)

    def is_known_source(*args: object) -> bool:
        raise AssertionError(f"asked about one file: {args}")

    monkeypatch.setattr(ledger, "known_sources", known_sources)
    monkeypatch.setattr(ledger, "is_known_source", is_known_source)
    return asked


def spy_enqueue_many(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch, *, first_call_delay_s: float
) -> list[int]:
    batches: list[int] = []
    real = ledger.enqueue_many

    def enqueue_many(items: Sequence[EnqueueItem]) -> list[EnqueueResult]:
        if not batches:
            time.sleep(first_call_delay_s)
        batches.append(len(items))
        return real(items)

    monkeypatch.setattr(ledger, "enqueue_many", enqueue_many)
    return batches


def test_window_restarts_on_every_change(
    incoming: Path, ledger: Ledger, make_watcher: Callable[..., Watcher]
) -> None:
    clock = FakeClock()
    watcher = make_watcher(folder_spec(incoming, "poll", stability_window_s=3.0), clock=clock)
    photo = incoming / "IMG_1.png"
    photo.write_bytes(png_bytes(16))
    watcher.rescan()
    assert watcher.pending_count == 1

    clock.advance(2.0)
    watcher.tick()
    assert jobs(ledger) == []
    with open(photo, "ab") as handle:
        handle.write(b"more")
    clock.advance(1.5)  # the original window has passed, but the file changed
    watcher.tick()
    assert jobs(ledger) == []
    clock.advance(2.0)  # 2 s since we saw the change: still inside the window
    watcher.tick()
    assert jobs(ledger) == []
    clock.advance(1.5)
    watcher.tick()

    assert [job.sha256 for job in jobs(ledger)] == [sha256_file(photo)]
    assert watcher.pending_count == 0


def test_busy_file_stays_pending_and_is_retried(
    incoming: Path,
    ledger: Ledger,
    make_watcher: Callable[..., Watcher],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = FakeClock()
    watcher = make_watcher(folder_spec(incoming, "poll", stability_window_s=1.0), clock=clock)
    photo = incoming / "IMG_1.png"
    photo.write_bytes(png_bytes(17))
    real_open = intake.open_for_hashing
    failures = [OSError(5, "Input/output error"), OSError(16, "Device or resource busy")]

    def flaky(path: Path) -> int:
        if failures:
            raise failures.pop(0)
        return real_open(path)

    monkeypatch.setattr(intake, "open_for_hashing", flaky)
    watcher.rescan()
    for _ in range(20):
        clock.advance(1.0)
        watcher.tick()
        if jobs(ledger):
            break

    assert failures == []
    assert [job.sha256 for job in jobs(ledger)] == [sha256_file(photo)]
    assert watcher.pending_count == 0


def test_vanished_file_is_dropped(
    incoming: Path, ledger: Ledger, make_watcher: Callable[..., Watcher]
) -> None:
    clock = FakeClock()
    watcher = make_watcher(folder_spec(incoming, "poll", stability_window_s=1.0), clock=clock)
    photo = incoming / "IMG_1.png"
    photo.write_bytes(png_bytes(18))
    watcher.rescan()
    assert watcher.pending_count == 1

    photo.unlink()
    clock.advance(1.5)
    watcher.tick()

    assert watcher.pending_count == 0
    assert jobs(ledger) == []


def test_permission_denied_reaches_the_ledger(
    incoming: Path,
    ledger: Ledger,
    make_watcher: Callable[..., Watcher],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = FakeClock()
    watcher = make_watcher(folder_spec(incoming, "poll", stability_window_s=1.0), clock=clock)
    photo = incoming / "locked.png"
    photo.write_bytes(png_bytes(19))

    def denied(path: Path) -> int:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(intake, "open_for_hashing", denied)
    watcher.rescan()
    clock.advance(1.5)
    watcher.tick()

    [job] = jobs(ledger)
    assert job.relative_path == "locked.png"
    assert job.sha256 != sha256_file(photo)  # a placeholder: ingest records the failure
    assert watcher.pending_count == 0
    watcher.rescan()  # the placeholder is remembered: not retried until the file changes
    assert watcher.pending_count == 0


def test_non_recursive_folder_ignores_subfolders(
    incoming: Path, ledger: Ledger, make_watcher: Callable[..., Watcher]
) -> None:
    clock = FakeClock()
    spec = folder_spec(incoming, "poll", stability_window_s=1.0, recursive=False)
    watcher = make_watcher(spec, clock=clock)
    (incoming / "sub").mkdir()
    (incoming / "sub" / "deep.png").write_bytes(png_bytes(21))
    (incoming / "top.png").write_bytes(png_bytes(22))

    watcher.rescan()
    clock.advance(1.5)
    watcher.tick()

    assert [job.relative_path for job in jobs(ledger)] == ["top.png"]
