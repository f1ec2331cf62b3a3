"""Decide whether a dropped file is one we take, and record it in the ledger.

No threads and no timing live here: the watcher (``openeyesd.watcher``) decides *when* a file is
stable; this module decides *whether* and *as what* it is taken, and ``openeyesctl enqueue``
uses the same functions for a file or folder named on the command line.

Taking a file has two halves so the watcher can hash several files in parallel while one
thread writes to the ledger:

- ``inspect_file``: name filters, a cheap ``is_known_source`` check (path + size + mtime: no
  hashing), the safety checks, then the SHA-256. It returns a ``FileIdentity`` or, when there
  is nothing to record, an ``IntakeResult``.
- ``record_file``: one ledger transaction that creates the job or attaches the path to the
  existing job with the same content; ``record_files`` does it for several files in one
  transaction (the watcher's files whose hashes completed together).

Files we must not read (a symlink that leads outside the watched folder: the daemon may run
with broader rights than the person uploading) or cannot read (permission denied) still get a
job, under ``placeholder_identity``, so their failure reaches the ledger and ``openeyesctl``
instead of vanishing into a log line.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path, PurePath

from openeyesd.files import TEMP_PREFIX, placeholder_identity
from openeyesd.ledger import EnqueueItem, EnqueueResult, Ledger

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".tif", ".tiff", ".webp", ".gif", ".bmp"}
)

#: Whole names (compared lower-case) that NAS boxes and desktop systems scatter in shares.
_JUNK_NAMES = {
    "@eadir": "nas_metadata",  # Synology thumbnails and indexes
    ".@__thumb": "nas_metadata",  # QNAP thumbnails
    "@recycle": "recycle_bin",  # QNAP
    "#recycle": "recycle_bin",  # Synology
    "#snapshot": "nas_metadata",  # Synology snapshot browsing
    "$recycle.bin": "recycle_bin",  # Windows
    "system volume information": "os_metadata",
    "lost+found": "os_metadata",
    ".ds_store": "os_metadata",
    "thumbs.db": "os_metadata",
    "ehthumbs.db": "os_metadata",
    "desktop.ini": "os_metadata",
}
_PARTIAL_SUFFIXES = (".part", ".partial", ".filepart", ".crdownload", ".tmp", ".download")
#: rsync writes ".<name>.<6 random characters>" and renames it into place when complete.
_RSYNC_TEMP = re.compile(r"^\..+\.[A-Za-z0-9]{6}$")

_HASH_CHUNK = 1024 * 1024


class IntakeStatus(StrEnum):
    ENQUEUED = "enqueued"  # a new job was created
    DUPLICATE = "duplicate"  # same content already has a job; this path was recorded on it
    KNOWN = "known"  # this path, size and mtime were recorded before: nothing read
    IGNORED = "ignored"  # junk, not an image, not a regular file
    RETRY_LATER = "retry_later"  # busy or vanished now; try again, do not drop


@dataclass(frozen=True)
class IntakeResult:
    path: Path
    status: IntakeStatus
    job_id: int | None = None
    #: Why it was ignored or must be retried; for a placeholder job, the failure kind
    #: ("unsafe_path", "permission_denied") the ingest stage will record.
    reason: str | None = None
    sha256: str | None = None
    size_bytes: int | None = None
    mtime_ns: int | None = None
    requeued: bool = False

    @property
    def settled(self) -> bool:
        """True when the file needs no further look until it changes."""
        return self.status is not IntakeStatus.RETRY_LATER


@dataclass(frozen=True)
class FileIdentity:
    """Everything ``Ledger.enqueue`` needs, computed without touching the ledger."""

    path: Path
    watch_root: Path
    relative_path: str
    sha256: str
    size_bytes: int
    mtime_ns: int
    #: Set when ``sha256`` is a placeholder: the kind of failure ingest will record.
    placeholder: str | None = None


# -- name filters -------------------------------------------------------------------------------


def junk_reason_for_name(name: str) -> str | None:
    """Why a single path component is junk, or None. Case-insensitive throughout: the names
    come from Windows and macOS, whose file systems are, and no photo is called THUMBS.DB."""
    lower = name.lower()
    if lower in _JUNK_NAMES:
        return _JUNK_NAMES[lower]
    if name.startswith(TEMP_PREFIX):
        return "openeyes_temp"
    if name.startswith("._"):
        return "appledouble"  # macOS resource forks on SMB/NFS
    if lower.startswith(".trash-"):
        return "recycle_bin"  # freedesktop trash on removable and network volumes
    if _RSYNC_TEMP.match(name):
        return "rsync_temp"
    if name.startswith("."):
        return "hidden"
    if name.startswith("~"):
        return "temp_or_lock"  # Office lock files (~$x), editors' backups
    if lower.endswith(_PARTIAL_SUFFIXES):
        return "partial_upload"
    return None


def junk_reason(relative_path: PurePath) -> str | None:
    for part in relative_path.parts:
        if part in ("", ".", "..", relative_path.anchor):
            continue
        if reason := junk_reason_for_name(part):
            return reason
    return None


def is_junk(relative_path: PurePath) -> bool:
    """True when any component of ``relative_path`` is NAS/OS junk, a partial upload, a temp
    name or hidden."""
    return junk_reason(relative_path) is not None


def is_image_name(path: str | PurePath) -> bool:
    """Only the formats ingest can decode. HEIC/HEIF is deliberately absent (no decoder)."""
    return PurePath(path).suffix.lower() in IMAGE_SUFFIXES


#: A sub-folder with this name holds reference portraits for the photos beside it: donors for
#: the eye stages, never jobs of their own.
REFERENCES_DIRNAME = "references"


def name_filter_reason(relative_path: PurePath) -> str | None:
    """Why a file is not taken, judged by its name alone (no system call)."""
    if reason := junk_reason(relative_path):
        return f"junk:{reason}"
    if any(part.lower() == REFERENCES_DIRNAME for part in relative_path.parts[:-1]):
        return "reference_portrait"
    if not is_image_name(relative_path):
        return "not_an_image"
    return None


# -- taking one file ----------------------------------------------------------------------------


def enqueue_file(
    ledger: Ledger,
    path: Path,
    *,
    watch_root: Path,
    pipeline_version: str,
    force: bool = False,
) -> IntakeResult:
    """Take one file now (no stability wait: the caller decided it is complete)."""
    identity = inspect_file(ledger, path, watch_root=watch_root, force=force)
    if isinstance(identity, IntakeResult):
        return identity
    return record_file(ledger, identity, pipeline_version=pipeline_version, force=force)


def inspect_file(
    ledger: Ledger,
    path: Path,
    *,
    watch_root: Path,
    force: bool = False,
    check_known: bool = True,
) -> FileIdentity | IntakeResult:
    """Filters, known-source check, safety checks and hash; no ledger writes.

    ``check_known=False`` skips the ``is_known_source`` query, for a caller that has just
    asked it about this same size and mtime (the watcher after a scan).
    Raises ValueError when ``path`` is not below ``watch_root`` (a caller's mistake)."""
    path, watch_root = _absolute(path), _absolute(watch_root)
    relative = path.relative_to(watch_root)  # ValueError when outside
    if reason := name_filter_reason(relative):
        return IntakeResult(path, IntakeStatus.IGNORED, reason=reason)
    real_root = Path(os.path.realpath(watch_root))
    real = Path(os.path.realpath(path))
    if not real.is_relative_to(real_root):
        return _placeholder(ledger, path, watch_root, "unsafe_path", force=force)
    try:
        st = os.stat(real)
    except PermissionError:
        return _placeholder(ledger, path, watch_root, "permission_denied", force=force)
    except OSError as exc:
        return _busy(path, exc)
    if not stat.S_ISREG(st.st_mode):
        return IntakeResult(path, IntakeStatus.IGNORED, reason="not_a_regular_file")
    if check_known and not force and ledger.is_known_source(str(path), *_signature(st)):
        return _known(path, st.st_size, st.st_mtime_ns)
    return _hash_identity(ledger, path, real, watch_root, st, force=force)


def record_file(
    ledger: Ledger, identity: FileIdentity, *, pipeline_version: str, force: bool = False
) -> IntakeResult:
    """One ledger transaction: a new job, or this path recorded on the existing one."""
    return record_files(ledger, [identity], pipeline_version=pipeline_version, force=force)[0]


def record_files(
    ledger: Ledger,
    identities: Sequence[FileIdentity],
    *,
    pipeline_version: str,
    force: bool = False,
) -> list[IntakeResult]:
    """``record_file`` for each, in one ledger transaction: all are recorded or none."""
    items = [
        EnqueueItem(
            sha256=identity.sha256,
            size_bytes=identity.size_bytes,
            source_path=str(identity.path),
            watch_root=str(identity.watch_root),
            relative_path=identity.relative_path,
            mtime_ns=identity.mtime_ns,
            pipeline_version=pipeline_version,
            force=force,
        )
        for identity in identities
    ]
    outcomes = ledger.enqueue_many(items)
    return [_recorded(i, o) for i, o in zip(identities, outcomes, strict=True)]


def _recorded(identity: FileIdentity, outcome: EnqueueResult) -> IntakeResult:
    return IntakeResult(
        identity.path,
        IntakeStatus.ENQUEUED if outcome.created else IntakeStatus.DUPLICATE,
        job_id=outcome.job_id,
        reason=identity.placeholder,
        sha256=identity.sha256,
        size_bytes=identity.size_bytes,
        mtime_ns=identity.mtime_ns,
        requeued=outcome.requeued,
    )


def _hash_identity(
    ledger: Ledger,
    path: Path,
    real: Path,
    watch_root: Path,
    before: os.stat_result,
    *,
    force: bool,
) -> FileIdentity | IntakeResult:
    try:
        digest, opened = hash_regular_file(real)
        after = os.stat(real)
    except PermissionError:
        return _placeholder(ledger, path, watch_root, "permission_denied", force=force)
    except OSError as exc:
        return _busy(path, exc)
    if (opened.st_dev, opened.st_ino) != (before.st_dev, before.st_ino):
        # Replaced between the checks and the open (maybe a symlink swapped in): look again.
        return IntakeResult(path, IntakeStatus.RETRY_LATER, reason="replaced_while_reading")
    if not stat.S_ISREG(opened.st_mode):
        return IntakeResult(path, IntakeStatus.IGNORED, reason="not_a_regular_file")
    if _signature(after) != _signature(before) or _signature(opened) != _signature(before):
        # Still being written: the hash may describe neither the old nor the new content.
        return IntakeResult(path, IntakeStatus.RETRY_LATER, reason="changed_while_reading")
    return FileIdentity(
        path=path,
        watch_root=watch_root,
        relative_path=path.relative_to(watch_root).as_posix(),
        sha256=digest,
        size_bytes=before.st_size,
        mtime_ns=before.st_mtime_ns,
    )


def open_for_hashing(path: Path) -> int:
    """Open without following a final symlink (one may be swapped in after our realpath
    check) and without blocking (a FIFO named like a photo would hang a plain open)."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    return os.open(path, flags)


def hash_regular_file(path: Path) -> tuple[str, os.stat_result]:
    """SHA-256 of a regular file and the ``fstat`` of exactly what was read."""
    fd = open_for_hashing(path)
    with os.fdopen(fd, "rb") as handle:
        opened = os.fstat(handle.fileno())
        if not stat.S_ISREG(opened.st_mode):
            return "", opened
        digest = hashlib.sha256()
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest(), opened


def _placeholder(
    ledger: Ledger, path: Path, watch_root: Path, kind: str, *, force: bool
) -> FileIdentity | IntakeResult:
    """A job for a file we must not or cannot read, identified by its own link/entry."""
    try:
        st = os.lstat(path)
    except FileNotFoundError as exc:
        return _busy(path, exc)
    except OSError:
        st = None  # not even listable: still give it a job, with what we know
    size, mtime_ns = (st.st_size, st.st_mtime_ns) if st else (0, 0)
    if not force and st and ledger.is_known_source(str(path), size, mtime_ns):
        return _known(path, size, mtime_ns)
    return FileIdentity(
        path=path,
        watch_root=watch_root,
        relative_path=path.relative_to(watch_root).as_posix(),
        sha256=placeholder_identity(kind, str(path), size, mtime_ns),
        size_bytes=size,
        mtime_ns=mtime_ns,
        placeholder=kind,
    )


def _busy(path: Path, exc: OSError) -> IntakeResult:
    if isinstance(exc, FileNotFoundError):
        reason = "vanished"
    else:
        reason = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
    return IntakeResult(path, IntakeStatus.RETRY_LATER, reason=reason)


def _known(path: Path, size: int, mtime_ns: int) -> IntakeResult:
    return IntakeResult(path, IntakeStatus.KNOWN, size_bytes=size, mtime_ns=mtime_ns)


def _signature(st: os.stat_result) -> tuple[int, int]:
    return st.st_size, st.st_mtime_ns


def _absolute(path: Path) -> Path:
    """Absolute and normalised, but symlinks kept: the path the user sees is the one we record."""
    return Path(os.path.abspath(path))


# -- folders ------------------------------------------------------------------------------------


def walk_files(
    folder: Path,
    *,
    recursive: bool = True,
    on_error: Callable[[Path, OSError], None] | None = None,
) -> Iterator[os.DirEntry[str]]:
    """Every non-directory entry below ``folder``, sorted per directory. Junk directories
    (``@eaDir``, ``#recycle``...) are not entered, nor are symlinked directories: they may
    lead outside the watched folder or into a loop; the files they point to inside the
    folder are found under their real location."""
    try:
        with os.scandir(folder) as listing:
            entries = sorted(listing, key=lambda entry: entry.name)
    except OSError as exc:
        if on_error is not None:
            on_error(folder, exc)
        return
    for entry in entries:
        try:
            is_dir = entry.is_dir(follow_symlinks=False)
        except OSError:
            is_dir = False
        if not is_dir:
            yield entry
        elif recursive and junk_reason_for_name(entry.name) is None:
            yield from walk_files(Path(entry.path), recursive=True, on_error=on_error)


def enqueue_tree(
    ledger: Ledger,
    folder: Path,
    *,
    watch_root: Path,
    pipeline_version: str,
    recursive: bool = True,
    force: bool = False,
) -> list[IntakeResult]:
    """Take a file, or every file below a folder, now (``openeyesctl enqueue PATH``).

    A folder that cannot be listed is reported as a RETRY_LATER result for that folder."""
    folder = _absolute(folder)
    if not folder.is_dir() or folder.is_symlink():
        return [
            enqueue_file(
                ledger,
                folder,
                watch_root=watch_root,
                pipeline_version=pipeline_version,
                force=force,
            )
        ]
    results: list[IntakeResult] = []

    def unreadable(directory: Path, exc: OSError) -> None:
        results.append(_busy(directory, exc))

    for entry in walk_files(folder, recursive=recursive, on_error=unreadable):
        results.append(
            enqueue_file(
                ledger,
                Path(entry.path),
                watch_root=watch_root,
                pipeline_version=pipeline_version,
                force=force,
            )
        )
    return results
