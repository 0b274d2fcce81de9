"""Tracking rules (links, scripts, proxy heartbeat) and notify scripts."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import sys
from pathlib import Path

import pytest

from pylb.vrrp.notify import Notifier, notify_argv, run_script
from pylb.vrrp.track import (
    HealthMonitor,
    ScriptTracker,
    effect,
    encode_heartbeat,
    parse_heartbeat,
    send_heartbeat,
    tracked_interfaces,
)
from pylb.vrrp.types import InstanceConfig, TrackConf, TrackInterface, TrackScript


def cfg(priority: int = 100, **track) -> InstanceConfig:
    return InstanceConfig(
        name="VI_1",
        interface="eth0",
        vrid=51,
        virtual_ipaddresses=(ipaddress.ip_interface("192.0.2.100/24"),),
        priority=priority,
        track=TrackConf(**track),
    )


def test_own_interface_down_is_a_fault() -> None:
    assert effect(cfg(), {"eth0": True}, {}, True).faults == ()
    e = effect(cfg(), {"eth0": False}, {}, True)
    assert e.faults == ("interface eth0 down",) and e.delta == 0


def test_interface_weights_follow_keepalived() -> None:
    c = cfg(
        interfaces=(TrackInterface("eth1", 10), TrackInterface("eth2", -20), TrackInterface("eth3"))
    )
    assert effect(c, {}, {}, True).delta == 10  # eth1 up: +10; eth2 up: nothing
    e = effect(c, {"eth1": False, "eth2": False}, {}, True)
    assert e.delta == -20 and e.faults == ()
    assert effect(c, {"eth3": False}, {}, True).faults == ("interface eth3 down",)
    assert tracked_interfaces([c]) == ["eth0", "eth1", "eth2", "eth3"]


def test_script_weights_and_faults() -> None:
    c = cfg(
        scripts=(
            TrackScript("up", "/bin/true", weight=5),
            TrackScript("down", "/bin/true", weight=-30),
            TrackScript("must", "/bin/true"),
        )
    )
    assert effect(c, {}, {}, True).delta == 5
    e = effect(c, {}, {"up": False, "down": False, "must": False}, True)
    assert e.delta == -30 and e.faults == ("script must failed",)


def test_proxy_weight_and_owner() -> None:
    assert effect(cfg(proxy_weight=50), {}, {}, False).delta == -50
    assert effect(cfg(proxy_weight=50), {}, {}, True).delta == 0
    assert effect(cfg(proxy_weight=0), {}, {}, False).delta == 0
    assert effect(cfg(255, proxy_weight=50), {}, {}, False).delta == 0  # owner: never


def test_heartbeat_codec() -> None:
    line = encode_heartbeat(False, ["b", "a"])
    assert line.endswith(b"\n")
    assert parse_heartbeat(line) == (False, ("a", "b"))
    assert parse_heartbeat(encode_heartbeat(True)) == (True, ())
    for bad in (b"", b"{", b"[]", b'{"healthy": 1}', b'{"healthy": true, "critical_down": [1]}'):
        assert parse_heartbeat(bad) is None, bad


async def test_health_monitor_reads_heartbeats_and_times_out() -> None:
    loop = asyncio.get_running_loop()
    r, w = os.pipe()
    os.set_blocking(w, False)
    changes: asyncio.Queue[bool] = asyncio.Queue()
    mon = HealthMonitor(loop, r, 0.3, changes.put_nowait)
    try:
        assert mon.healthy
        assert send_heartbeat(w, True, ["keystone"])  # critical listener down
        assert await asyncio.wait_for(changes.get(), 2) is False
        assert mon.critical_down == ("keystone",)
        os.write(w, b"garbage\n" + encode_heartbeat(True)[:5])  # garbage and half a line
        os.write(w, encode_heartbeat(True)[5:])
        assert await asyncio.wait_for(changes.get(), 2) is True
        assert mon.received == 2
        # silence: after the timeout the proxy counts as unhealthy
        assert await asyncio.wait_for(changes.get(), 2) is False
    finally:
        mon.close()
        os.close(r)
        os.close(w)


async def test_script_tracker_rise_and_fall() -> None:
    loop = asyncio.get_running_loop()
    seen: list[tuple[str, bool]] = []
    t = ScriptTracker(
        loop,
        TrackScript("chk", "/bin/false", interval=60, rise=2, fall=3),
        lambda n, ok: seen.append((n, ok)),
    )
    t.close()  # drive it by hand: record() is the rule
    for ok in (False, False, True, False, False):
        t.record(ok)
    assert seen == [] and t.good  # never 3 failures in a row
    t.record(False)
    assert seen == [("chk", False)] and not t.good
    t.record(True)
    assert len(seen) == 1
    t.record(True)
    assert seen[-1] == ("chk", True) and t.good


async def test_script_tracker_runs_the_script(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    changed = asyncio.Event()
    t = ScriptTracker(
        loop, TrackScript("f", "/bin/false", interval=0.05, fall=2), lambda n, ok: changed.set()
    )
    try:
        await asyncio.wait_for(changed.wait(), 5)
        assert not t.good
    finally:
        t.close()


def test_notify_argv_is_keepalived_s() -> None:
    assert notify_argv("/x.sh", "VI_1", "MASTER", 110) == [
        "/x.sh",
        "INSTANCE",
        "VI_1",
        "MASTER",
        "110",
    ]
    assert notify_argv("/x.sh 'a b'", "VI_1", "STOP", 0)[:2] == ["/x.sh", "a b"]


async def test_notifier_runs_in_order_and_kills_hung_scripts(tmp_path: Path) -> None:
    out = tmp_path / "out"
    script = tmp_path / "n.sh"
    script.write_text(f'#!/bin/sh\necho "$@" >> {out}\n')
    script.chmod(0o755)
    n = Notifier(timeout=5)
    for state in ("BACKUP", "MASTER", "STOP"):
        n.notify(str(script), "VI_1", state, 100)
    n.notify(None, "VI_1", "FAULT", 100)  # no script configured: nothing
    assert await n.drain(10)
    assert out.read_text().splitlines() == [
        "INSTANCE VI_1 BACKUP 100",
        "INSTANCE VI_1 MASTER 100",
        "INSTANCE VI_1 STOP 100",
    ]
    assert n.runs == 3 and n.failures == 0
    status = await run_script([sys.executable, "-c", "import time; time.sleep(30)"], 0.2)
    assert status is None  # killed after the timeout
    assert await run_script(["/nonexistent/script"], 1) is None


@pytest.mark.parametrize("healthy", [True, False])
def test_send_heartbeat_never_blocks(healthy: bool) -> None:
    r, w = os.pipe()
    os.set_blocking(w, False)
    try:
        sent = 0
        while send_heartbeat(w, healthy):
            sent += 1
            assert sent < 100_000
        assert sent > 0  # a full pipe returns False instead of blocking
    finally:
        os.close(r)
        os.close(w)
