"""Per-server pool of idle keep-alive connections (`Server.idle`, a LIFO list).

Bookkeeping is apart from I/O (httpcore's habit): `reap()` is a pure function that splits
a list of connections into the usable ones and the ones to close, seen only through the
connection's predicates; `acquire()` / `release()` do the closing after it.

Why LIFO: the most recently used connection is the one least likely to have been closed
by the server's own keep-alive timer, and the rarely used tail expires by itself.

Expiry: `idle_expiry(conf)` = min(timeout.http_keep_alive, 4 s). Four seconds is below
Apache's default KeepAliveTimeout (5 s, the mod_wsgi servers of OpenStack APIs) and
nginx's 75 s, so we close an idle connection before the server does and the race "server
closes while we reuse" stays rare; when it happens anyway, replayable requests are sent
again on a fresh connection (`Exchange`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pylb.config.model import Listen
from pylb.proxy.upstream import IDLE

if TYPE_CHECKING:
    from pylb.proxy.backend import Server
    from pylb.proxy.upstream import UpstreamConn

UPSTREAM_IDLE_MAX = 4.0
# Bound on idle connections kept per server: after a burst of N parallel requests, N
# connections would otherwise stay open until their expiry; 64 covers a worker's usual
# concurrency toward one API server without holding hundreds of server processes.
MAX_IDLE_PER_SERVER = 64


def idle_expiry(conf: Listen) -> float:
    return min(conf.timeout.http_keep_alive, UPSTREAM_IDLE_MAX)


def reap(idle: list[UpstreamConn], now: float) -> tuple[list[UpstreamConn], list[UpstreamConn]]:
    """Pure: (still usable, to close) among `idle`, order kept."""
    keep: list[UpstreamConn] = []
    dead: list[UpstreamConn] = []
    for conn in idle:
        if conn.is_idle() and not conn.has_expired(now):
            keep.append(conn)
        else:
            dead.append(conn)
    return keep, dead


def acquire(server: Server, now: float) -> UpstreamConn | None:
    """The most recently released usable idle connection of `server`, or None.
    Expired or closed ones met on the way are closed and dropped."""
    idle = server.idle
    while idle:
        conn = idle.pop()
        # hot path: is_idle() and not has_expired(now), without two method calls
        if conn.state is IDLE and now < conn.expire_at:
            return conn
        conn.close()
    return None


def release(server: Server, conn: UpstreamConn, now: float, expiry: float) -> None:
    """Put `conn` back as IDLE for `expiry` seconds (or close it when the pool is full)."""
    idle = server.idle
    if len(idle) >= MAX_IDLE_PER_SERVER:
        keep, dead = reap(idle, now)
        server.idle = keep
        for d in dead:
            d.close()
        if len(keep) >= MAX_IDLE_PER_SERVER:
            conn.close()
            return
        idle = keep
    conn.set_idle(now + expiry)
    idle.append(conn)


def close_idle(server: Server) -> int:
    """Close every idle connection of `server` (stop, server disabled); returns the count."""
    idle, server.idle = server.idle, []
    for conn in idle:
        conn.close()
    return len(idle)
