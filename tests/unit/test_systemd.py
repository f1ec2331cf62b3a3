"""The unit file and the sd_notify protocol the daemon speaks to systemd."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from openeyesd.sdnotify import SystemdNotifier

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "openeyesd.service"


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_unit_has_the_settings_the_daemon_relies_on() -> None:
    settings = unit_settings()
    assert settings["Type"] == ["notify"]
    assert settings["Restart"] == ["on-failure"]
    assert settings["RestartPreventExitStatus"] == ["2"]  # daemon.EXIT_CONFIG
    assert settings["ProtectSystem"] == ["strict"] and settings["ReadWritePaths"]
    assert settings["PrivateTmp"] == ["true"] and settings["NoNewPrivileges"] == ["true"]
    assert settings["User"] == ["openeyes"] and "WatchdogSec" in settings
    # The daemon's default stop timeout (60 s) must fit inside systemd's.
    assert int(settings["TimeoutStopSec"][0]) > 60


def test_every_setting_is_explained_by_a_comment() -> None:
    """Each setting sits in a block of settings that starts with a comment."""
    uncommented, commented = [], False
    for line in UNIT.read_text().splitlines():
        if not line.strip() or line.startswith("["):
            commented = False
        elif line.startswith("#"):
            commented = True
        elif not commented:
            uncommented.append(line)
    assert uncommented == []


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not found")
def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    daemon = Path(sys.executable).parent / "openeyesd"
    unit = tmp_path / "openeyesd.service"
    unit.write_text(UNIT.read_text().replace("/opt/openeyes/.venv/bin/openeyesd", str(daemon)))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_notifier_sends_datagrams_to_notify_socket(tmp_path: Path) -> None:
    address = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(address)
        receiver.settimeout(5)
        SystemdNotifier(address).notify(READY=1, STATUS="queue 3")
        assert receiver.recv(1024) == b"READY=1\nSTATUS=queue 3"


def test_notifier_is_silent_without_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = SystemdNotifier()
    assert not notifier.enabled
    notifier.notify(READY=1)  # must not raise


def test_watchdog_interval_is_half_of_watchdog_sec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "120000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert SystemdNotifier.watchdog_interval_s() == 60.0
    monkeypatch.setenv("WATCHDOG_PID", "1")
    assert SystemdNotifier.watchdog_interval_s() is None  # meant for another process
