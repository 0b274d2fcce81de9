"""What lowers a VRRP instance's priority or puts it in FAULT: links, scripts, the proxy.

Three sources, as keepalived has them (`track_interface`, `track_script`) plus pylb's
own proxy health:

- **interfaces**: the instance's own interface is always tracked (down = FAULT, as in
  keepalived); listed ones with weight 0 too, others add their weight (positive: while
  up; negative: while down). Link events come from `vip.LinkWatcher`.
- **scripts** (`ScriptTracker`): run every `interval`, success = exit 0 within
  `timeout`; `fall` failures in a row make it failed, `rise` successes make it good
  again. Weight 0: failed = FAULT; weight > 0 added while good; weight < 0 added while
  failed (keepalived's rules). A script starts good (keepalived without `init_fail`).
- **proxy health** (`HealthMonitor`): the master sends a heartbeat line over a pipe,
  ``{"healthy": true, "critical_down": []}``\\n, about once a second. Unhealthy (a
  listener failing, or a `critical: true` listener with no healthy server) or no
  heartbeat for `health_timeout` seconds lowers the priority by `track.proxy_weight`.
  No polling of a script: the data plane already knows.

`effect()` is the pure rule that turns all of it into (fault reasons, priority delta).
An address owner (priority 255) is never adjusted, as in keepalived.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pylb.vrrp.notify import run_script
from pylb.vrrp.types import PRIO_OWNER, InstanceConfig, TrackScript

log = logging.getLogger("pylb.vrrp.track")

MAX_LINE = 64 * 1024  # one heartbeat; a longer line is garbage: dropped


@dataclass(frozen=True, slots=True)
class Effect:
    faults: tuple[str, ...]  # why the instance must be in FAULT (empty: it need not)
    delta: int  # sum of the weights in force


def effect(
    cfg: InstanceConfig,
    links: Mapping[str, bool],
    scripts: Mapping[str, bool],
    proxy_healthy: bool,
) -> Effect:
    """The tracking rule for one instance (pure). `links`: name -> up; `scripts`:
    script name -> good; missing entries count as up / good."""
    faults: list[str] = []
    delta = 0
    tracked = {cfg.interface: 0}
    for ti in cfg.track.interfaces:
        tracked[ti.name] = ti.weight if ti.name != cfg.interface else 0
    for name, weight in tracked.items():
        up = links.get(name, True)
        if weight == 0:
            if not up:
                faults.append(f"interface {name} down")
        elif (weight > 0 and up) or (weight < 0 and not up):
            delta += weight
    for ts in cfg.track.scripts:
        good = scripts.get(ts.name, True)
        if ts.weight == 0:
            if not good:
                faults.append(f"script {ts.name} failed")
        elif (ts.weight > 0 and good) or (ts.weight < 0 and not good):
            delta += ts.weight
    if not proxy_healthy and cfg.track.proxy_weight:
        delta -= cfg.track.proxy_weight
    if cfg.priority == PRIO_OWNER:
        delta = 0
    return Effect(tuple(faults), delta)


def tracked_interfaces(instances: Iterable[InstanceConfig]) -> list[str]:
    names: list[str] = []
    for cfg in instances:
        for n in (cfg.interface, *(t.name for t in cfg.track.interfaces)):
            if n not in names:
                names.append(n)
    return names


# ------------------------------------------------------------------------ heartbeats


def encode_heartbeat(healthy: bool, critical_down: Iterable[str] = ()) -> bytes:
    """One heartbeat line, as the master writes it."""
    return (
        json.dumps({"healthy": bool(healthy), "critical_down": sorted(critical_down)}) + "\n"
    ).encode()


def send_heartbeat(fd: int, healthy: bool, critical_down: Iterable[str] = ()) -> bool:
    """Master side: write one heartbeat to the (non-blocking) pipe; never blocks.

    False when the pipe is full (the speaker is not reading: the next one will tell) or
    the speaker is gone (EPIPE: the master restarts it on SIGCHLD anyway).
    """
    try:
        os.write(fd, encode_heartbeat(healthy, critical_down))
    except (BlockingIOError, InterruptedError, BrokenPipeError):
        return False
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EPIPE):
            return False
        raise
    return True


def parse_heartbeat(line: bytes) -> tuple[bool, tuple[str, ...]] | None:
    """(healthy, critical_down) or None for a line that is not a heartbeat."""
    try:
        msg = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(msg, dict) or not isinstance(msg.get("healthy"), bool):
        return None
    down = msg.get("critical_down", [])
    if not isinstance(down, list) or not all(isinstance(d, str) for d in down):
        return None
    return msg["healthy"], tuple(down)


class HealthMonitor:
    """Speaker side of the heartbeat pipe: `healthy` and a callback when it changes.

    Missing heartbeats count: one lazy deadline (re-armed only when it fires early), so a
    heartbeat costs no timer churn. EOF (master gone) stops reading; the deadline then
    runs out and the proxy counts as unhealthy.
    """

    __slots__ = (
        "_buf",
        "_handle",
        "_loop",
        "critical_down",
        "fd",
        "healthy",
        "last_seen",
        "on_change",
        "received",
        "reported_healthy",
        "timeout",
    )

    def __init__(
        self, loop: Any, fd: int, timeout: float, on_change: Callable[[bool], None]
    ) -> None:
        self._loop = loop
        self.fd = fd
        self.timeout = timeout
        self.on_change = on_change
        self._buf = b""
        self.healthy = True  # until the first deadline: the master has just started us
        self.reported_healthy = True
        self.critical_down: tuple[str, ...] = ()
        self.last_seen = loop.time()
        self.received = 0
        os.set_blocking(fd, False)
        loop.add_reader(fd, self._readable)
        self._handle = loop.call_at(self.last_seen + timeout, self._expire)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._loop.remove_reader(self.fd)
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, 65536)
        except (BlockingIOError, InterruptedError):
            return
        if not data:  # EOF: the master is gone; the deadline will do the rest
            self._loop.remove_reader(self.fd)
            return
        self._buf += data
        *lines, self._buf = self._buf.split(b"\n")
        if len(self._buf) > MAX_LINE:
            self._buf = b""
        for line in lines:
            hb = parse_heartbeat(line)
            if hb is None:
                continue
            self.received += 1
            self.last_seen = self._loop.time()
            ok, down = hb
            self.critical_down = down
            self._set(ok and not down)
        if self._handle is None:
            self._handle = self._loop.call_at(self.last_seen + self.timeout, self._expire)

    def _expire(self) -> None:
        self._handle = None
        due = self.last_seen + self.timeout
        if self._loop.time() < due:  # a heartbeat came meanwhile: lazy re-arm
            self._handle = self._loop.call_at(due, self._expire)
            return
        log.warning("no proxy heartbeat for %gs: proxy counted as unhealthy", self.timeout)
        self._set(False)

    def _set(self, healthy: bool) -> None:
        self.healthy = healthy
        if healthy != self.reported_healthy:
            self.reported_healthy = healthy
            self.on_change(healthy)


# --------------------------------------------------------------------------- scripts


class ScriptTracker:
    """keepalived `vrrp_script`: periodic runs, rise/fall, `on_change(name, good)`."""

    __slots__ = ("_handle", "_loop", "_task", "good", "on_change", "script", "streak")

    def __init__(
        self, loop: Any, script: TrackScript, on_change: Callable[[str, bool], None]
    ) -> None:
        self._loop = loop
        self.script = script
        self.on_change = on_change
        self.good = True
        self.streak = 0  # consecutive results disagreeing with `good`
        self._task: asyncio.Task[None] | None = None
        self._handle: Any = loop.call_soon(self._start_run)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def _start_run(self) -> None:
        self._handle = None
        self._task = self._loop.create_task(self._run_once())

    async def _run_once(self) -> None:
        s = self.script
        started = self._loop.time()
        timeout = s.timeout if s.timeout > 0 else s.interval
        status = await run_script([s.path], timeout)
        self.record(status == 0)
        self._task = None
        self._handle = self._loop.call_at(started + s.interval, self._start_run)

    def record(self, ok: bool) -> None:
        """One result: flip after `rise` successes / `fall` failures in a row."""
        if ok == self.good:
            self.streak = 0
            return
        self.streak += 1
        if self.streak >= (self.script.rise if ok else self.script.fall):
            self.good = ok
            self.streak = 0
            log.warning("track script %s is now %s", self.script.name, "good" if ok else "failed")
            self.on_change(self.script.name, ok)
