"""The systemd notification protocol (sd_notify), without libsystemd.

A datagram to the socket named in $NOTIFY_SOCKET; a no-op when not run by systemd.
"""

from __future__ import annotations

import os
import socket
from contextlib import suppress


class SystemdNotifier:
    def __init__(self, address: str | None = None) -> None:
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        if address and address.startswith("@"):
            address = "\0" + address[1:]  # abstract namespace socket
        self._address = address or None

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, **fields: str | int) -> None:
        """``notify(READY=1, STATUS="...")`` sends ``READY=1\\nSTATUS=...``."""
        if self._address is None:
            return
        message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        # OSError: systemd went away (shutdown); there is nothing useful to do about it.
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock, suppress(OSError):
            sock.sendto(message, self._address)

    @staticmethod
    def watchdog_interval_s() -> float | None:
        """Half of WatchdogSec (systemd's advice), if the watchdog is on for this process."""
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if not usec or (pid and int(pid) != os.getpid()):
            return None
        return int(usec) / 2_000_000
