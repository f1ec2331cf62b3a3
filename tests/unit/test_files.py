"""Atomic writes leave no debris: a temp file names its writer, and a dead writer's is swept."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from openeyesd.files import TEMP_PREFIX, atomic_open, remove_orphaned_temp_files


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def host_tag() -> str:
    return "".join(c if c.isalnum() or c == "-" else "-" for c in socket.gethostname())[:48]


def test_a_temp_file_names_this_host_and_process(tmp_path: Path) -> None:
    with atomic_open(tmp_path / "out.jpg") as handle:
        handle.write(b"x")
        (temp,) = [p.name for p in tmp_path.iterdir()]
    assert temp.startswith(f"{TEMP_PREFIX}{host_tag()}.{os.getpid()}.")
    assert [p.name for p in tmp_path.iterdir()] == ["out.jpg"]


def test_a_failed_write_removes_its_temp_file(tmp_path: Path) -> None:
    with pytest.raises(OSError), atomic_open(tmp_path / "out.jpg") as handle:
        handle.write(b"x")
        raise OSError("disk full")
    assert list(tmp_path.iterdir()) == []


def test_only_temp_files_of_dead_processes_on_this_host_are_removed(tmp_path: Path) -> None:
    orphan = tmp_path / f"{TEMP_PREFIX}{host_tag()}.{dead_pid()}.abc123"
    in_flight = tmp_path / f"{TEMP_PREFIX}{host_tag()}.{os.getpid()}.def456"
    other_host = tmp_path / f"{TEMP_PREFIX}another-nas-client.{dead_pid()}.ghi789"
    photo = tmp_path / "IMG_0001.jpg"
    for path in (orphan, in_flight, other_host, photo):
        path.write_bytes(b"x")
    assert remove_orphaned_temp_files(tmp_path) == [orphan]
    assert sorted(tmp_path.iterdir()) == sorted([in_flight, other_host, photo])


def test_sweeping_a_missing_folder_is_a_no_op(tmp_path: Path) -> None:
    assert remove_orphaned_temp_files(tmp_path / "gone") == []
