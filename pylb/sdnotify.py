"""systemd's notify protocol (sd_notify(3)), without libsystemd.

With `Type=notify` systemd waits for READY=1 before it calls the unit started (so a
`systemctl start pylb && curl VIP` never races the listeners), tracks RELOADING=1 ...
READY=1 around a SIGHUP reload, knows a stop is in progress from STOPPING=1, and with
`WatchdogSec=` kills and restarts a master that stops sending WATCHDOG=1.

The protocol is one datagram of newline-separated `KEY=VALUE` lines to the AF_UNIX socket
named by $NOTIFY_SOCKET: a path, or an abstract name written with a leading "@". Sending
never raises: a notification that cannot be delivered must not take the load balancer
down (systemd itself treats a missing READY=1 as a start timeout, which is the signal).

Only the master notifies (the unit says `NotifyAccess=main`): children's messages would be
dropped by systemd anyway.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger("pylb.sdnotify")


def socket_address(value: str) -> str | bytes:
    """The sockaddr for a $NOTIFY_SOCKET value: "@name" is the abstract name "\\0name"
    (as sd_notify does), anything else a filesystem path."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds: what systemd wants in MONOTONIC_USEC= with
    RELOADING=1 (it is how it tells a new reload from a stale message)."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def watchdog_interval(env: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """How often to send WATCHDOG=1, in seconds, or None when no watchdog is asked for.

    systemd sets WATCHDOG_USEC (and WATCHDOG_PID, the process it means). As
    sd_watchdog_enabled(3) advises, we ping at half the timeout, so one late loop turn does
    not get the service killed. A WATCHDOG_PID naming another process (the variable was
    inherited) means "not for you". Garbage or zero means no watchdog.
    """
    env = os.environ if env is None else env
    raw = env.get("WATCHDOG_USEC", "")
    if not raw.isdigit() or len(raw) > 19:  # never bare int() on outside input
        return None
    usec = int(raw)
    if usec <= 0:
        return None
    wpid = env.get("WATCHDOG_PID")
    if wpid is not None and (
        not wpid.isdigit() or int(wpid) != (os.getpid() if pid is None else pid)
    ):
        return None
    return usec / 2_000_000


class SdNotifier:
    """A connected-on-demand notify socket. Disabled (every call a cheap no-op returning
    False) when $NOTIFY_SOCKET is unset, i.e. when not run by systemd."""

    __slots__ = ("_sock", "address")

    def __init__(self, address: str | None) -> None:
        self.address = address or None
        self._sock: socket.socket | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, unset: bool = False) -> SdNotifier:
        """The notifier systemd configured. `unset=True` removes NOTIFY_SOCKET (and the
        watchdog variables) from os.environ, so forked children and notify scripts do
        not inherit them (sd_notify's unset_environment)."""
        env = os.environ if env is None else env
        notifier = cls(env.get("NOTIFY_SOCKET"))
        if unset:
            for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
                os.environ.pop(key, None)
        return notifier

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *lines: str) -> bool:
        """Send one datagram made of `lines`; True when it was handed to the kernel."""
        if self.address is None:
            return False
        data = "\n".join(lines).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(data, socket_address(self.address))
        except OSError as e:
            log.warning("sd_notify to %s failed: %s", self.address, e.strerror or e)
            self.close()
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Started, or finished reloading (READY=1 also ends a RELOADING=1)."""
        lines = ["READY=1"]
        if status:
            lines.append(f"STATUS={status}")
        lines.append(f"MAINPID={os.getpid()}")
        return self.send(*lines)

    def reloading(self, status: str | None = None) -> bool:
        lines = ["RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}"]
        if status:
            lines.append(f"STATUS={status}")
        return self.send(*lines)

    def stopping(self, status: str | None = None) -> bool:
        lines = ["STOPPING=1"]
        if status:
            lines.append(f"STATUS={status}")
        return self.send(*lines)

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def status(self, text: str) -> bool:
        """Free text shown by `systemctl status` (one line: newlines are flattened)."""
        return self.send("STATUS=" + " ".join(text.splitlines()))

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()


class Watchdog:
    """When to send WATCHDOG=1: every `interval` seconds, and only while the process it
    vouches for is healthy (the master pings only while its children are alive, so a
    master whose workers keep dying is restarted by systemd). Pure: the caller passes the
    clock and does the sending.
    """

    __slots__ = ("due", "interval")

    def __init__(self, interval: float | None, now: float) -> None:
        self.interval = interval
        self.due = None if interval is None else now

    def timeout(self, now: float) -> float | None:
        """Seconds until the next ping is due (for select()), None without a watchdog."""
        return None if self.due is None else max(0.0, self.due - now)

    def tick(self, now: float, healthy: bool) -> bool:
        """True when a WATCHDOG=1 should be sent now. Not healthy: no ping, ask again
        at the next interval (systemd's timeout then runs out unless health returns)."""
        if self.due is None or self.interval is None or now < self.due:
            return False
        self.due = now + self.interval
        return healthy
