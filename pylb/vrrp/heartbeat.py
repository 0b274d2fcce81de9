"""The master's side of the proxy-health heartbeat to the VRRP speaker (issue 4).

ARCHITECTURE.md: the speaker learns the proxy's health from the master, never from the
data plane directly, so a saturated worker cannot delay an advert. About once a second
the master writes one line to the speaker's pipe (`track.send_heartbeat`):

- `healthy`: every worker of the serving generation is alive and has reported that it
  accepts (the master knows this itself: SIGCHLD and the readiness pipes);
- `critical_down`: the `critical: true` listeners with no server left. Only the data
  plane knows that (health checks run in the workers), so the master asks worker 0 over
  its private control socket with the internal command `show health`
  (`health_answer()`, in `pylb.admin.relay.local_handler`). Worker 0 is enough: every
  worker checks the same servers, and a runtime `disable server` reaches all of them.

Why a poll from the master rather than workers pushing: the control socket and its
handler already exist in every worker, the master already knows which worker serves
(generation, slot, readiness) across reloads and restarts, and a lost or late answer has
one obvious meaning (keep the last known value). The exchange is non-blocking
(`HealthPoll`): the master's `select()` loop never waits on a worker. An answer that
does not come within `POLL_TIMEOUT` is dropped and the last known `critical_down` is
sent again; process liveness alone decides `healthy`, so a busy worker 0 does not move
the VIP.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from collections.abc import Iterable
from typing import Any

from pylb.vrrp.track import send_heartbeat

log = logging.getLogger("pylb.master")

HEALTH_COMMAND = "show health"
INTERVAL = 1.0  # seconds between heartbeats (health_timeout defaults to 3 s)
POLL_TIMEOUT = 0.8  # a `show health` answer later than this is dropped
MAX_ANSWER = 1 << 20


def health_answer(backends: Iterable[Any]) -> str:
    """Worker side of `show health`: JSON of `pylb.health.summary` for these backends."""
    from pylb.health.summary import critical_down, health_summary

    summary = health_summary(backends)
    doc = {
        "critical_down": critical_down(summary),
        "listeners": {
            name: {
                "active_up": h.active_up,
                "active_total": h.active_total,
                "backup_up": h.backup_up,
                "backup_total": h.backup_total,
                "critical": h.critical,
            }
            for name, h in summary.items()
        },
    }
    return json.dumps(doc, separators=(",", ":")) + "\n"


def parse_health(text: str) -> tuple[str, ...] | None:
    """`critical_down` from a `show health` answer, or None for anything else."""
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    down = doc.get("critical_down") if isinstance(doc, dict) else None
    if not isinstance(down, list) or not all(isinstance(d, str) for d in down):
        return None
    return tuple(down)


class HealthPoll:
    """One non-blocking `show health` exchange with a worker's control socket.

    `fd` goes into the master's select() read set; `on_readable()` returns True when the
    exchange is over (`result` is then the answer's `critical_down`, or None)."""

    __slots__ = ("_buf", "deadline", "result", "sock")

    def __init__(self, path: str, deadline: float) -> None:
        self.deadline = deadline
        self.result: tuple[str, ...] | None = None
        self._buf = bytearray()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            self.sock.setblocking(False)
            # A unix connect never stays in progress: it succeeds, or fails (EAGAIN when
            # the backlog is full): then this poll is simply lost.
            self.sock.connect(path)
            self.sock.send(HEALTH_COMMAND.encode() + b"\n")
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.sock.close()
            raise

    @property
    def fd(self) -> int:
        return self.sock.fileno()

    def on_readable(self) -> bool:
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True
        if data and len(self._buf) + len(data) <= MAX_ANSWER:
            self._buf += data
            return False
        if not data:
            self.result = parse_health(self._buf.decode("utf-8", "replace"))
        return True

    def close(self) -> None:
        self.sock.close()


class Heartbeat:
    """The write end of the speaker's heartbeat pipe, the poll of worker 0 in flight and
    the last `critical_down` it gave. Owned by the master; no I/O blocks."""

    __slots__ = ("_stale_logged", "critical_down", "fd", "healthy", "next_at", "poll")

    def __init__(self, fd: int, now: float) -> None:
        self.fd = fd  # non-blocking write end (the speaker reads the other end)
        self.next_at = now
        self.poll: HealthPoll | None = None
        self.critical_down: tuple[str, ...] = ()
        self.healthy = True  # what the last heartbeat said about the workers
        self._stale_logged = False

    def read_fds(self) -> list[int]:
        return [self.poll.fd] if self.poll is not None else []

    def on_readable(self, fd: int) -> None:
        poll = self.poll
        if poll is None or fd != poll.fd or not poll.on_readable():
            return
        self._finish(poll.result)

    def _finish(self, result: tuple[str, ...] | None) -> None:
        assert self.poll is not None
        self.poll.close()
        self.poll = None
        if result is None:
            if not self._stale_logged:
                log.warning("no proxy health from worker 0: keeping the last known state")
                self._stale_logged = True
            return
        self._stale_logged = False
        if result != self.critical_down:
            if result:
                log.warning("critical listener(s) without a server: %s", ", ".join(result))
            else:
                log.info("every critical listener has a server again")
            self.critical_down = result
            # a change goes to the speaker now, not with the next beat
            send_heartbeat(self.fd, self.healthy, result)

    def timeout(self, now: float) -> float:
        due = self.next_at
        if self.poll is not None:
            due = min(due, self.poll.deadline)
        return max(0.0, due - now)

    def tick(self, now: float, healthy: bool, source: str | None) -> None:
        """Drop an overdue poll; when due, write a heartbeat and ask `source` (worker 0's
        control socket; None while no worker serves) for the next critical_down."""
        if self.poll is not None and now >= self.poll.deadline:
            self._finish(None)
        if now < self.next_at:
            return
        self.next_at = now + INTERVAL
        self.healthy = healthy
        send_heartbeat(self.fd, healthy, self.critical_down)
        if self.poll is None and source is not None:
            try:
                self.poll = HealthPoll(source, now + POLL_TIMEOUT)
            except OSError as e:
                log.debug("show health to %s: %s", source, e)

    def close(self) -> None:
        if self.poll is not None:
            self.poll.close()
            self.poll = None
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1
