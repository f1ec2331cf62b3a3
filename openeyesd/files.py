"""File helpers every part shares: atomic writes and content hashes.

An artifact or output is written to a temporary name in the same directory, flushed and
fsynced, then moved over the final name with ``os.replace`` (atomic on POSIX). A crash leaves
either the old file or the new one, never half of one. Temporary files start with
``.openeyes-tmp-<host>.<pid>.`` and are ignored by everything else; one whose process is gone
(a kill -9 or power cut mid-write) is removed by ``remove_orphaned_temp_files`` when the job
that left it runs again, so the output folder the studio browses holds no debris.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

TEMP_PREFIX = ".openeyes-tmp-"
_TEMP_OWNER = re.compile(re.escape(TEMP_PREFIX) + r"(?P<host>[A-Za-z0-9-]*)\.(?P<pid>\d+)\.")
#: The JSON sidecar sits beside each output: ``IMG_1.jpg`` -> ``IMG_1.jpg.openeyes.json``.
SIDECAR_SUFFIX = ".openeyes.json"
_CHUNK = 1024 * 1024


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fsync_dir(directory: Path) -> None:
    """Make a rename inside ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Open a temp file next to ``path``; on clean exit it replaces ``path`` atomically."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(prefix=_temp_prefix(), dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise
    fsync_dir(target.parent)


def _host_tag() -> str:
    """The host name as it can appear in a file name (NAS folders may be shared by hosts)."""
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:48]


def _temp_prefix() -> str:
    return f"{TEMP_PREFIX}{_host_tag()}.{os.getpid()}."


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process, but alive
    return True


def remove_orphaned_temp_files(directory: Path) -> list[Path]:
    """Delete temp files in ``directory`` left by dead processes on this host; return them.

    Only names that say which process wrote them are touched, and only when that process is
    gone: a write in flight (ours or another host's) is never pulled from under its writer.
    """
    removed: list[Path] = []
    host = _host_tag()
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return removed
    for entry in entries:
        owner = _TEMP_OWNER.match(entry.name)
        if owner is None or owner["host"] != host or process_alive(int(owner["pid"])):
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(entry.path)
            removed.append(Path(entry.path))
    return removed


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_open(path) as handle:
        handle.write(data)


def atomic_write_with(path: str | os.PathLike[str], write: Callable[[BinaryIO], None]) -> None:
    """Let ``write`` fill the file (e.g. ``image.save(handle, ...)``), then replace atomically."""
    with atomic_open(path) as handle:
        write(handle)


def atomic_copy(source: str | os.PathLike[str] | BinaryIO, target: str | os.PathLike[str]) -> str:
    """Copy ``source`` (a path or an open binary file) to ``target`` atomically; return the
    SHA-256 of what was copied."""
    digest = hashlib.sha256()
    with contextlib.ExitStack() as stack:
        src = source if hasattr(source, "read") else stack.enter_context(open(source, "rb"))
        dst = stack.enter_context(atomic_open(target))
        while chunk := src.read(_CHUNK):  # type: ignore[union-attr]
            digest.update(chunk)
            dst.write(chunk)
    return digest.hexdigest()


def placeholder_identity(reason: str, path: str, size_bytes: int, mtime_ns: int) -> str:
    """A stand-in content hash for a file we must not or cannot read (permission denied, a
    symlink leading outside the watched folder). It gives the file a job, so its failure is
    recorded in the ledger, and it changes when the file does. Ingest replaces it with the
    real hash if the file becomes readable and the operator retries the job."""
    return hashlib.sha256(f"{reason}\0{path}\0{size_bytes}\0{mtime_ns}".encode()).hexdigest()


def sidecar_path(output: Path) -> Path:
    return output.with_name(output.name + SIDECAR_SUFFIX)
