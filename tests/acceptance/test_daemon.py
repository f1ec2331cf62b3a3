"""openeyesd and openeyesctl as an operator runs them: real processes, real folders, signals."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
DAEMON_START_TIMEOUT_S = 60


def write_config(root: Path, *, extra: str = "") -> Path:
    config = root / "config.toml"
    config.write_text(
        f"""
[[watch]]
path = "incoming"
mode = "inotify"
stability_window_s = 0.3

[output]
path = "outgoing"

[state]
dir = "state"
min_free_mb = 1

[worker]
idle_poll_s = 0.1
heartbeat_s = 0.5
lease_s = 30
stop_timeout_s = 20

[retry]
base_delay_s = 0.2
max_delay_s = 1.0

[log]
format = "json"
level = "info"
{extra}
"""
    )
    (root / "incoming").mkdir(exist_ok=True)
    return config


class Daemon:
    def __init__(self, root: Path, config: Path) -> None:
        self.root, self.config = root, config
        self.process: subprocess.Popen[bytes] | None = None
        self.log = root / "daemon.log"

    def start(self) -> None:
        handle = self.log.open("ab")
        self.process = subprocess.Popen(
            [str(BIN / "openeyesd"), "--config", str(self.config)],
            stdout=handle, stderr=subprocess.STDOUT, cwd=self.root,
        )
        wait_for(lambda: bool(self.ctl("status")["workers"]), DAEMON_START_TIMEOUT_S,
                 "daemon registered its workers", self)

    def ctl(self, *args: str, check: bool = True) -> Any:
        result = subprocess.run(
            [str(BIN / "openeyesctl"), "--config", str(self.config), "--json", *args],
            capture_output=True, text=True, timeout=60,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"openeyesctl {args} -> {result.returncode}: {result.stderr}")
        return json.loads(result.stdout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        return self.process.wait(timeout=timeout)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def wait_for(predicate: Callable[[], bool], timeout: float, what: str,
             daemon: Daemon | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except (AssertionError, json.JSONDecodeError, subprocess.TimeoutExpired):
            pass
        time.sleep(0.1)
    log = daemon.tail() if daemon else ""
    raise AssertionError(f"timed out after {timeout}s waiting for: {what}\n{log}")


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    running = Daemon(tmp_path, write_config(tmp_path))
    yield running
    if running.process is not None and running.process.poll() is None:
        running.process.kill()
        running.process.wait()


def make_photo(path: Path, size: tuple[int, int] = (640, 480), seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    staging = path.parent.parent / "staging" / path.name
    staging.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(staging, quality=90)
    digest = hashlib.sha256(staging.read_bytes()).hexdigest()
    path.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, path)  # appears at once, as a finished upload
    return digest


def jobs_by_path(daemon: Daemon) -> dict[str, dict[str, Any]]:
    listing = daemon.ctl("jobs", "--limit", "1000")
    return {job["relative_path"]: job for job in listing["jobs"]}


def all_final(daemon: Daemon, count: int) -> bool:
    jobs = jobs_by_path(daemon)
    final = {"done", "skipped", "failed", "cancelled"}
    return len(jobs) == count and all(job["state"] in final for job in jobs.values())


def test_photos_dropped_in_come_out_with_sidecars_and_originals_intact(daemon: Daemon) -> None:
    daemon.start()
    incoming = daemon.root / "incoming"
    hashes = {
        "a.jpg": make_photo(incoming / "a.jpg", seed=1),
        "sub dir/b ü.jpg": make_photo(incoming / "sub dir" / "b ü.jpg", seed=2),
    }
    wait_for(lambda: all_final(daemon, 2), 60, "both jobs finished", daemon)
    jobs = jobs_by_path(daemon)
    for relative, digest in hashes.items():
        assert jobs[relative]["state"] == "done", daemon.tail()
        assert hashlib.sha256((incoming / relative).read_bytes()).hexdigest() == digest
        output = daemon.root / "outgoing" / relative
        assert output.exists()
        sidecar = json.loads(output.with_name(output.name + ".openeyes.json").read_text())
        assert sidecar["job_id"] == jobs[relative]["id"]
        assert sidecar["source"]["sha256"] == digest
        assert sidecar["eye_processing"]["ran"] in (True, False)
    assert not list((daemon.root / "incoming").rglob("*.openeyes.json"))
    assert daemon.stop() == 0


def test_bad_inputs_fail_with_a_reason_and_the_daemon_keeps_running(daemon: Daemon) -> None:
    daemon.start()
    incoming = daemon.root / "incoming"
    (incoming / "notes.jpg").write_text("this is not a photo")
    (incoming / "empty.jpg").write_bytes(b"")
    make_photo(daemon.root / "staging" / "x" / "full.jpg")
    whole = (daemon.root / "staging" / "x" / "full.jpg").read_bytes()
    (incoming / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    make_photo(incoming / "good.jpg", seed=3)
    wait_for(lambda: all_final(daemon, 4), 60, "all four jobs finished", daemon)
    jobs = jobs_by_path(daemon)
    assert jobs["notes.jpg"]["error_kind"] == "not_an_image"
    assert jobs["empty.jpg"]["error_kind"] == "empty_file"
    assert jobs["truncated.jpg"]["error_kind"] == "corrupt_image"
    assert jobs["good.jpg"]["state"] == "done"
    shown = daemon.ctl("jobs", "show", str(jobs["truncated.jpg"]["id"]))
    assert shown["job"]["error_message"]
    assert daemon.process is not None and daemon.process.poll() is None
    assert daemon.stop() == 0


def test_kill_9_mid_job_then_restart_completes_each_job_once(daemon: Daemon) -> None:
    daemon.start()
    incoming = daemon.root / "incoming"
    hashes = {f"big{n}.png": _big_png(incoming / f"big{n}.png", seed=n) for n in range(4)}
    killed_job = _kill_while_running(daemon)
    daemon.start()
    wait_for(lambda: all_final(daemon, len(hashes)), 120, "all jobs finished after restart",
             daemon)
    jobs = jobs_by_path(daemon)
    assert {job["state"] for job in jobs.values()} == {"done"}, daemon.tail()
    resumed = daemon.ctl("jobs", "show", str(killed_job))
    assert resumed["job"]["attempts"] == 2
    outputs = sorted(p.name for p in (daemon.root / "outgoing").iterdir())
    assert outputs == sorted([*hashes, *(f"{name}.openeyes.json" for name in hashes)])
    for name, digest in hashes.items():
        assert hashlib.sha256((incoming / name).read_bytes()).hexdigest() == digest
    assert daemon.stop() == 0


def _big_png(path: Path, seed: int) -> str:
    """Large enough that decoding takes a noticeable moment, so a kill lands mid-job."""
    return make_photo(path, size=(3000, 2000), seed=seed)


def _kill_while_running(daemon: Daemon) -> int:
    """kill -9 the daemon while the ledger shows a job running under its lease; return it."""
    ledger = daemon.root / "state" / "ledger.sqlite3"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with sqlite3.connect(ledger, timeout=10) as conn:
            row = conn.execute("SELECT id FROM jobs WHERE state = 'running'").fetchone()
        if row is not None:
            daemon.stop(signal.SIGKILL)
            with sqlite3.connect(ledger, timeout=10) as conn:
                state = conn.execute("SELECT state FROM jobs WHERE id = ?", row).fetchone()[0]
            if state == "running":
                return int(row[0])
            daemon.start()  # it finished just before the kill: try with the next job
        time.sleep(0.005)
    raise AssertionError("never saw a running job to kill\n" + daemon.tail())


def test_sigterm_exits_zero_and_invalid_config_exits_two(daemon: Daemon, tmp_path: Path) -> None:
    daemon.start()
    started = time.monotonic()
    assert daemon.stop() == 0
    assert time.monotonic() - started < 20
    bad = tmp_path / "bad.toml"
    bad.write_text('[[watch]]\npath = "in"\nmode = "carrier-pigeon"\n[output]\npath = "o"\n')
    result = subprocess.run([str(BIN / "openeyesd"), "--config", str(bad)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "watch.0.mode" in result.stderr and "carrier-pigeon" in result.stderr


def test_reload_applies_a_new_log_level(daemon: Daemon) -> None:
    daemon.start()
    text = daemon.config.read_text().replace('level = "info"', 'level = "debug"')
    daemon.config.write_text(text)
    result = subprocess.run([str(BIN / "openeyesctl"), "--config", str(daemon.config), "reload"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    wait_for(lambda: "reload.done" in daemon.log.read_text(), 10, "reload logged", daemon)
    assert daemon.stop() == 0
