"""Applying writer-pin decisions: close the old writer's sessions, log, tell peers.

The decision itself is pure and lives in `pylb.balance.writerpin.WriterPin` (which server,
when, why). This module is the thin shell around it, one `WriterController` per writer-pin
backend (built by `Backend`): it is the balancer's `on_change` hook, so EVERY writer change
— health check verdict, passive observation of a failed connect, manual `set writer`,
failback, a peer's choice — goes through one place, and the sessions to the old writer are
closed right there, synchronously, before any new session can be sent to the new writer.
That ordering is what "two nodes never take writes through pylb at the same time" needs.

The admin data side (`show_writer`, `set_writer`, `writer_info`) is plain functions over a
`Backend`, for the runtime socket commands and the stats page.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pylb.balance.writerpin import MANUAL, NONE, WriterPin

RESTORED = "restored"  # taken over from the previous worker at start (state file)

if TYPE_CHECKING:
    from pylb.proxy.backend import Backend, Server

log = logging.getLogger("pylb.galera")

NOTICE = 25  # as pylb.logsetup.NOTICE

# Called after every writer change with (controller, old, new, reason); peers sync uses it.
WriterHook = Callable[["WriterController", "Server | None", "Server | None", str], None]


class WriterError(ValueError):
    """A writer command that cannot be done; the message says why (for the admin socket)."""


class WriterController:
    """Applies the writer changes of one writer-pin backend. Loop thread only."""

    __slots__ = (
        "backend",
        "balancer",
        "closed_sessions",
        "hooks",
        "last_closed",
        "since",
        "state_file",
    )

    def __init__(self, backend: Backend) -> None:
        bal = backend.balancer
        if not isinstance(bal, WriterPin):
            raise TypeError(f"backend {backend.name} does not use balance writer-pin")
        self.backend = backend
        self.balancer = bal
        self.since = time.time()  # wall clock of the last change (shown; peers tie-break)
        self.closed_sessions = 0  # sessions closed by writer changes, in total
        self.last_closed = 0  # ... by the last change
        self.hooks: list[WriterHook] = []
        # Where every change is saved for the next worker (reload); None: not saved.
        self.state_file: Path | None = None
        bal.on_change = self._on_change

    @property
    def writer(self) -> Server | None:
        """The current writer (what stats show)."""
        return self.balancer.writer  # type: ignore[return-value]  # Server is a Candidate

    @property
    def epoch(self) -> int:
        return self.balancer.epoch

    def _on_change(self, old: Any, new: Any, reason: str) -> None:
        self.since = time.time()
        # First close, then anything else: no moment where sessions on the old writer
        # and new sessions on the new one coexist (the loop runs nothing in between).
        closed = old.shutdown_sessions() if old is not None else 0
        self.last_closed = closed
        self.closed_sessions += closed
        if log.isEnabledFor(NOTICE):
            log.log(NOTICE, "%s", change_message(self.backend.name, old, new, reason, closed))
        if self.state_file is not None:
            try:
                save_writer(self.state_file, self.backend.name, new.name if new else None)
            except OSError as e:
                log.warning(
                    "cannot save the writer of %s to %s: %s", self.backend.name, self.state_file, e
                )
        for hook in self.hooks:
            try:
                hook(self, old, new, reason)
            except Exception:
                log.exception("writer hook of %s failed", self.backend.name)

    def set_writer(self, server_name: str, reason: str = MANUAL) -> Server:
        """Make `server_name` the writer (closing the old writer's sessions); raises
        WriterError when the server is unknown or may not be the writer now."""
        try:
            server = self.backend.server(server_name)
        except KeyError:
            raise WriterError(f"no server {server_name!r} in {self.backend.name}") from None
        if not self.balancer.set_writer(server, reason):
            state = "down" if not server.oper_up else server.admin.value
            if server.usable and server.weight == 0:
                state = "weight 0"
            elif server.usable:
                state = "a backup while active servers are up"
            raise WriterError(
                f"{self.backend.name}/{server_name} cannot be the writer now ({state})"
            )
        return server


def change_message(backend: str, old: Any, new: Any, reason: str, closed: int) -> str:
    """`Writer of mysql is now dbs02 (was dbs01, reason: down); 3 sessions closed on dbs01.`"""
    was = old.name if old is not None else "none"
    if new is None:
        return f"Writer of {backend} is now none (was {was}, reason: {reason}): no server usable."
    text = f"Writer of {backend} is now {new.name} (was {was}, reason: {reason})"
    if old is not None:
        text += f"; {closed} sessions closed on {old.name}"
    return text + "."


def controller(backend: Backend) -> WriterController:
    """The backend's writer controller; WriterError when it is not writer-pin."""
    ctl = getattr(backend, "writer", None)
    if not isinstance(ctl, WriterController):
        raise WriterError(f"backend {backend.name} does not use balance writer-pin")
    return ctl


def writer_info(backend: Backend) -> dict[str, Any]:
    """Machine-readable writer state (stats JSON, `show writer` as JSON)."""
    ctl = controller(backend)
    bal = ctl.balancer
    w = ctl.writer
    return {
        "listen": backend.name,
        "writer": w.name if w is not None else None,
        "reason": bal.reason if w is not None else NONE,
        "epoch": bal.epoch,
        "since": ctl.since,
        "failback": bal.failback,
        "closed_sessions": ctl.closed_sessions,
        "servers": [
            {
                "name": s.name,
                "rank": bal.rank(s),
                "up": s.oper_up,
                "admin": s.admin.value,
                "eligible": bal.can_write(s),
                "sessions": s.cur_conns,
            }
            for s in sorted(backend.servers, key=bal.rank)
        ],
    }


def show_writer(backend: Backend) -> str:
    """Text for `pylb ctl show writer LISTEN`: the writer on the first line, then every
    server in preference order.

        writer dbs02 epoch 3 reason down since 2026-11-26T13:02:11Z failback off
        1 dbs01 DOWN ready 0
        2 dbs02 UP ready 12 writer
        3 dbs03 UP ready 0
    """
    info = writer_info(backend)
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(info["since"]))
    lines = [
        f"writer {info['writer'] or '-'} epoch {info['epoch']} reason {info['reason']} "
        f"since {since} failback {'on' if info['failback'] else 'off'}"
    ]
    for s in info["servers"]:
        mark = " writer" if s["name"] == info["writer"] else ""
        lines.append(
            f"{s['rank'] + 1} {s['name']} {'UP' if s['up'] else 'DOWN'} {s['admin']} "
            f"{s['sessions']}{mark}"
        )
    return "\n".join(lines) + "\n"


def set_writer(backend: Backend, server_name: str) -> str:
    """`pylb ctl set writer LISTEN SERVER`: manual switch; the old writer's sessions are
    closed at once. Returns the answer line; raises WriterError (message for the operator)."""
    ctl = controller(backend)
    old = ctl.writer
    server = ctl.set_writer(server_name)
    if old is server:
        return f"{backend.name}: {server.name} is already the writer.\n"
    was = old.name if old is not None else "none"
    return (
        f"{backend.name}: writer is now {server.name} (was {was}); "
        f"{ctl.last_closed} sessions closed.\n"
    )


# -- handing the writer over to the next worker (reload) ---------------------------------
#
# A reloaded worker builds fresh Backends: by order alone it would elect dbs01 again while
# the old worker, draining, still relays sessions to dbs02 — two writers for up to
# hard_stop_after. HAProxy keeps server states across reloads with `server-state-file`;
# pylb does the same for the writer: each change is saved, the next worker restores it.


def save_writer(path: Path, listen: str, writer: str | None) -> None:
    """Record `listen`'s writer in the JSON state file (atomic replace; other listeners'
    entries are kept)."""
    state = load_writers(path)
    state[listen] = writer
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"version": 1, "writers": state}, sort_keys=True))
    os.replace(tmp, path)


def load_writers(path: Path) -> dict[str, str | None]:
    """{listen: writer} from the state file; {} when missing or unreadable (a fresh start
    elects by order, which is what an absent file means)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    writers = data.get("writers") if isinstance(data, dict) else None
    if not isinstance(writers, dict):
        return {}
    return {
        k: v for k, v in writers.items() if isinstance(k, str) and (v is None or isinstance(v, str))
    }


def restore_writers(backends: Iterable[Backend], path: Path) -> dict[str, str]:
    """At worker start, before traffic: make each writer-pin backend's writer the one the
    previous worker used, when that server is eligible now, and save changes to `path`
    from then on. Returns {listen: writer} of what was restored."""
    saved = load_writers(path)
    restored = {}
    for backend in backends:
        ctl = backend.writer
        if not isinstance(ctl, WriterController):
            continue
        ctl.state_file = path
        name = saved.get(backend.name)
        if name is None:
            continue
        cur = ctl.writer
        if cur is not None and cur.name == name:
            restored[backend.name] = name
            continue
        try:
            ctl.set_writer(name, RESTORED)
        except WriterError:
            continue
        restored[backend.name] = name
    return restored
