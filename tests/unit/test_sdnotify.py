"""The sd_notify protocol against a fake NOTIFY_SOCKET: a real unix datagram socket, bound
at a path in tmp_path or at an abstract name, read back as systemd would."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator

import pytest

from pylb.sdnotify import SdNotifier, Watchdog, socket_address, watchdog_interval


class FakeSystemd:
    """The receiving end of NOTIFY_SOCKET."""

    def __init__(self, address: str) -> None:
        self.address = address  # as written in NOTIFY_SOCKET
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(socket_address(address))
        self.sock.settimeout(5.0)  # a missing datagram fails the test, it does not hang

    def recv(self) -> dict[str, str]:
        data = self.sock.recv(4096).decode()
        return dict(line.split("=", 1) for line in data.split("\n"))

    def pending(self) -> bool:
        self.sock.setblocking(False)
        try:
            self.sock.recv(4096, socket.MSG_PEEK)
        except BlockingIOError:
            return False
        finally:
            self.sock.settimeout(5.0)
        return True

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(params=["path", "abstract"])
def systemd(request: pytest.FixtureRequest, tmp_path) -> Iterator[FakeSystemd]:
    if request.param == "path":
        address = str(tmp_path / "notify.sock")
    else:
        address = f"@pylb-test-{uuid.uuid4().hex}"
    fake = FakeSystemd(address)
    try:
        yield fake
    finally:
        fake.close()


def test_socket_address_forms():
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("@abc") == b"\0abc"


def test_ready_reloading_stopping_watchdog_status(systemd):
    n = SdNotifier.from_env({"NOTIFY_SOCKET": systemd.address})
    assert n.enabled
    try:
        assert n.ready(status="3 listeners")
        msg = systemd.recv()
        assert msg["READY"] == "1" and msg["STATUS"] == "3 listeners"
        assert msg["MAINPID"] == str(os.getpid())

        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert n.reloading()
        msg = systemd.recv()
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert msg["RELOADING"] == "1"
        assert msg["MONOTONIC_USEC"].isdigit()
        assert before <= int(msg["MONOTONIC_USEC"]) <= after

        assert n.ready()
        assert systemd.recv()["READY"] == "1"
        assert n.watchdog()
        assert systemd.recv() == {"WATCHDOG": "1"}
        assert n.status("reloading\nconfig")
        assert systemd.recv() == {"STATUS": "reloading config"}
        assert n.stopping()
        assert systemd.recv() == {"STOPPING": "1"}
    finally:
        n.close()


def test_disabled_without_notify_socket(monkeypatch):
    n = SdNotifier.from_env({})
    assert not n.enabled
    assert n.ready() is False and n.watchdog() is False


def test_unreachable_socket_does_not_raise(tmp_path):
    n = SdNotifier(str(tmp_path / "nobody-listens"))
    assert n.ready() is False
    assert n.stopping() is False  # tries again, still no exception


def test_from_env_unset_removes_variables(monkeypatch, systemd):
    monkeypatch.setenv("NOTIFY_SOCKET", systemd.address)
    monkeypatch.setenv("WATCHDOG_USEC", "10000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    n = SdNotifier.from_env(unset=True)
    assert n.address == systemd.address
    assert "NOTIFY_SOCKET" not in os.environ and "WATCHDOG_USEC" not in os.environ
    assert n.ready()
    assert systemd.recv()["READY"] == "1"
    n.close()


def test_watchdog_interval_parsing():
    pid = os.getpid()
    assert watchdog_interval({"WATCHDOG_USEC": "10000000"}) == 5.0  # half of WatchdogSec=10s
    assert watchdog_interval({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": str(pid)}) == 5.0
    assert watchdog_interval({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "1"}, pid=2) is None
    assert watchdog_interval({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "7"}, pid=7) == 1.5
    for bad in ("", "0", "-5", "1e6", " 100", "99999999999999999999999"):
        assert watchdog_interval({"WATCHDOG_USEC": bad}) is None
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "1000", "WATCHDOG_PID": "x"}) is None


def test_watchdog_schedule_pings_only_while_healthy(systemd):
    n = SdNotifier(systemd.address)
    wd = Watchdog(5.0, now=100.0)
    assert wd.timeout(100.0) == 0.0
    assert wd.tick(100.0, healthy=True) is True  # first ping at once
    assert wd.timeout(101.0) == 4.0
    assert wd.tick(101.0, healthy=True) is False  # not due
    assert wd.tick(105.0, healthy=False) is False  # due, but a child is dead: no ping
    assert wd.tick(110.0, healthy=True) is True
    if wd.tick(115.0, healthy=True):
        n.watchdog()
    assert systemd.recv() == {"WATCHDOG": "1"}
    assert not systemd.pending()
    n.close()
    off = Watchdog(None, now=0.0)
    assert off.timeout(1.0) is None and off.tick(1e9, healthy=True) is False
