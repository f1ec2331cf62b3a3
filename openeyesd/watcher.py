"""Find files that finished arriving in the watched folders and enqueue them. No ML here.

How a file travels:

1. It becomes a *candidate*: through an inotify event (``Observer``), a polling snapshot
   (``PollingObserver``, for SMB/NFS mounts that deliver no inotify events), or a full scan
   (at start and whenever the daemon's scheduler calls ``rescan``). Observer threads only note
   the path and the time; every decision is taken in ``tick``. Junk and non-image names are
   dropped by name before any system call.
2. ``tick`` stats a candidate once its stability window has passed since we last saw it change
   (an event, or a different size/mtime). Unchanged: it is taken. Changed: the window restarts.
   Nothing is stat'ed while its window runs, so a burst of 1,000 files costs one stat each.
3. Stable files are hashed by a small thread pool (``intake.inspect_file``) while the tick
   thread writes the finished ones to the ledger (``intake.record_files``): whatever hashes
   completed since the last write go in one transaction, so hashing overlaps the ledger
   writes, the ledger sees a single writer, and a burst costs a few transactions, not one
   per file.
4. A settled file is remembered with its (size, mtime) so later events and rescans that find
   it unchanged cost one stat and no query; after a restart ``Ledger.known_sources``
   answers the same question without hashing, in one query per batch of files (a scan's
   batch, or the files a tick takes).

A file that is busy (EIO, changed while being read) stays a candidate and is retried with a
growing delay; one that vanished is dropped quietly. A watched folder that is missing (a NAS
not mounted yet) is logged and attached by a later ``rescan``; so is one that was remounted.
Nothing is ever written into a watched folder.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog
from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from openeyesd.config import Config, WatchFolder, WatchMode
from openeyesd.intake import (
    FileIdentity,
    IntakeResult,
    IntakeStatus,
    inspect_file,
    junk_reason,
    name_filter_reason,
    record_file,
    record_files,
    walk_files,
)
from openeyesd.ledger import Ledger, utcnow

#: Only events that can mean "a file appeared or changed". Opened/closed-without-write events
#: are left out: our own hashing would otherwise wake the watcher for every file it reads.
_EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileClosedEvent,
    FileDeletedEvent,
    DirCreatedEvent,
    DirMovedEvent,
]
_TICK_MAX_S = 0.5
_TICK_MIN_S = 0.02
_RETRY_MAX_S = 60.0
_STOP_JOIN_S = 2.0
#: stat() failed for a reason other than "gone": let inspect_file decide (placeholder or retry).
_UNREADABLE = (-1, -1)
#: Files per ``known_sources`` question during a scan, and at most per ledger transaction
#: when recording: long enough to amortise a transaction, short enough that the SQLite write
#: lock is held for tens of milliseconds, not seconds, while workers wait to claim.
_SCAN_BATCH = 500
_RECORD_BATCH = 200

Signature = tuple[int, int]


@dataclass
class _Folder:
    config: WatchFolder
    root: Path
    observer: BaseObserver | None = None
    #: (st_dev, st_ino) of the root when attached: a change means it was remounted/recreated.
    identity: tuple[int, int] | None = None
    active_mode: WatchMode | None = None
    last_scan_at: datetime | None = None
    error: str | None = None

    @property
    def window_s(self) -> float:
        return self.config.stability_window_s


@dataclass
class _Candidate:
    path: Path
    folder: _Folder
    signature: Signature
    due_at: float
    #: Bumped on every observed change, so a result computed before a change is not trusted.
    version: int = 0
    attempts: int = 0
    in_flight: bool = False
    #: True once the ledger cannot know this (size, mtime): we asked it during a scan, or we
    #: saw the file change to it ourselves. Saves one query per file in a burst.
    known_checked: bool = False


@dataclass
class _Inbox:
    """What observer threads hand to the tick thread: paths and when they last moved."""

    files: dict[str, tuple[_Folder, float]] = field(default_factory=dict)
    dirs: dict[str, _Folder] = field(default_factory=dict)


class _EventHandler(FileSystemEventHandler):
    def __init__(self, note: Callable[[_Folder, FileSystemEvent], None], folder: _Folder) -> None:
        self._note = note
        self._folder = folder

    def on_any_event(self, event: FileSystemEvent) -> None:
        self._note(self._folder, event)


class Watcher:
    def __init__(
        self,
        config: Config,
        ledger: Ledger,
        *,
        logger: Any = None,
        hash_workers: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ledger = ledger
        self._pipeline_version = config.pipeline.version
        self._log = logger if logger is not None else structlog.get_logger()
        self._clock = clock
        self._folders = [
            _Folder(folder, Path(os.path.abspath(folder.path))) for folder in config.watch
        ]
        smallest_window = min(folder.stability_window_s for folder in config.watch)
        self._tick_s = max(_TICK_MIN_S, min(_TICK_MAX_S, smallest_window / 4))
        self._lock = threading.Lock()  # guards _inbox, _pending, _seen
        self._rescan_lock = threading.Lock()  # one rescan (and attach/detach) at a time
        self._inbox = _Inbox()
        self._pending: dict[str, _Candidate] = {}
        self._seen: dict[str, Signature] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        workers = hash_workers or min(4, os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="openeyes-hash")

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Attach, scan and tick in a background thread; returns at once."""
        if self._thread is not None:
            raise RuntimeError("watcher already started")
        self._thread = threading.Thread(target=self._run, name="openeyes-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop ticking and observing; returns within about two seconds. Not restartable."""
        self._stop.set()
        deadline = time.monotonic() + _STOP_JOIN_S
        if self._thread is not None:
            self._thread.join(timeout=_STOP_JOIN_S)
        got_lock = self._rescan_lock.acquire(timeout=max(0.0, deadline - time.monotonic()))
        try:
            observers = [f.observer for f in self._folders if f.observer is not None]
            for observer in observers:
                observer.stop()
            for observer in observers:
                observer.join(timeout=max(0.05, deadline - time.monotonic()))
            for folder in self._folders:
                folder.observer = None
        finally:
            if got_lock:
                self._rescan_lock.release()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(self) -> None:
        self._guarded(self.rescan, "watch.rescan_failed")
        while not self._stop.is_set():
            next_due = self._guarded(self.tick, "watch.tick_failed")
            wait = self._tick_s if next_due is None else min(self._tick_s, next_due)
            self._stop.wait(max(wait, _TICK_MIN_S))

    def _guarded(self, step: Callable[[], float | None], event: str) -> float | None:
        # A surprise (a ledger outage, a bug) must not end the thread that finds new photos:
        # log it with its traceback and try again on the next round.
        try:
            return step()
        except Exception:  # noqa: BLE001 - logged with traceback, retried next round
            self._log.exception(event)
            return None

    # -- public state ------------------------------------------------------------------------

    @property
    def pending_count(self) -> int:
        """Files seen but not yet enqueued (waiting for stability, being hashed, or retried)."""
        with self._lock:
            return len(self._pending.keys() | self._inbox.files.keys())

    def folder_health(self) -> list[dict[str, Any]]:
        """One entry per watched folder, for ``openeyesctl status`` and doctor."""
        health = []
        for folder in self._folders:
            root = folder.root
            health.append(
                {
                    "path": str(root),
                    "exists": root.is_dir(),
                    "readable": os.access(root, os.R_OK | os.X_OK),
                    "mode": str(folder.config.mode),
                    "active_mode": None if folder.active_mode is None else str(folder.active_mode),
                    "attached": folder.observer is not None,
                    "last_scan_at": folder.last_scan_at,
                    "error": folder.error,
                }
            )
        return health

    # -- events (observer threads) -----------------------------------------------------------

    def _note_event(self, folder: _Folder, event: FileSystemEvent) -> None:
        """Cheap on purpose: runs on the observer's thread for every event."""
        now = self._clock()
        if event.is_directory:
            # A folder created or moved in: its files may predate the watch on it.
            moved = isinstance(event, DirMovedEvent)
            relative = self._relative(folder, event.dest_path if moved else event.src_path)
            if relative is not None and relative.parts and junk_reason(relative) is None:
                with self._lock:
                    self._inbox.dirs[str(folder.root / relative)] = folder
            return
        raw_paths = [event.src_path]
        if isinstance(event, FileMovedEvent):
            raw_paths.append(event.dest_path)  # the source is noted too: it is gone now
        for raw in raw_paths:
            relative = self._relative(folder, raw)
            if relative is not None and name_filter_reason(relative) is None:
                with self._lock:
                    self._inbox.files[str(folder.root / relative)] = (folder, now)

    @staticmethod
    def _relative(folder: _Folder, raw: str | bytes) -> Path | None:
        try:
            return Path(os.fsdecode(raw)).relative_to(folder.root)
        except ValueError:
            return None  # moved out of the folder, or an empty dest_path

    # -- ticking -----------------------------------------------------------------------------

    def tick(self) -> float | None:
        """Take in noted events, check candidates whose window has passed, enqueue the stable
        ones. Returns seconds until the next candidate is due, None when none is pending."""
        self._absorb_inbox()
        ready = self._ripe_candidates(self._clock())
        if ready:
            self._take(ready)
        with self._lock:
            dues = [c.due_at for c in self._pending.values() if not c.in_flight]
        return None if not dues else max(0.0, min(dues) - self._clock())

    def _absorb_inbox(self) -> None:
        with self._lock:
            inbox, self._inbox = self._inbox, _Inbox()
        for directory, folder in inbox.dirs.items():
            self._scan(folder, Path(directory))
        for path, (folder, event_at) in inbox.files.items():
            self._observe(folder, Path(path), event_at=event_at)

    def _observe(self, folder: _Folder, path: Path, *, event_at: float) -> None:
        """An event about ``path``: new candidate, a change, or nothing to do. The ledger is
        not asked here; ``_take`` asks it once for all the files it takes."""
        key = str(path)
        signature = _signature_of(path)
        if signature is None:
            self._forget(key)
            return
        with self._lock:
            if not self._settled_locked(key, signature):
                self._merge(folder, path, signature, event_at)

    def _observe_scanned(self, folder: _Folder, paths: list[Path]) -> None:
        """A batch of files a scan found: one ``known_sources`` question for those we have
        no record of (after a restart: all of them), instead of one query per file."""
        looked: dict[str, tuple[Path, Signature, bool]] = {}
        for path in paths:
            key, signature = str(path), _signature_of(path)
            if signature is None:
                self._forget(key)
                continue
            with self._lock:
                if self._settled_locked(key, signature):
                    continue
                ask = key not in self._pending and signature != _UNREADABLE
            looked[key] = (path, signature, ask)
        known = self._ledger.known_sources([key for key, (*_, ask) in looked.items() if ask])
        now = self._clock()
        with self._lock:
            for key, (path, signature, asked) in looked.items():
                if asked and known.get(key) == signature:
                    self._seen[key] = signature  # recorded before (by us, before a restart)
                elif not self._settled_locked(key, signature):  # or settled meanwhile
                    candidate = self._merge(folder, path, signature, now)
                    candidate.known_checked |= asked

    def _settled_locked(self, key: str, signature: Signature) -> bool:
        """Taken before, unchanged since, and not being looked at now."""
        return key not in self._pending and self._seen.get(key) == signature

    def _merge(
        self, folder: _Folder, path: Path, signature: Signature, changed_at: float
    ) -> _Candidate:
        """Caller holds the lock. An event or a new signature restarts the window."""
        key = str(path)
        candidate = self._pending.get(key)
        if candidate is None:
            candidate = _Candidate(path, folder, signature, changed_at + folder.window_s)
            self._pending[key] = candidate
            self._seen.pop(key, None)
            return candidate
        if candidate.signature != signature:
            changed_at = max(changed_at, self._clock())
            candidate.known_checked = True
        elif changed_at + folder.window_s <= candidate.due_at:
            return candidate  # a rescan or stale event that tells us nothing new
        candidate.signature = signature
        candidate.version += 1
        candidate.due_at = max(candidate.due_at, changed_at + folder.window_s)
        return candidate

    def _forget(self, key: str) -> None:
        with self._lock:
            dropped = self._pending.pop(key, None)
            self._seen.pop(key, None)
        if dropped is not None:
            self._log.debug("watch.vanished", path=key)

    def _ripe_candidates(self, now: float) -> list[tuple[_Candidate, int]]:
        """Candidates whose window passed and whose size and mtime are still as last seen."""
        with self._lock:
            due = [c for c in self._pending.values() if not c.in_flight and c.due_at <= now]
        ready = []
        for candidate in due:
            signature = _signature_of(candidate.path)
            if signature is None:
                self._forget(str(candidate.path))
                continue
            with self._lock:
                if signature != candidate.signature:
                    candidate.signature = signature
                    candidate.known_checked = True
                    candidate.version += 1
                    candidate.due_at = now + candidate.folder.window_s
                    continue
                candidate.in_flight = True
                ready.append((candidate, candidate.version))
        return ready

    def _take(self, ready: list[tuple[_Candidate, int]]) -> None:
        """Hash in the pool; here, write whatever finished since the last write to the
        ledger in one transaction, until all are written."""
        futures: dict[Future[FileIdentity | IntakeResult], tuple[_Candidate, int]] = {
            self._pool.submit(
                inspect_file, self._ledger, c.path, watch_root=c.folder.root, check_known=check
            ): (c, version)
            for c, version, check in self._settle_known(ready)
        }
        waiting = set(futures)
        while waiting and not self._stop.is_set():
            done, waiting = wait(waiting, return_when=FIRST_COMPLETED)
            # In name order, so the photos of a burst get their job ids (claim order) by name.
            finished = sorted(
                ((*futures[future], future) for future in done), key=lambda f: str(f[0].path)
            )
            for start in range(0, len(finished), _RECORD_BATCH):
                self._record_batch(finished[start : start + _RECORD_BATCH])
        for future in waiting:
            future.cancel()
            with self._lock:
                futures[future][0].in_flight = False

    def _settle_known(
        self, ready: list[tuple[_Candidate, int]]
    ) -> list[tuple[_Candidate, int, bool]]:
        """Ask the ledger once which of ``ready`` it recorded before with this (size, mtime)
        (after a restart: files that arrived by event) and settle those unread. Returns the
        rest, each with whether ``inspect_file`` must still ask the ledger about it."""
        ask = [str(c.path) for c, _ in ready if _may_be_known(c)]
        try:
            known = self._ledger.known_sources(ask) if ask else {}
        except Exception:  # noqa: BLE001 - inspect_file asks again per file, and reports it
            self._log.exception("watch.known_sources_failed", files=len(ask))
            return [(c, version, not c.known_checked) for c, version in ready]
        to_hash = []
        for candidate, version in ready:
            if not _may_be_known(candidate):
                to_hash.append((candidate, version, not candidate.known_checked))
            elif known.get(str(candidate.path)) != candidate.signature:
                to_hash.append((candidate, version, False))  # just asked: not known
            else:
                size, mtime_ns = candidate.signature
                known_result = IntakeResult(
                    candidate.path, IntakeStatus.KNOWN, size_bytes=size, mtime_ns=mtime_ns
                )
                self._settle(candidate, version, known_result)
        return to_hash

    def _record_batch(
        self, finished: list[tuple[_Candidate, int, Future[FileIdentity | IntakeResult]]]
    ) -> None:
        """Settle a batch of hashed files; the new ones are written in one transaction."""
        results: list[IntakeResult | None] = []
        identities: list[FileIdentity] = []
        for candidate, _, future in finished:
            try:
                outcome = future.result()
            except Exception as exc:  # noqa: BLE001 - a bug in inspection: retry the file
                outcome = self._failed(candidate.path, exc)
            results.append(outcome if isinstance(outcome, IntakeResult) else None)
            if isinstance(outcome, FileIdentity):
                identities.append(outcome)
        recorded = iter(self._record(identities))
        for (candidate, version, _), result in zip(finished, results, strict=True):
            self._settle(candidate, version, result if result is not None else next(recorded))

    def _record(self, identities: list[FileIdentity]) -> list[IntakeResult]:
        if not identities:
            return []
        try:
            return record_files(self._ledger, identities, pipeline_version=self._pipeline_version)
        except Exception:  # noqa: BLE001 - logged; each file is then tried on its own
            # One bad file must not hold back the others: one transaction each, as before.
            self._log.exception("watch.enqueue_batch_failed", files=len(identities))
        results = []
        for identity in identities:
            try:
                results.append(
                    record_file(self._ledger, identity, pipeline_version=self._pipeline_version)
                )
            except Exception as exc:  # noqa: BLE001 - the file stays pending and is retried
                results.append(self._failed(identity.path, exc))
        return results

    def _failed(self, path: Path, exc: Exception) -> IntakeResult:
        # Most likely the ledger (locked past its timeout, PostgreSQL down): keep the file.
        self._log.exception("watch.enqueue_failed", path=str(path))
        return IntakeResult(path, IntakeStatus.RETRY_LATER, reason=type(exc).__name__)

    def _settle(self, candidate: _Candidate, version: int, result: IntakeResult) -> None:
        key = str(candidate.path)
        with self._lock:
            candidate.in_flight = False
            if self._pending.get(key) is not candidate:
                return  # vanished meanwhile
            if result.settled and candidate.version == version:
                del self._pending[key]
                self._seen[key] = candidate.signature
            elif not result.settled:
                candidate.attempts += 1
                candidate.due_at = self._clock() + _retry_delay(candidate)
            # else: it changed while we read it; the new window is already set.
        if result.reason == "vanished":
            self._forget(key)
        self._log_result(result, candidate)

    def _log_result(self, result: IntakeResult, candidate: _Candidate) -> None:
        fields = {"path": str(result.path), "job_id": result.job_id, "reason": result.reason}
        if result.status is IntakeStatus.RETRY_LATER and result.reason != "vanished":
            self._log.warning("watch.retry_later", attempts=candidate.attempts, **fields)
        elif result.status is IntakeStatus.ENQUEUED and result.reason:
            self._log.warning("watch.enqueued_unreadable", **fields)
        elif result.status in (IntakeStatus.ENQUEUED, IntakeStatus.DUPLICATE):
            self._log.info(f"watch.{result.status}", requeued=result.requeued, **fields)
        else:
            self._log.debug(f"watch.{result.status}", **fields)

    # -- scanning and attaching --------------------------------------------------------------

    def rescan(self) -> None:
        """Attach folders that were missing (or re-attach remounted ones), then look at every
        file: unknown or changed ones become candidates. Safe to call from any thread."""
        with self._rescan_lock:
            for folder in self._folders:
                if self._stop.is_set():
                    return
                if self._ensure_attached(folder):
                    self._scan_root(folder)

    def _scan_root(self, folder: _Folder) -> None:
        prefix = str(folder.root) + os.sep
        with self._lock:
            before = {key for key in self._seen if key.startswith(prefix)}
        found = self._scan(folder, folder.root)
        if self._stop.is_set():
            return  # an interrupted scan proves nothing about what is gone
        with self._lock:
            for key in before - found:
                self._seen.pop(key, None)  # deleted or renamed away: stop remembering it
        folder.last_scan_at = utcnow()

    def _scan(self, folder: _Folder, directory: Path) -> set[str]:
        """Observe every acceptable file below ``directory``; return their paths."""
        found: set[str] = set()
        recursive = folder.config.recursive
        if not recursive and directory != folder.root:
            return found
        batch: list[Path] = []
        for entry in walk_files(directory, recursive=recursive, on_error=self._walk_error):
            if self._stop.is_set():
                return found
            path = Path(entry.path)
            if name_filter_reason(path.relative_to(folder.root)) is not None:
                continue
            found.add(entry.path)
            batch.append(path)
            if len(batch) >= _SCAN_BATCH:
                self._observe_scanned(folder, batch)
                batch = []
        if batch:
            self._observe_scanned(folder, batch)
        return found

    def _walk_error(self, directory: Path, exc: OSError) -> None:
        self._log.warning("watch.unreadable_folder", path=str(directory), error=str(exc))

    def _ensure_attached(self, folder: _Folder) -> bool:
        """Make sure ``folder`` is observed; True when it exists and can be scanned."""
        try:
            st = os.stat(folder.root)
            if not stat.S_ISDIR(st.st_mode):
                raise NotADirectoryError(errno.ENOTDIR, "not a folder", str(folder.root))
        except OSError as exc:
            if folder.observer is not None:
                self._detach(folder)
            self._report(folder, f"watched folder unavailable: {exc.strerror or exc}")
            return False
        identity = (st.st_dev, st.st_ino)
        if folder.observer is not None:
            if folder.identity == identity and _observer_healthy(folder.observer):
                return True
            self._log.warning("watch.folder_replaced", path=str(folder.root))
            self._detach(folder)
        self._attach(folder, identity)
        return True

    def _attach(self, folder: _Folder, identity: tuple[int, int]) -> None:
        modes = [folder.config.mode]
        if folder.config.mode is WatchMode.INOTIFY:
            modes.append(WatchMode.POLL)  # when inotify runs out of watches, poll instead
        for mode in modes:
            observer = _new_observer(mode, folder.config.poll_interval_s)
            try:
                observer.schedule(
                    _EventHandler(self._note_event, folder),
                    str(folder.root),
                    recursive=folder.config.recursive,
                    event_filter=_EVENTS,
                )
                observer.start()
            except OSError as exc:
                _stop_observer(observer)
                self._report(folder, f"cannot watch with {mode}: {exc}")
                if exc.errno not in (errno.ENOSPC, errno.EMFILE):
                    return  # only inotify's limits are worth a polling fallback
                continue
            folder.observer, folder.identity, folder.active_mode = observer, identity, mode
            folder.error = None
            self._log.info("watch.attached", path=str(folder.root), mode=str(mode))
            return

    def _detach(self, folder: _Folder) -> None:
        if folder.observer is not None:
            _stop_observer(folder.observer)
        folder.observer, folder.identity, folder.active_mode = None, None, None

    def _report(self, folder: _Folder, message: str) -> None:
        """Log a folder problem at error level once; repeats (every rescan) at debug."""
        if folder.error != message:
            self._log.error("watch.folder_problem", path=str(folder.root), error=message)
        else:
            self._log.debug("watch.folder_problem", path=str(folder.root), error=message)
        folder.error = message


def _signature_of(path: Path) -> Signature | None:
    """(size, mtime_ns) following symlinks; None when gone or not a regular file."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError:
        return _UNREADABLE
    if not stat.S_ISREG(st.st_mode):
        return None
    return st.st_size, st.st_mtime_ns


def _may_be_known(candidate: _Candidate) -> bool:
    """Whether the ledger may hold this (size, mtime) for the file: not when we saw it change
    to it ourselves, nor when it could not be stat'ed (inspect_file sorts that out)."""
    return not candidate.known_checked and candidate.signature != _UNREADABLE


def _retry_delay(candidate: _Candidate) -> float:
    base = max(candidate.folder.window_s, 1.0)
    return min(_RETRY_MAX_S, base * 2 ** min(candidate.attempts - 1, 6))


def _new_observer(mode: WatchMode, poll_interval_s: float) -> BaseObserver:
    if mode is WatchMode.POLL:
        return PollingObserver(timeout=poll_interval_s)
    return Observer()


def _observer_healthy(observer: BaseObserver) -> bool:
    # An emitter stops by itself when its folder is deleted (inotify DELETE_SELF, or the
    # polling snapshot failing with "not found"); the observer must then be rebuilt.
    emitters: Iterable[threading.Thread] = observer.emitters
    return observer.is_alive() and all(emitter.is_alive() for emitter in emitters)


def _stop_observer(observer: BaseObserver) -> None:
    observer.stop()
    if observer.is_alive():
        observer.join(timeout=_STOP_JOIN_S)
